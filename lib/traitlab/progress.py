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

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm as _tqdm

ENV = "TRAITLAB_PROGRESS"


def enabled(progress: bool = True) -> bool:
    """Whether a bar should show: the caller asked for one and ``$TRAITLAB_PROGRESS`` is not 0."""
    return bool(progress) and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tqdm(*args: Any, disable: bool = False, **kwargs: Any) -> _tqdm:
    """``tqdm.tqdm``, also disabled when ``$TRAITLAB_PROGRESS`` is 0."""
    return _tqdm(*args, disable=disable or not enabled(), **kwargs)


@contextmanager
def hf_bars(show: bool = True) -> Iterator[None]:
    """transformers' own bars (loading weights, writing shards, dequantising a GGUF) only where
    ours would show: ``show`` and ``$TRAITLAB_PROGRESS`` not 0. In a notebook kernel tqdm.auto
    draws them as widgets, outputs a rendered report (and a golden) must not carry; the GGUF
    bar, drawn the first time a machine dequantises a zoo model, imports tqdm itself, so it is
    switched off where it is drawn.

    >>> import os; os.environ["TRAITLAB_PROGRESS"] = "0"
    >>> from transformers.utils import logging as hf_logging
    >>> with hf_bars():
    ...     hf_logging.is_progress_bar_enabled()
    False
    >>> del os.environ["TRAITLAB_PROGRESS"]
    """
    if enabled(show):
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    drawn = getattr(gguf_utils, "tqdm", None)
    if drawn is not None:
        gguf_utils.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
        if drawn is not None:
            gguf_utils.tqdm = drawn
