"""Shared fixtures: tiny in-process models of every architecture, and an isolated cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from traitlab.models import load_model
from traitlab.tiny import TINY_ARCHS


@pytest.fixture(scope="session", params=TINY_ARCHS)
def tiny(request):
    return load_model(request.param)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


NEEDS_DATA_ROOT = {"refusal_dial.ipynb": "xstest", "jailbreak_blocking.ipynb": "advbench",
                   "token_dynamics.ipynb": "advbench", "base_to_instruct.ipynb": "advbench"}
"""Golden notebooks that read public datasets from TRAITLAB_DATA_ROOT, and one file they need."""


def pytest_collection_modifyitems(config, items):
    from traitlab.data import DataError, public_path

    for item in items:
        name = item.path.name
        if name in NEEDS_DATA_ROOT:
            try:
                public_path(NEEDS_DATA_ROOT[name])
            except DataError as err:
                item.add_marker(pytest.mark.skip(reason=f"public datasets not found: {err}"))


def pytest_configure(config):
    """Golden notebooks check their result record against tests/golden/<name>.results.json.

    The kernels nbval starts inherit this environment: ``records.publish`` compares the fresh
    record with the golden one (tolerances declared per field) and writes it to a scratch folder.
    Progress bars are off, as in ``traitlab render``: the goldens hold a report's outputs, and a
    bar's stderr would differ from run to run.
    """
    os.environ.setdefault("TRAITLAB_PROGRESS", "0")
    os.environ.setdefault("TRAITLAB_GOLDEN_DIR", str(Path(__file__).parent / "golden"))
    os.environ.setdefault("TRAITLAB_RECORD_DIR", tempfile.mkdtemp(prefix="traitlab-records-"))
