"""Coherence read from the text itself, beside the judge's score.

Steered models fail in a few recognisable shapes: loops ("I think it will be good. I think it
will be good. …"), word salad, truncation. Three judge-free measures see them:

- ``repetition(text, n)``: the share of word n-grams that repeat an earlier n-gram of the same
  answer (0 for fresh text, → 1 for a loop);
- ``distinct(text, n)``: distinct n-grams over all n-grams (the usual distinct-n; 1 for fresh
  text, low for loops);
- ``perplexity(model, items)``: exp of the mean negative log-likelihood per answer token under a
  reference model, given the question (high for word salad and broken words).

Words are lower-cased runs of letters, digits and apostrophes, so punctuation and spacing do not
count as novelty.

Example:
    >>> repetition("it will be good. it will be good. it will be good.", n=3)   # 6 of 10 trigrams repeat
    0.6
    >>> distinct("the cat sat on the mat", n=1)
    0.8333333333333334
    >>> stats("Fine.").words
    1
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[\w']+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``."""
    return [w.lower() for w in _WORD.findall(text or "")]


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str, n: int = 3) -> float:
    """Share of the answer's word ``n``-grams that already occurred earlier in it (0 when it
    has no ``n``-gram)."""
    grams = _ngrams(words(text), n)
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def distinct(text: str, n: int = 2) -> float:
    """Distinct word ``n``-grams over all word ``n``-grams (1.0 when it has none)."""
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


@dataclass(frozen=True)
class TextStats:
    """Judge-free coherence measures of one answer."""

    words: int
    repetition: float
    distinct2: float


def stats(text: str) -> TextStats:
    """Word count, trigram repetition and distinct-2 of ``text``."""
    return TextStats(len(words(text)), repetition(text, 3), distinct(text, 2))


def perplexity(model: Any, items: Sequence[tuple[str, str]], *, batch_size: int = 8) -> list[float]:
    """Per-token perplexity of each (question, answer) answer under ``model`` (a
    ``traitlab.models.LoadedModel``), the answer scored after the model's chat prompt for the
    question; ``nan`` for an empty answer.

    Example (a tiny random model: the values are near its vocabulary size, the plumbing is real):
        >>> from traitlab.models import load_model
        >>> ppl = perplexity(load_model("tiny-qwen2"), [("Hi?", "Hello there."), ("Hi?", "")])
        >>> ppl[0] > 1, math.isnan(ppl[1])
        (True, True)
    """
    import torch

    from .chain import answer_batch, answer_logprobs

    encoded = [model.chat.encode(q, a) for q, a in items]
    pad = model.tokenizer.pad_token_id or 0
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            part = encoded[start:start + batch_size]
            total, count = answer_logprobs(model.hf, *answer_batch(part, pad))
            out += [math.exp(-float(t) / int(c)) if int(c) > 0 else math.nan
                    for t, c in zip(total.tolist(), count.tolist(), strict=True)]
    return out
