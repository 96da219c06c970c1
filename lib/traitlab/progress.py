"""Progress bars: on in a terminal or a notebook session, off in rendered reports.

Every long loop in traitlab shows a ``tqdm`` bar unless its caller passes ``progress=False``;
modules import ``tqdm`` from here instead of from tqdm, so one switch covers them all.
``traitlab render`` sets ``TRAITLAB_PROGRESS=0`` for the kernel, so reports carry no progress
bars (the render prints per-cell progress on the terminal instead); set it yourself to silence
bars anywhere.

Example:
    >>> import os; saved = os.environ.get("TRAITLAB_PROGRESS")
    >>> os.environ["TRAITLAB_PROGRESS"] = "0"; enabled(True)
    False
    >>> os.environ["TRAITLAB_PROGRESS"] = "1"; enabled(True), enabled(False)
    (True, False)
    >>> if saved is None: del os.environ["TRAITLAB_PROGRESS"]
    ... else: os.environ["TRAITLAB_PROGRESS"] = saved
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm as _tqdm

ENV = "TRAITLAB_PROGRESS"


def enabled(progress: bool = True) -> bool:
    """Whether a bar should show: the caller asked for one and ``$TRAITLAB_PROGRESS`` is not 0."""
    return bool(progress) and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tqdm(*args: Any, disable: bool = False, **kwargs: Any) -> _tqdm:
    """``tqdm.tqdm``, also disabled when ``$TRAITLAB_PROGRESS`` is 0."""
    return _tqdm(*args, disable=disable or not enabled(), **kwargs)
