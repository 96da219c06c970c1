"""Cached generations: one entry per (prompts, condition, settings), written as soon as it exists.

Every steered generation in the project (``steered_eval.generate_answers``, the refusal dial's
last-token dial) stores its answers here, under ``$TRAITLAB_CACHE/generations``. An entry's key
is everything the answers depend on: the generation method (a version string of the code that
produced them), the model's weights fingerprint, dtype and device, the prompts' token ids, the
condition (a caller-made digest of its steering), and the caller's settings (``max_new_tokens``,
batch size, a seeded sampling, …). Entries are written atomically and checked when read (their
key, their length, their types); a damaged one is regenerated with a warning, never served.

Conditions are generated ``chunk`` at a time and each chunk is stored before the next starts,
so a long run that is interrupted resumes where it stopped.

Example (a stand-in generator; real callers pass the model's steered generation):
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> ex = [m.chat.encode("Hi")]
    >>> out = generate_cached(m, ex, {"c1": 1, "c2": 2}, lambda cs: [[f"x{c}"] for c in cs],
    ...                       method="demo-v1", store=False)
    >>> out
    {'c1': ['x1'], 'c2': ['x2']}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import cachelog
from .atomic import read_entry, stable_hash, write_entry
from .chat import Encoded
from .models import LoadedModel
from .paths import cache_dir

T = TypeVar("T")


def generate_cached(model: LoadedModel, examples: Sequence[Encoded], conditions: Mapping[str, T],
                    generate: Callable[[list[T]], list[list[str]]], *, method: str, store: bool = True,
                    chunk: int | None = None, **settings: Any) -> dict[str, list[str]]:
    """Each condition's texts (one per example), keyed like ``conditions`` (condition key → the
    caller's condition object).

    Cached entries are read; the rest are made by ``generate(list of conditions)`` → one list of
    texts per condition, ``chunk`` conditions per call (all at once when None), each call's
    answers stored before the next call when ``store``. ``settings`` must be JSON-serialisable:
    they are part of the key.
    """
    paths = {k: cache_path(model, examples, k, method=method, **settings) for k in conditions} if store else {}
    done: dict[str, list[str]] = {}
    for k, path in paths.items():
        hit = _read(path, len(examples))
        if hit is not None:
            done[k] = hit
    todo = [k for k in conditions if k not in done]
    if store:
        cachelog.note("generated answers", read=len(done) * len(examples), computed=len(todo) * len(examples))
    step = len(todo) if not chunk else chunk
    for start in range(0, len(todo), max(step, 1)):
        keys = todo[start:start + step]
        texts = generate([conditions[k] for k in keys])
        if len(texts) != len(keys) or any(len(t) != len(examples) for t in texts):
            raise RuntimeError(f"generator returned {len(texts)} conditions for {len(keys)} asked "
                               f"(each needs {len(examples)} texts)")
        for k, ts in zip(keys, texts, strict=True):
            done[k] = list(ts)
            if store:
                write_entry(paths[k], {"texts": done[k]})
    return {k: done[k] for k in conditions}


def cache_path(model: LoadedModel, examples: Sequence[Encoded], condition: str, *, method: str,
               **settings: Any) -> Path:
    """Where the answers of ``condition`` to ``examples`` under ``settings`` are stored."""
    key = stable_hash({"method": method, "model": model.fingerprint, "dtype": model.dtype,
                       "device": str(getattr(model, "device", None)), "prompts": [list(e.ids) for e in examples],
                       "condition": condition, **settings}, 32)
    return cache_dir("generations") / key[:2] / f"{key}.json"


def _read(path: Path, n: int) -> list[str] | None:
    """The cached answers at ``path``, or None (missing, or unreadable: then recomputed, with a
    warning, never served)."""
    d = read_entry(path, lambda d: isinstance(d.get("texts"), list) and len(d["texts"]) == n
                   and all(isinstance(t, str) for t in d["texts"]),
                   "generation", "not a cached generation of these prompts", "generating again", stacklevel=4)
    return None if d is None else d["texts"]
