"""Shared fixtures: tiny in-process models of every architecture, and an isolated cache."""

from __future__ import annotations

import functools
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


def _start_kernel_twice(start):
    """nbval's kernel start, tried once more when the kernel dies before answering. Seen once in
    two pytest workers ("Kernel died before replying to kernel_info", the same notebook passing
    alone); a likely cause is jupyter_client choosing its ZMQ ports by binding and releasing
    them, which two kernels starting at once can race for. A second failure is raised."""
    @functools.wraps(start)
    def start_again(*args, **kwargs):
        try:
            return start(*args, **kwargs)
        except RuntimeError:
            return start(*args, **kwargs)
    return start_again


try:
    import nbval.kernel
except ImportError:  # a runtime-only install: no notebooks under test
    pass
else:
    nbval.kernel.start_new_kernel = _start_kernel_twice(nbval.kernel.start_new_kernel)


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
