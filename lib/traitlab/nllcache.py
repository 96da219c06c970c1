"""Cached answer log-likelihoods: one entry per (model, tokens), written as soon as it exists.

``textstats.perplexity`` reads every answer's summed negative log-likelihood from here before it
runs the model, and stores each one it computes under ``$TRAITLAB_CACHE/nll``. The text-coherence
floors of every steering report score the same gold answers under the same reference model, and a
re-render scores the same steered answers again: both are read back instead of recomputed.

An entry's key is everything the value depends on: the computation's version (``METHOD``), the
model's weights fingerprint, dtype and device, and the example's token ids with the position where
its answer starts (so the chat format and the question are in it). Not in the key: the batch an
answer was scored in, which moves only float rounding, like the CPU. Entries are written
atomically and checked when read (their key, and a token count that must match the example);
a damaged one is recomputed with a warning, never served.

Example:
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-qwen2")
    >>> e = m.chat.encode("Hi?", "Hello there.")
    >>> p = entry_path(m, e)
    >>> write(p, e, 12.5, count(e)); read(p, e) == (12.5, count(e))
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .atomic import read_entry, stable_hash, write_entry
from .chat import Encoded
from .paths import cache_dir

METHOD = "answer-nll-v1"
"""Version of the answer log-likelihood (``chain.answer_logprobs``: every answer token after the
first, predicted from all tokens before it); part of every entry's key."""


def count(example: Encoded) -> int:
    """Answer tokens whose log-probability is summed: every answer token but one at position 0
    (nothing predicts it). 0 for an empty answer.

    >>> count(Encoded((1, 2, 3, 4), 2)), count(Encoded((1, 2), 2))
    (2, 0)
    """
    return len(example.ids) - max(example.prompt_len, 1)


def entry_path(model: Any, example: Encoded) -> Path | None:
    """Where ``example``'s answer log-likelihood under ``model`` is stored; None for a model
    without a weights fingerprint (nothing identifies its values, so nothing is cached)."""
    fingerprint = getattr(model, "fingerprint", None)
    if not fingerprint:
        return None
    key = stable_hash({"method": METHOD, "model": fingerprint, "dtype": str(getattr(model, "dtype", "")),
                       "device": str(getattr(model, "device", None)), "ids": list(example.ids),
                       "prompt_len": example.prompt_len}, 32)
    return cache_dir("nll") / key[:2] / f"{key}.json"


def read(path: Path | None, example: Encoded) -> tuple[float, int] | None:
    """(summed negative log-likelihood, answer tokens) stored at ``path``, or None when missing or
    unreadable (then recomputed, with a warning, never served)."""
    if path is None:
        return None
    d = read_entry(path, lambda d: (isinstance(d.get("count"), int) and d["count"] == count(example)
                                    and isinstance(d.get("nll"), float) and math.isfinite(d["nll"]) and d["nll"] >= 0),
                   "log-likelihood", "not a stored log-likelihood of this answer", "computing it again", stacklevel=4)
    return None if d is None else (d["nll"], d["count"])


def write(path: Path | None, example: Encoded, nll: float, n: int) -> None:
    """Store one answer's summed negative log-likelihood (a no-op for ``path`` None)."""
    if path is None:
        return
    if n != count(example):
        raise ValueError(f"{n} answer tokens scored, the example has {count(example)}")
    write_entry(path, {"nll": float(nll), "count": int(n)})
