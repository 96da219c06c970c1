"""The committed reports a reader opens: each names a clean commit, has its result record, opens
with its verdict table, shows no stderr boxes and loads nothing from the network.

These read ``reports/`` only (no model work): they fail when a report was rendered from a dirty
tree, by a notebook that prints progress or warnings, or without its record.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traitlab import records
from traitlab.cli import data_drift, indexable, notebook_drift
from traitlab.paths import PROJECT_ROOT

REPORTS = PROJECT_ROOT / "reports"
NOTEBOOKS = indexable(REPORTS)
_SLOW = "not re-rendered with its record yet: on a 2-core AVX2 CPU with the float32 judge it needs {}"
STALE: dict[str, str] = {
}
"""Reports rendered before result records existed, each with why it has not been re-rendered yet
(they fail the checks below until it is; the list only shrinks)."""

BEHIND: dict[str, str] = {
}
"""Reports whose notebook's code changed since they were rendered, each with why it has not been
re-rendered yet. A notebook edit that leaves a committed report behind fails
``test_report_runs_its_notebooks_code`` until the report is re-rendered or named here."""

DATA_BEHIND: dict[str, str] = {
}
"""Reports that read a data file (prompt set, gold set) changed since they were rendered, each with
why it has not been re-rendered yet (``test_report_reads_todays_data``; the list only shrinks)."""


def _outputs(nb: dict):
    for cell in nb["cells"]:
        yield from cell.get("outputs", [])


def test_reports_exist():
    assert len(NOTEBOOKS) >= 15, NOTEBOOKS


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason=STALE[p.stem], strict=True))
                                  if p.stem in STALE else p for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_report_is_clean_and_readable(path: Path):
    nb = json.loads(path.read_text())
    stderr = [o for o in _outputs(nb) if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, f"{path.name}: {len(stderr)} stderr box(es), e.g. {''.join(stderr[0]['text'])[:200]!r}"
    rec = records.read(path.with_suffix(".results.json"))
    commit = str(rec.run.get("git_commit", ""))
    assert commit and not commit.endswith("+dirty"), f"{path.name}: rendered from {commit!r}, not a clean commit"
    html = path.with_suffix(".html").read_text()
    for host in ("cdnjs", "unpkg", "cdn.jsdelivr", "<script src=\"http"):
        assert host not in html, f"{path.stem}.html loads {host} (reports open offline)"
    assert "stderr" not in html, f"{path.stem}.html mentions stderr (a box, or nbconvert's style for one)"
    verdicts, first_section = html.find('dataframe verdicts"'), html.find("<h2")
    if rec.claims:
        assert 0 <= verdicts < first_section, f"{path.stem}.html: the verdict table is not above the first section"


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason=BEHIND[p.stem], strict=True))
                                  if p.stem in BEHIND else p for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_report_runs_its_notebooks_code(path: Path):
    """The code cells a report shows are its notebook's current ones (parameter cells aside)."""
    assert notebook_drift(path) is None, f"{path.stem}: {notebook_drift(path)}"


def test_notebook_drift_names_the_cell(tmp_path: Path):
    import jupytext
    import nbformat

    (tmp_path / "nb").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("y = x + 1"), nbformat.v4.new_markdown_cell("# y")])
    jupytext.write(nb, tmp_path / "nb" / "demo.py", fmt="py:percent")
    ran = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 5", metadata={"tags": ["injected-parameters"]}),
                                          *nb.cells])
    nbformat.write(ran, tmp_path / "demo.profile.ipynb")
    assert notebook_drift(tmp_path / "demo.profile.ipynb", tmp_path / "nb") is None  # parameters aside
    nb.cells[1].source = "y = x + 2"
    jupytext.write(nb, tmp_path / "nb" / "demo.py", fmt="py:percent")
    assert notebook_drift(tmp_path / "demo.profile.ipynb", tmp_path / "nb") == \
        "demo.py changed since this render (code cell 1 of 1 differs)"
    assert notebook_drift(tmp_path / "other.ipynb", tmp_path / "nb") == "no notebook other.py for it"


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(reason=DATA_BEHIND[p.stem], strict=True))
                                  if p.stem in DATA_BEHIND else p for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_report_reads_todays_data(path: Path):
    """Every data file a report read is unchanged since (reports rendered before records kept their
    data files cannot be checked and are skipped)."""
    record = path.with_suffix(".results.json")
    if "data" not in json.loads(record.read_text()).get("run", {}):
        pytest.skip("rendered before records kept their data files")
    assert data_drift(record) is None, f"{path.stem}: {data_drift(record)}"


def test_data_drift_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import hashlib

    monkeypatch.setenv("TRAITLAB_DATA_ROOT", str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x.csv").write_text("a\n1\n")
    anchors = PROJECT_ROOT / "data" / "judge" / "anchors.jsonl"
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    record = tmp_path / "r.results.json"

    def drift(data: dict[str, str]) -> str | None:
        record.write_text(json.dumps({"run": {"data": data}}))
        return data_drift(record)

    same = {"data/judge/anchors.jsonl": sha(anchors), "$TRAITLAB_DATA_ROOT/x.csv": sha(tmp_path / "root" / "x.csv"),
            "$TRAITLAB_DATA_ROOT/absent.csv": "0" * 64}   # a public file absent here is not drift
    assert drift(same) is None
    assert drift({**same, "data/judge/anchors.jsonl": "0" * 64}) == "data/judge/anchors.jsonl changed since this render"
    assert drift({**same, "$TRAITLAB_DATA_ROOT/x.csv": "0" * 64}) == "$TRAITLAB_DATA_ROOT/x.csv changed since this render"
    assert drift({**same, "data/gone.jsonl": "0" * 64}) == "data/gone.jsonl gone since this render"
    record.write_text(json.dumps({"run": {}}))
    assert data_drift(record) == "data files not recorded (rendered before records kept them)"
