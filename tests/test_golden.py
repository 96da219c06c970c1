"""The committed ci-profile golden notebooks (guarded by nbval) match the current sources."""

from __future__ import annotations

import json

import jupytext
import pytest

from traitlab.paths import PROJECT_ROOT

NOTEBOOKS = sorted(p.stem for p in (PROJECT_ROOT / "notebooks").glob("*.py"))


def _code(cells):
    return [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in cells if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_golden_is_current(name):
    golden = PROJECT_ROOT / "tests" / "golden" / f"{name}.ipynb"
    assert golden.exists(), f"no golden notebook for {name}: run `make golden`"
    src = jupytext.read(PROJECT_ROOT / "notebooks" / f"{name}.py")
    gold = json.loads(golden.read_text())
    assert _code(gold["cells"]) == _code(src.cells), f"{golden.name} is stale: run `make golden`"
    assert gold["metadata"]["traitlab"]["profile"] == "ci"
