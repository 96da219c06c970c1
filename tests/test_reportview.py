"""The reader's HTML: verdicts under the title, no defaults cell or test markers, no network."""

from __future__ import annotations

import shutil
import subprocess

import nbformat
import pytest

from traitlab.paths import PROJECT_ROOT
from traitlab.reportview import offline_html, reader_notebook, render_html

GOLDEN = PROJECT_ROOT / "tests" / "golden"
RECORDING = sorted(p for p in GOLDEN.glob("*.ipynb") if 'tags=["record"]' in
                   (PROJECT_ROOT / "notebooks" / f"{p.stem}.py").read_text())


def test_every_notebook_records():
    assert len(RECORDING) == len(list((PROJECT_ROOT / "notebooks").glob("*.py")))


@pytest.mark.parametrize("path", RECORDING[:3] + RECORDING[-2:], ids=lambda p: p.stem)
def test_reader_view_puts_verdicts_first(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    view = reader_notebook(nb)
    assert view.cells[0].cell_type == "markdown" and view.cells[0].source.startswith("# ")
    assert view.cells[1].source.startswith("**Verdicts**") and "<table" in view.cells[1].source
    assert not any("parameters" in c.metadata.get("tags", []) for c in view.cells)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in view.cells)
    assert not any("NBVAL_" in c.source for c in view.cells if c.cell_type == "code")
    assert len(nb.cells) == len(view.cells)  # one cell out, one in; the .ipynb itself is untouched
    html = render_html(path, tmp_path / "r.html").read_text()
    assert "<script" not in html and html.index("Verdicts") < html.index("Result record")


def test_remote_resources_are_refused():
    assert offline_html("<p>x</p><script>alert(1)</script>") == "<p>x</p>"
    with pytest.raises(ValueError, match="remote resource"):
        offline_html('<link rel="stylesheet" href="https://cdn.example/x.css">')


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_renders_offline_in_headless_chromium(tmp_path):
    html = render_html(RECORDING[0], tmp_path / "r.html")
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "Verdicts" in dom.stdout and "<table" in dom.stdout


def test_index_is_the_replication_matrix(tmp_path):
    from traitlab.cli import write_index
    from traitlab.records import read

    for name in ("cross_language.ipynb", "cross_language.results.json", "model_chain.ipynb"):
        shutil.copy(GOLDEN / name, tmp_path / name)
    page = write_index(tmp_path).read_text()
    claims = read(GOLDEN / "cross_language.results.json").claims
    matrix = page.split("<h2>Reports</h2>")[0]
    assert matrix.count("<tr>") == 1 + len(claims)  # header + one row per seed claim
    assert all(html_escape(c.statement) in matrix for c in claims)
    row = next(r for r in page.split("<h2>Reports</h2>")[1].split("<tr>") if "model_chain.html" in r)
    assert "<td>smollm2-135m-instruct</td>" in row  # its base_model, not '?'


def html_escape(text: str) -> str:
    import html

    return html.escape(text)
