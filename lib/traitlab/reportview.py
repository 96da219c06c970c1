"""The reader's view of an executed notebook: verdicts first, no test clutter, no network.

``render_html`` turns an executed report notebook into its HTML page:

- the verdict table, drawn from the result record written beside the notebook
  (``<name>.results.json``; else the display output of the cell tagged ``record``), is placed
  under the title, so the answer is on the first screen;
- the notebook's own ``parameters`` cell (its defaults) is left out of the page: the cell
  papermill injected holds what ran, and the run record prints every resolved value;
- ``# NBVAL_…`` test markers are removed from code shown to the reader;
- every ``<script>`` is dropped (the pages are static: tables, text and PNG figures), so a
  report opens offline and pulls nothing from a CDN.

The executed ``.ipynb`` is not changed: it stays the notebook the tests and tools read.

Example:
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"),
    ...     nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]})])
    >>> [c.cell_type for c in reader_notebook(nb).cells]
    ['markdown']
    >>> offline_html('<p>a</p><script src="https://cdn.example/x.js"></script>')
    '<p>a</p>'
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from .atomic import write_text

RECORD_TAG = "record"
HIDDEN_TAGS = frozenset({"parameters"})
_MARKER = re.compile(r"^\s*# NBVAL_[A-Z_]+\s*\n?", re.M)
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.S | re.I)
# nbconvert's stylesheet styles stderr boxes; our reports have none (tests), so the rule is dead
# weight that makes a text search for "stderr" in a page find one.
_STDERR_CSS = re.compile(r"\.jp-RenderedText\[data-mime-type='application/vnd\.jupyter\.stderr'\]\s*\{[^}]*\}\s*")
_REMOTE = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']https?://""", re.I)


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def verdict_html(nb: nbformat.NotebookNode) -> str | None:
    """The HTML of the verdict table shown by the ``record`` cell, if the notebook has one."""
    for cell in nb.cells:
        if cell.cell_type == "code" and RECORD_TAG in _tags(cell):
            for out in cell.get("outputs", []):
                html = out.get("data", {}).get("text/html")
                if html:
                    return html if isinstance(html, str) else "".join(html)
    return None


def record_html(results_json: Path) -> str | None:
    """The verdict table rebuilt from a ``*.results.json`` (claims in full, no row index)."""
    from .records import RecordError, read, verdict_table

    try:
        record = read(results_json)
    except RecordError:
        return None
    if not record.claims:
        return None
    return verdict_table(record).to_html(index=False, border=0, classes="dataframe verdicts")


def reader_notebook(nb: nbformat.NotebookNode, table: str | None = None) -> nbformat.NotebookNode:
    """A copy of ``nb`` arranged for reading (see the module docstring); ``table`` overrides the
    verdict table found in the ``record`` cell."""
    nb = copy.deepcopy(nb)
    cells = [c for c in nb.cells if not (c.cell_type == "code" and _tags(c) & HIDDEN_TAGS)]
    for c in cells:
        if c.cell_type == "code":
            c.source = _MARKER.sub("", c.source)
    table = table or verdict_html(nb)
    if table is not None:
        first = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
        note = ("**Verdicts** (from this report's result record; the evidence for each is in the "
                "sections below, and the record itself is `<report>.results.json`):\n\n")
        cells.insert(first + 1, nbformat.v4.new_markdown_cell(note + table, id="verdicts"))  # a fixed id: re-exports are identical
    nb.cells = cells
    return nb


def offline_html(html: str) -> str:
    """Drop every ``<script>`` and the dead stderr-box style; a page that still names a remote
    resource is an error."""
    html = _STDERR_CSS.sub("", _SCRIPT.sub("", html))
    remote = _REMOTE.search(html)
    if remote:
        raise ValueError(f"report still loads a remote resource: {html[remote.start():remote.start() + 120]!r}")
    return html


def render_html(ipynb: str | Path, out: str | Path | None = None) -> Path:
    """Write the reader's HTML for an executed notebook (default: beside it, ``.html``)."""
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    out = Path(out) if out else ipynb.with_suffix(".html")
    nb = nbformat.read(ipynb, as_version=4)
    table = record_html(ipynb.with_name(ipynb.name.removesuffix(".ipynb") + ".results.json"))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(reader_notebook(nb, table))
    write_text(out, offline_html(body))
    return out
