"""Coherence read from the text itself, beside the judge's score.

Steered models fail in a few recognisable shapes: loops ("I think it will be good. I think it
will be good. …"), word salad, truncation. Three judge-free measures see them:

- ``repetition(text, n)``: the share of word n-grams that repeat an earlier n-gram of the same
  answer (0 for fresh text, → 1 for a loop);
- ``distinct(text, n)``: distinct n-grams over all n-grams (the usual distinct-n; 1 for fresh
  text, low for loops);
- ``perplexity(model, items)``: exp of the mean negative log-likelihood per answer token under a
  reference model, given the question (high for word salad and broken words);
- relevance (``coherence_measures(..., relevance=True)``): how much the question lowers that
  log-perplexity (near 0 for fluent text that ignores the question).

``coherence_measures`` puts distinct-2 and log-perplexity beside each answer of a frame;
``fit_floors`` finds the pair of floors on them that best matches labelled coherence (the gold
sets' labels: ``judge_power.calibrate_floors``), and ``Floors.coherent`` applies the rule.

Words are lower-cased runs of letters, digits and apostrophes, so punctuation and spacing do not
count as novelty. A loop needs no spaces: a steered model may write one unit again and again
("готготгот…", "33333…", "vietviet…"), which is one long "word" with no word pair to repeat. So a
unit repeated at least ``LOOP_MIN`` times in a row inside a word, over ``LOOP_CHARS`` characters or
more, counts as that many words, and an answer with no word at all ("@ @ @ …") is read as its
visible characters (``words``).

Example:
    >>> repetition("it will be good. it will be good. it will be good.", n=3)   # 6 of 10 trigrams repeat
    0.6
    >>> distinct("the cat sat on the mat", n=1)
    0.8333333333333334
    >>> stats("Fine.").words
    1
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import cachelog
from .progress import tqdm

_WORD = re.compile(r"[\w']+", re.UNICODE)

LOOP_MIN = 4
"""Repeats in a row of one unit inside a word that make it a loop, read as that many words: four,
so words with a doubled or tripled letter or syllable ("bookkeeper", "www") stay whole."""

LOOP_CHARS = 8
"""Characters a loop inside a word spans at least: numbers such as "0000" or "1000000" stay whole."""

_LOOP = re.compile(rf"(.+?)\1{{{LOOP_MIN - 1},}}", re.DOTALL)


def _unloop(word: str) -> list[str]:
    """``word`` with each run of one unit repeated ≥ ``LOOP_MIN`` times over ≥ ``LOOP_CHARS``
    characters split into its units."""
    out, pos = [], 0
    for m in _LOOP.finditer(word):
        if len(m.group(0)) < LOOP_CHARS:
            continue
        unit = m.group(1)
        out += ([word[pos:m.start()]] if m.start() > pos else []) + [unit] * (len(m.group(0)) // len(unit))
        pos = m.end()
    return out + ([word[pos:]] if pos < len(word) else [])


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``: runs of letters, digits and apostrophes, a loop inside a
    run split into its repeated units, and, where the text has no such run, its visible characters.

    >>> words("Don't STOP—now!")
    ["don't", 'stop', 'now']
    >>> words("Outlookvietvietvietviet"), words("bookkeeper www 10000")
    (['outlook', 'viet', 'viet', 'viet', 'viet'], ['bookkeeper', 'www', '10000'])
    >>> words("@ @ @")
    ['@', '@', '@']
    """
    found = _WORD.findall((text or "").lower())
    if not found:
        return [c for c in (text or "") if not c.isspace()]
    return [u for w in found for u in _unloop(w)]


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


def similarity(a: str, b: str) -> float:
    """How alike two answers' words are: ``difflib``'s ratio on their word sequences, 2 × matched
    words / total words (1.0 for the same words in the same order, 0.0 for none in common; two
    empty answers are alike). Tells instructions or steering that change nothing from ones that
    change the answer.

    >>> similarity("It will be fine.", "it will BE fine"), similarity("yes", "no")
    (1.0, 0.0)
    >>> round(similarity("I do not know the answer", "I don't know the answer"), 2)
    0.73
    """
    return difflib.SequenceMatcher(None, words(a), words(b), autojunk=False).ratio()


@dataclass(frozen=True)
class TextStats:
    """Judge-free coherence measures of one answer."""

    words: int
    repetition: float
    distinct2: float


def stats(text: str) -> TextStats:
    """Word count, trigram repetition and distinct-2 of ``text``."""
    return TextStats(len(words(text)), repetition(text, 3), distinct(text, 2))


def perplexity(model: Any, items: Sequence[tuple[str, str]], *, batch_size: int = 8,
               cache: bool = True, progress: bool = True) -> list[float]:
    """Per-token perplexity of each (question, answer) answer under ``model`` (a
    ``traitlab.models.LoadedModel``), the answer scored after the model's chat prompt for the
    question; ``nan`` for an empty answer.

    With ``cache`` each answer's log-likelihood is read from ``traitlab.nllcache`` when stored
    there (the same model, dtype, device and tokens), and stored as soon as its batch is scored:
    the gold answers every steering report calibrates its floors on, and a re-render's answers,
    are scored once. ``progress`` shows a bar over the answers still to score.

    Example (a tiny random model: the values are near its vocabulary size, the plumbing is real):
        >>> from traitlab.models import load_model
        >>> ppl = perplexity(load_model("tiny-qwen2"), [("Hi?", "Hello there."), ("Hi?", "")])
        >>> ppl[0] > 1, math.isnan(ppl[1])
        (True, True)
    """
    from . import nllcache

    encoded = [model.chat.encode(q, a) for q, a in items]
    paths = [nllcache.entry_path(model, e) if cache else None for e in encoded]
    got = [nllcache.read(p, e) for p, e in zip(paths, encoded, strict=True)]
    todo = [i for i, g in enumerate(got) if g is None]
    if cache:
        cachelog.note("perplexities", read=len(got) - len(todo), computed=len(todo))
    with tqdm(total=len(todo), desc="perplexity", disable=not progress or not todo) as bar:
        for part, sums in answer_nll(model, [encoded[i] for i in todo], batch_size=batch_size):
            for k, (nll, n) in zip(part, sums, strict=True):
                i = todo[k]
                got[i] = (nll, n)
                nllcache.write(paths[i], encoded[i], nll, n)
            bar.update(len(part))
    return [math.exp(nll / c) if c > 0 else math.nan for nll, c in got]  # type: ignore[misc]


def answer_nll(model: Any, examples: Sequence[Any], *, batch_size: int = 8
               ) -> Iterator[tuple[list[int], list[tuple[float, int]]]]:
    """(indices into ``examples``, their (summed negative log-likelihood of the answer tokens after
    the first, that count)) batch by batch, under ``model``.

    Answers to one prompt share its forward: each distinct prompt less its last token runs once,
    and its answers (each led by that last token) run on copies of its KV cache, right-padded, at
    their own positions, ``batch_size`` answers a forward. A steering grid asks each question under
    every condition, so its prompts' share of the work is done once: 1.22x the whole-sequence path
    on 8 questions × 16 answers with Qwen2.5-Coder-0.5B (``benchmarks/steered_eval.py``). Equal to
    one forward over each whole sequence (``chain.answer_logprobs``) up to float rounding (the same
    tokens attended in two passes instead of one).

    Example (a tiny random model: the values mean nothing, the plumbing is real):
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-qwen2")
        >>> ex = [m.chat.encode("Hi?", "Hello there."), m.chat.encode("Hi?", ""), m.chat.encode("Yo?", "Hey.")]
        >>> [(part, [n for _, n in sums]) for part, sums in answer_nll(m, ex, batch_size=2)]  # one token a character
        [([1, 0], [0, 12]), ([2], [4])]
    """
    import torch

    from .chain import answer_batch, answer_logprobs, decoder, input_device
    from .chat import Encoded

    hf = model.hf
    pad = model.tokenizer.pad_token_id or 0
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(examples):
        by_prompt.setdefault(tuple(e.ids[:e.prompt_len]), []).append(i)
    with torch.no_grad():
        for prompt, members in by_prompt.items():
            k = len(prompt) - 1  # the shared part: the prompt less its last token
            past = (decoder(hf)(input_ids=torch.tensor([prompt[:k]], device=input_device(hf)),
                                use_cache=True).past_key_values if k else None)
            members = sorted(members, key=lambda i: len(examples[i].ids))  # similar lengths share a batch
            for start in range(0, len(members), batch_size):
                part = members[start:start + batch_size]
                cache = None
                if past is not None:
                    cache = copy.deepcopy(past)
                    cache.batch_repeat_interleave(len(part))
                rest = [Encoded(tuple(examples[i].ids[k:]), 1) for i in part]  # led by the prompt's last token
                total, n = answer_logprobs(hf, *answer_batch(rest, pad), past=cache)
                yield part, [(-float(t), int(c)) for t, c in zip(total.tolist(), n.tolist(), strict=True)]


def _log_ppl(model: Any, pairs: Sequence[tuple[str, str]], batch_size: int, progress: bool = True) -> list[float]:
    """Log-perplexity of each (question, answer), each distinct pair scored once."""
    unique = sorted(set(pairs), key=lambda p: (len(p[0]) + len(p[1]), p))
    ppl = dict(zip(unique, perplexity(model, unique, batch_size=batch_size, progress=progress), strict=True))
    return np.log(np.asarray([ppl[p] for p in pairs], float)).tolist()


def coherence_measures(model: Any, df: pd.DataFrame, *, context: bool = True, relevance: bool = False,
                       batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """``distinct2`` and ``log_ppl`` (log-perplexity of the answer under ``model``) per row of a
    frame with ``question`` (or ``prompt``) and ``answer`` (or ``response``) columns, indexed like
    ``df``. ``context=True`` scores the answer after its question; ``False`` after an empty user
    turn (the text's own fluency: far cheaper where prompts are long, e.g. jailbreak templates,
    and identical answers are scored once). Each distinct (question, answer) is scored once, each
    question's prompt once for all its answers (``answer_nll``), and values stored by
    ``traitlab.nllcache`` are read back.

    ``relevance=True`` (with ``context``) adds ``relevance``: how much the question lowers the
    answer's log-perplexity (log-perplexity after an empty user turn minus after the question).
    Fluent text that ignores the question — off-topic answers, answers that drift away — gains
    little from it; perplexity alone cannot tell those from good answers.

    Example (a tiny random model: the values mean nothing, the plumbing is real):
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-qwen2")
        >>> d = pd.DataFrame({"question": ["Hi?", "Yo?"], "answer": ["Hello hello hello.", "Hello hello hello."]})
        >>> out = coherence_measures(m, d, context=False)
        >>> out.log_ppl.nunique(), round(float(out.distinct2[0]), 2)
        (1, 0.5)
        >>> list(coherence_measures(m, d, relevance=True).columns)
        ['distinct2', 'log_ppl', 'relevance']
    """
    if relevance and not context:
        raise ValueError("relevance compares the answer after its question with after none: it needs context=True")
    q = "question" if "question" in df.columns else "prompt"
    a = "answer" if "answer" in df.columns else "response"
    answers = list(df[a])
    pairs = list(zip(df[q] if context else [""] * len(df), answers, strict=True))
    free = [("", t) for t in answers]
    both = _log_ppl(model, pairs + free if relevance else pairs, batch_size, progress)
    out = pd.DataFrame({"distinct2": [distinct(t, 2) for t in answers], "log_ppl": both[:len(df)]}, index=df.index)
    if relevance:
        out["relevance"] = np.asarray(both[len(df):]) - out.log_ppl.to_numpy()
    return out


@dataclass(frozen=True)
class Floors:
    """Text-coherence floors fitted on labelled answers: coherent means ``distinct2 ≥
    distinct2_min`` and ``log_ppl ≤ log_ppl_max``; ``balanced_accuracy`` is the rule's on the
    labels (coherence ≥ ``cut`` vs below), ``n`` the labelled answers."""

    distinct2_min: float
    log_ppl_max: float
    balanced_accuracy: float
    n: int
    cut: float = 50.0

    def coherent(self, df: pd.DataFrame) -> pd.Series:
        return (df.distinct2 >= self.distinct2_min) & (df.log_ppl <= self.log_ppl_max)

    def text(self) -> str:
        return (f"distinct-2 ≥ {self.distinct2_min:.2f} and log-perplexity ≤ {self.log_ppl_max:.2f} "
                f"(balanced accuracy {100 * self.balanced_accuracy:.0f}% on {self.n} labelled answers)")


def fit_floors(measures: pd.DataFrame, coherence: np.ndarray, cut: float = 50.0) -> Floors:
    """The pair of floors (a grid over each measure's observed values) whose joint rule best
    separates answers labelled coherent (``coherence ≥ cut``) from the rest, by balanced accuracy.

    >>> m = pd.DataFrame({"distinct2": [1.0, 0.9, 0.3, 0.95], "log_ppl": [1.0, 1.2, 1.1, 6.0]})
    >>> f = fit_floors(m, np.array([90, 80, 10, 20]))
    >>> f.balanced_accuracy, f.coherent(m).tolist()
    (1.0, [True, True, False, False])
    """
    truth = np.asarray(coherence, float) >= cut
    if truth.all() or not truth.any():
        raise ValueError(f"the labelled answers need both classes around coherence {cut}")
    d2, lp = measures.distinct2.to_numpy(float), measures.log_ppl.to_numpy(float)
    ok = np.isfinite(d2) & np.isfinite(lp)
    d2, lp, truth = d2[ok], lp[ok], truth[ok]
    bs = np.unique(np.r_[lp, math.inf])
    below = lp[:, None] <= bs[None, :]                       # [answers, perplexity floors]
    best = (-1.0, 0.0, math.inf)
    for a in np.unique(np.r_[d2, 0.0]):
        pred = (d2 >= a)[:, None] & below
        acc = 0.5 * (pred[truth].mean(0) + (~pred[~truth]).mean(0))   # balanced accuracy per floor
        j = int(np.argmax(acc))
        if acc[j] > best[0] + 1e-12:
            best = (float(acc[j]), float(a), float(bs[j]))
    return Floors(best[1], best[2], best[0], int(ok.sum()), cut)


TEXT_FIT_FEATURES = ("repetition", "distinct2", "log_ppl")
"""The judge-free measures ``fit_coherence`` combines by default."""


@dataclass(frozen=True)
class CoherenceFit:
    """Coherence on the gold sets' 0–100 scale read from judge-free text measures: the least-squares
    line ``intercept + Σ weight × feature`` fitted on labelled answers, clipped to 0–100.

    One number per answer that the coherence floor of a judge's score applies to unchanged, with no
    judge call: the gold sets show each text measure seeing one failure shape (repetition the
    loops, perplexity the word salad, distinct-2 both), and the line weighs them against labels.
    ``n`` is the labelled answers it was fitted on, ``r`` its Pearson r with their labels
    (in-sample: read a held-out r beside it)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    n: int
    r: float

    def predict(self, measures: pd.DataFrame) -> np.ndarray:
        """The fitted coherence of each row of ``measures`` (which has every feature column);
        ``nan`` where a feature is missing."""
        missing = [f for f in self.features if f not in measures.columns]
        if missing:
            raise KeyError(f"measures lack {', '.join(missing)} (the fit reads {', '.join(self.features)})")
        x = measures[list(self.features)].to_numpy(float)
        return np.clip(self.intercept + x @ np.asarray(self.weights, float), 0.0, 100.0)

    def text(self) -> str:
        terms = " ".join(f"{'+' if w >= 0 else '−'} {abs(w):.1f}·{f}" for f, w in zip(self.features, self.weights, strict=True))
        return f"coherence ≈ {self.intercept:.1f} {terms} (least squares on {self.n} labelled answers, r = {self.r:.2f})"


def fit_coherence(measures: pd.DataFrame, coherence: Sequence[float] | np.ndarray,
                  features: Sequence[str] = TEXT_FIT_FEATURES) -> CoherenceFit:
    """Fit ``CoherenceFit`` on ``measures`` (one row per labelled answer, a column per feature) and
    the answers' ``coherence`` labels; rows with a non-finite value are left out.

    >>> m = pd.DataFrame({"distinct2": [1.0, 0.5, 0.9, 0.3], "log_ppl": [2.0, 2.0, 6.0, 6.0]})
    >>> f = fit_coherence(m, [90, 45, 50, 5], features=("distinct2", "log_ppl"))
    >>> [round(w, 1) for w in f.weights], round(f.intercept, 1), f.predict(m).round(1).tolist()
    ([81.1, -7.0], 20.6, [87.8, 47.2, 51.8, 3.2])
    """
    features = tuple(features)
    missing = [f for f in features if f not in measures.columns]
    if missing:
        raise KeyError(f"measures lack {', '.join(missing)} (pass them, or fit on other features)")
    x = measures[list(features)].to_numpy(float)
    y = np.asarray(coherence, float)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} rows of measures but {len(y)} coherence labels")
    ok = np.isfinite(x).all(1) & np.isfinite(y)
    if ok.sum() < len(features) + 2 or np.ptp(y[ok]) == 0:
        raise ValueError(f"fitting {len(features)} features needs at least {len(features) + 2} labelled answers "
                         f"with varying coherence, got {int(ok.sum())}")
    design = np.c_[np.ones(ok.sum()), x[ok]]
    coef, *_ = np.linalg.lstsq(design, y[ok], rcond=None)
    fit = design @ coef
    r = float(np.corrcoef(fit, y[ok])[0, 1]) if np.ptp(fit) > 0 else float("nan")
    return CoherenceFit(features, tuple(float(c) for c in coef[1:]), float(coef[0]), int(ok.sum()), r)
