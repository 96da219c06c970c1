"""What a run read back from traitlab's caches and what it computed, per cache.

A render's seconds mean little without it: the same report takes seconds with its judge
replies, generations, perplexities and activations cached, and most of an hour without them.
``traitlab render`` points ``TRAITLAB_CACHE_LOG`` at a file of its own for the notebook's
kernel; each cache (judge replies, generated answers, perplexities, activations, the model
chain's teacher answers and trained stages) appends one line per lookup batch (``note``), and
the render stores the sums (``summary``) in the report's metadata and prints them (``line``).
Without the variable nothing is written.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "cache.jsonl")
    >>> os.environ[ENV] = path
    >>> note("judge replies", read=3, computed=1); note("judge replies", read=0, computed=2)
    >>> del os.environ[ENV]
    >>> summary(path)
    {'judge replies': {'read': 3, 'computed': 3}}
    >>> line(summary(path))
    'computed 3 of 6 looked up: judge replies 3 of 6'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "TRAITLAB_CACHE_LOG"
"""The file each cache lookup is noted in (one JSON line each); unset: nothing is noted."""


def note(cache: str, *, read: int, computed: int) -> None:
    """Note that one lookup in ``cache`` found ``read`` items stored and computed ``computed``."""
    path = os.environ.get(ENV)
    if not path or read + computed == 0:
        return
    with open(path, "a", encoding="utf-8") as f:  # one short line, appended whole
        f.write(json.dumps({"cache": cache, "read": int(read), "computed": int(computed)}) + "\n")


def summary(path: str | Path) -> dict[str, dict[str, int]]:
    """Per cache, the items read and computed in every lookup noted in ``path`` (none: empty);
    a line a killed writer left half-written is skipped."""
    out: dict[str, dict[str, int]] = {}
    p = Path(path)
    if not p.exists():
        return out
    for text in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(text)
            cache, read, computed = str(row["cache"]), int(row["read"]), int(row["computed"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        sums = out.setdefault(cache, {"read": 0, "computed": 0})
        sums["read"] += read
        sums["computed"] += computed
    return out


def totals(sums: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(items computed, items looked up) over every cache in ``sums``.

    >>> totals({"a": {"read": 2, "computed": 1}, "b": {"read": 0, "computed": 3}})
    (4, 6)
    """
    return (sum(s["computed"] for s in sums.values()), sum(s["read"] + s["computed"] for s in sums.values()))


def line(sums: dict[str, dict[str, int]]) -> str:
    """One line for people: how much of what was looked up was computed, in all and per cache."""
    if not sums:
        return "no cache lookups noted"
    done, total = totals(sums)
    parts = [f"{k} {s['computed']:,} of {s['read'] + s['computed']:,}" for k, s in sums.items()]
    return f"computed {done:,} of {total:,} looked up: " + ", ".join(parts)
