"""Where traitlab keeps things: the cache folder and the data root.

Both are set by environment variables, so a notebook never hard-codes a path:

- ``TRAITLAB_CACHE`` (default ``~/.cache/traitlab``): fetched GGUF files, dequantised
  weights, activation caches, run artifacts.
- ``TRAITLAB_DATA_ROOT`` (default ``$TRAITLAB_CACHE/datasets``): public benchmark
  datasets (XSTest, AdvBench, ...), read, never copied into the project.

Example:
    >>> import os; os.environ["TRAITLAB_CACHE"] = "/tmp/tl"
    >>> str(cache_dir("zoo"))
    '/tmp/tl/zoo'
"""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_DIRS = ("data", "notebooks", "params")


def _project_root() -> tuple[Path, bool]:
    """(root, is_checkout): the repository when running from a checkout (editable install:
    ``lib/traitlab/../..`` holds pyproject.toml and the project folders), else the copy of
    ``data/``, ``notebooks/`` and ``params/`` packaged in the wheel (``traitlab/_project``)."""
    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    if (repo / "pyproject.toml").is_file() and all((repo / d).is_dir() for d in _PROJECT_DIRS):
        return repo, True
    from importlib.resources import files

    packaged = Path(str(files("traitlab") / "_project"))
    return packaged, False


PROJECT_ROOT, IS_CHECKOUT = _project_root()
"""Where ``data/``, ``notebooks/`` and ``params/`` live: the repository root in a checkout,
``site-packages/traitlab/_project`` in a normal install."""


def cache_root() -> Path:
    """The cache folder (``$TRAITLAB_CACHE`` or ``~/.cache/traitlab``)."""
    return Path(os.environ.get("TRAITLAB_CACHE", Path.home() / ".cache" / "traitlab")).expanduser()


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache, created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path:
    """The folder holding public datasets (``$TRAITLAB_DATA_ROOT``)."""
    env = os.environ.get("TRAITLAB_DATA_ROOT")
    return Path(env).expanduser() if env else cache_root() / "datasets"


def build_root() -> Path:
    """Scratch folder for converted notebooks: ``build/`` in a checkout, else in the cache."""
    return PROJECT_ROOT / "build" if IS_CHECKOUT else cache_root() / "build"


def reports_root() -> Path:
    """Default output folder of ``traitlab render``: the repository's ``reports/`` in a checkout,
    else ``./reports`` under the current folder."""
    return PROJECT_ROOT / "reports" if IS_CHECKOUT else Path.cwd() / "reports"


def project_data(*parts: str) -> Path:
    """A file among the prompt sets this project ships (``data/`` in the repository)."""
    return PROJECT_ROOT.joinpath("data", *parts)
