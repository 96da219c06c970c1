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

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The repository root when traitlab is installed in editable mode (lib/traitlab/..)."""


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


def project_data(*parts: str) -> Path:
    """A file among the prompt sets this project ships (``data/`` in the repository)."""
    return PROJECT_ROOT.joinpath("data", *parts)
