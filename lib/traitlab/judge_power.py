"""How much a judge method can see: gold sets, pairwise accuracy by gold gap, and the minimum
detectable steering effect.

A steering report asks whether steered answers show more of a trait than unsteered answers to
the same questions. Whatever the judge method (an absolute 0–100 score, or a pairwise "which
shows more?"), that comparison is, per question, a *win*: the method says the steered answer
shows more (1), less (0) or cannot tell (½). So every method is measured on the same yardstick,
pairs of gold answers to one question whose labels differ by Δ points:

- ``win`` of a pair: an absolute method wins when it orders the two scores as the labels do
  (a tie is ½); a pairwise method wins when its decision (both orders averaged,
  ``judge.Preference.win``) picks the right answer. Not its probability: small judges put
  nearly the same label probability on every pair, so the mean probability sits near ½ even
  for a judge whose decisions are almost always right;
- the method's **noise** σ (in gold points): the fit of ``P(win) = Φ(Δ / σ)`` over all pairs
  (maximum likelihood; a perfect judge has σ → 0, a blind one σ → ∞). For an absolute score
  with Gaussian noise of SD s (in gold units) this is exactly σ = √2·s;
- the **minimum detectable effect** at ``n`` questions: the smallest gap Δ whose expected win
  rate clears a one-sample test of "wins = ½" at 80% power, two-sided 5%:
  ``Φ(Δ/σ) − ½ = POWER_Z · ½ / √n``, i.e. ``MDE = σ · Φ⁻¹(½ + POWER_Z / (2√n))`` (∞ when the
  right side reaches 1: no gap is detectable with so few questions).

Gold sets: ``data/judge/gold_<trait>.jsonl`` (or one's own folder: a report's ``gold_dir``),
one labelled response per line with ``question``, ``response``, the trait's own label column
(0–100), ``coherence`` (0–100), ``shape`` (the failure shape: fluent, repetition, truncation,
topic_drift, one_line, off_topic, word_salad) and ``split`` (``tune``/``heldout``: no judge
design is tuned on the held-out questions).

Example:
    >>> import numpy as np
    >>> gap = np.array([10., 20, 40, 60, 80])
    >>> sigma = fit_noise(gap, np.array([0.6, 0.7, 0.85, 0.95, 1.0]))
    >>> 15 < sigma < 40
    True
    >>> round(mde_gap(sigma, 16) / sigma, 3)   # Φ⁻¹(0.5 + 2.8/8)
    1.036
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.stats import norm

from . import textstats
from . import uncertainty as unc
from .data import DataError, check_once, read_jsonl
from .judge import Anchor
from .paths import project_data
from .uncertainty import POWER_Z

SHAPES = ("fluent", "repetition", "truncation", "topic_drift", "one_line", "off_topic", "word_salad")
SPLITS = ("tune", "heldout")
MIN_PAIR_GAP = 40.0
"""The gold gap at which pairwise accuracy is read (the judge-sensitivity target)."""


def load_anchors(trait: str, folder: str | Path | None = None) -> tuple[Anchor, ...]:
    """The anchored rubric's scored examples for ``trait`` (or "coherence"), one per line of an
    ``anchors.jsonl`` with trait, score (0–100), question, answer: ``<folder>/anchors.jsonl``
    (one's own, a report's ``gold_dir``) where it has lines for ``trait``, else ours
    (``data/judge/anchors.jsonl``). Their questions are none of the gold questions.

    >>> [a.score for a in load_anchors("refusal")]
    [10, 50, 90]
    """
    ours = project_data("judge", "anchors.jsonl")
    own = Path(folder).expanduser() / "anchors.jsonl" if folder is not None else None
    known: set[str] = set()
    for path in ([own] if own is not None and own.is_file() else []) + [ours]:
        rows = read_jsonl(path, required=("trait", "score", "question", "answer"))
        out = []
        for i, r in rows:
            if r["trait"] == trait:
                if not (isinstance(r["score"], int) and 0 <= r["score"] <= 100):
                    raise DataError(f"{path}:{i}: score must be an integer 0-100, got {r['score']!r}")
                out.append(Anchor(int(r["score"]), str(r["question"]), str(r["answer"])))
        if out:
            return tuple(sorted(out, key=lambda a: a.score))
        known |= {r["trait"] for _, r in rows}
    raise DataError(f"{own or ours}: no anchors for {trait!r} (have: {', '.join(sorted(known))}); add lines "
                    f'{{"trait": "{trait}", "score": 10, "question": ..., "answer": ...}} at 10 / 50 / 90')


def gold_path(trait: str, folder: str | Path | None = None) -> Path:
    """The gold set of ``trait``: ``<folder>/gold_<trait>.jsonl`` where ``folder`` (one's own, a
    report's ``gold_dir``) holds one, else the one we ship (``data/judge/gold_<trait>.jsonl``),
    so one's own folder needs only the traits it adds or relabels.

    >>> gold_path("optimism", "/no/such/dir") == gold_path("optimism")
    True
    """
    name = f"gold_{trait}.jsonl"
    own = Path(folder).expanduser() / name if folder is not None else None
    return own if own is not None and own.is_file() else project_data("judge") / name


def gold_sources(traits: Sequence[str], folder: str | Path | None) -> str:
    """One line saying where each trait's gold set is read from (``gold_path``): one's own
    ``folder`` or ours, so a file named for another trait than meant is seen before a render.

    >>> gold_sources(["optimism", "cheer"], "/my/gold")
    'gold sets: optimism from ours (data/judge/gold_optimism.jsonl; no /my/gold/gold_optimism.jsonl); cheer has none (no /my/gold/gold_cheer.jsonl)'
    """
    parts = []
    for t in dict.fromkeys(traits):
        path = gold_path(t, folder)
        no_own = f"no {Path(folder).expanduser() / path.name}" if folder is not None else None
        if not path.is_file():
            parts.append(f"{t} has none" + (f" ({no_own})" if no_own else ""))
        elif path.parent != project_data("judge"):
            parts.append(f"{t} from {path}")
        else:
            parts.append(f"{t} from ours (data/judge/{path.name}" + (f"; {no_own})" if no_own else ")"))
    return "gold sets: " + "; ".join(parts)


def missing_gold(traits: Sequence[str], folder: str | Path | None = None) -> str | None:
    """None when every trait in ``traits`` has a gold set (``gold_path``), else a one-line
    sentence naming those without one and the file to write.

    >>> missing_gold(["optimism"]) is None
    True
    >>> missing_gold(["optimism", "cheer"], "/my/gold")
    "no gold set for ['cheer']: write /my/gold/gold_cheer.jsonl"
    >>> missing_gold(["cheer"]).split(", or")[0]
    "no gold set for ['cheer']: write gold_cheer.jsonl in a folder of your own and name it with gold_dir"
    """
    if folder is not None and (slip := _misnamed(traits, folder)) is not None:
        return slip
    none = [t for t in traits if not gold_path(t, folder).is_file()]
    if not none:
        return None
    if folder is not None:
        return f"no gold set for {none}: write {Path(folder).expanduser() / f'gold_{none[0]}.jsonl'}"
    ours = sorted(p.stem.removeprefix("gold_") for p in project_data("judge").glob("gold_*.jsonl"))
    return (f"no gold set for {none}: write gold_{none[0]}.jsonl in a folder of your own and name it with "
            f"gold_dir, or use a trait with one ({', '.join(ours)})")


def _misnamed(traits: Sequence[str], folder: str | Path) -> str | None:
    """A gold file in ``folder`` whose name nearly spells a trait that is read from elsewhere (a
    typo would otherwise read ours, or fail, without a word), as a one-line sentence; else None.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "gold_optimsim.jsonl").write_text("")
    >>> _misnamed(["optimism"], d).split(":")[0].endswith("gold_optimsim.jsonl")
    True
    """
    own = Path(folder).expanduser()
    stems = [p.stem.removeprefix("gold_") for p in sorted(own.glob("gold_*.jsonl"))]
    for t in traits:
        if t in stems:
            continue
        close = difflib.get_close_matches(t, stems, n=1, cutoff=0.8)
        if close:
            return (f"{own / f'gold_{close[0]}.jsonl'}: no trait {close[0]!r} is read here; did you mean "
                    f"gold_{t}.jsonl? (rename it, or move it out of gold_dir to read {t!r} from ours)")
    return None


def check_gold(traits: Sequence[str], folder: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Before model work: every trait in ``traits`` has a gold set (``missing_gold``) that reads
    cleanly (``load_gold``'s checks); else a one-line ``DataError``. Returns each set (both
    splits), read once, for the caller's own checks."""
    if (why := missing_gold(traits, folder)) is not None:
        raise DataError(why)
    return {t: load_gold(t, folder=folder) for t in dict.fromkeys(traits)}


def check_floor_gold(traits: Sequence[str], folder: str | Path | None = None, cut: float = 50.0, *,
                     gold: Mapping[str, pd.DataFrame] | None = None) -> None:
    """Before model work: the gold sets ``calibrate_floors`` fits on (``check_gold``, or the
    sets ``gold`` already read) label answers on both sides of coherence ``cut``, as
    ``textstats.fit_floors`` needs; else a one-line ``DataError``.

    >>> check_floor_gold(["optimism"])
    """
    gold = check_gold(traits, folder) if gold is None else gold
    coherent = np.concatenate([gold[t].coherence.to_numpy(float) >= cut for t in traits])
    if coherent.all() or not coherent.any():
        side = "at or above" if coherent.all() else "below"
        raise DataError(f"every answer in the gold sets of {list(traits)} is labelled {side} coherence {cut:g}: "
                        "the text-coherence floors need labelled answers on both sides (add incoherent or "
                        "coherent ones, or name another set in gold_traits)")


def load_gold(trait: str, split: str | None = None, folder: str | Path | None = None) -> pd.DataFrame:
    """The gold set of ``trait`` with a uniform schema: id, trait, question, response, ``label``
    (the trait's 0–100 label), coherence, shape, split; ``split`` keeps one part. A ``folder``
    holding ``gold_<trait>.jsonl`` is read instead of ours (``gold_path``).

    Raises ``DataError`` naming the file and line of the first bad row (a missing key, a label
    outside 0–100, an unknown shape or split, a repeated id or answer) or a question that sits
    in both splits.
    """
    if split is not None and split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS} or None, got {split!r}")
    path = gold_path(trait, folder)
    need = ("id", "question", "response", trait, "coherence", "shape", "split")
    numbered = read_jsonl(path, required=need)
    rows = [r for _, r in numbered]
    seen_id: dict[Any, int] = {}
    seen_answer: dict[tuple[str, str], int] = {}
    for i, r in numbered:
        check_once(seen_id, r["id"], path, i, f"id {r['id']!r}", "ids must be unique")
        check_once(seen_answer, (str(r["question"]).strip(), str(r["response"]).strip()), path, i,
                   "the same question and response", "an answer counted twice would weigh twice in every fit")
        for k in (trait, "coherence"):
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
                raise DataError(f"{path}:{i}: {k} must be a number in 0..100, got {v!r}")
        if r["shape"] not in SHAPES:
            raise DataError(f"{path}:{i}: shape {r['shape']!r} is not one of {SHAPES}")
        if r["split"] not in SPLITS:
            raise DataError(f"{path}:{i}: split {r['split']!r} is not one of {SPLITS}")
    df = pd.DataFrame(rows).rename(columns={trait: "label"})
    df["trait"] = trait
    mixed = df.groupby("question").split.nunique()
    if (mixed > 1).any():
        raise DataError(f"{path}: question {mixed[mixed > 1].index[0]!r} is in both splits; "
                        "split whole questions, so held-out questions stay unseen")
    if split is not None:
        df = df[df.split == split]
    return df[["id", "trait", "question", "response", "label", "coherence", "shape", "split"]
              ].reset_index(drop=True)


def calibrate_floors(model: Any, traits: Sequence[str], *, context: bool = True, batch_size: int = 16,
                     folder: str | Path | None = None, progress: bool = True) -> tuple[textstats.Floors, pd.DataFrame]:
    """Text-coherence floors (``textstats.fit_floors``) fitted on the coherence labels of the gold
    sets of ``traits`` (both splits), the answers' perplexity read under ``model`` (after their
    question, or with ``context=False`` after an empty turn: calibrate as you will measure);
    and the gold rows with their ``distinct2`` and ``log_ppl``.

    Example (a tiny random model: its perplexities mean nothing, the plumbing is real):
        >>> from traitlab.models import load_model
        >>> floors, gold = calibrate_floors(load_model("tiny-qwen2"), ["optimism"])
        >>> 0.5 <= floors.balanced_accuracy <= 1.0, floors.n == len(gold)
        (True, True)
    """
    gold = pd.concat([load_gold(t, folder=folder) for t in traits], ignore_index=True)
    gold = gold.join(textstats.coherence_measures(model, gold, context=context, batch_size=batch_size,
                                                  progress=progress))
    return textstats.fit_floors(gold[["distinct2", "log_ppl"]], gold.coherence.to_numpy()), gold


class FloorRefits:
    """The text floors' own sampling error, for a bootstrap: :meth:`floors` refits them on one
    resample of the gold *questions* (the rows ``calibrate_floors`` returns: ``trait``,
    ``question``, ``coherence``, ``distinct2``, ``log_ppl``). Resample ``units`` (the gold
    questions) as a stratum of the same bootstrap that resamples the steered questions, and each
    replicate judges coherence by its own floors, so an interval over a coherence-derived
    statistic covers where the floor falls as well as which questions were asked. Refits are
    memoised per draw (every statistic of one replicate shares one).

    Example:
        >>> gold = pd.DataFrame({"trait": "t", "question": list("aabbcc"),
        ...                      "coherence": [90, 10, 80, 20, 85, 15],
        ...                      "distinct2": [1.0, 0.3, 0.9, 0.5, 0.95, 0.2], "log_ppl": 1.0})
        >>> refits, answers = FloorRefits(gold), pd.DataFrame({"distinct2": [0.92, 0.4], "log_ppl": 1.0})
        >>> refits.units, refits.floors(np.arange(3)).distinct2_min, refits.floors(np.array([0, 0, 0])).distinct2_min
        (3, 0.9, 1.0)
        >>> refits.coherent(np.arange(3), answers).tolist(), refits.coherent(np.array([0, 0, 0]), answers).tolist()
        ([True, False], [False, False])
    """

    def __init__(self, gold: pd.DataFrame, cut: float = 50.0) -> None:
        codes, uniq = pd.factorize(gold.trait.astype(str) + "\n" + gold.question.astype(str))
        self._rows = [np.flatnonzero(codes == g) for g in range(len(uniq))]
        self._gold, self._cut = gold.reset_index(drop=True), cut
        self._memo: dict[bytes, textstats.Floors | None] = {}
        self.units = len(uniq)

    def floors(self, draw: np.ndarray) -> textstats.Floors | None:
        """Floors fitted on the gold questions ``draw`` (indices below ``units``, repeats allowed);
        None when the resample holds one coherence class only."""
        key = np.asarray(draw, np.int64).tobytes()
        if key not in self._memo:
            g = self._gold.iloc[np.concatenate([self._rows[i] for i in np.asarray(draw, int)])]
            try:
                self._memo[key] = textstats.fit_floors(g[["distinct2", "log_ppl"]], g.coherence.to_numpy(float),
                                                       self._cut)
            except ValueError:
                self._memo[key] = None
        return self._memo[key]

    def coherent(self, draw: np.ndarray, answers: pd.DataFrame) -> np.ndarray | None:
        """``answers``' coherent flags (bool, in their order) under :meth:`floors` of ``draw``."""
        f = self.floors(draw)
        return None if f is None else f.coherent(answers).to_numpy(bool)

    def share_interval(self, answers: pd.DataFrame, by: Sequence[str], *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> pd.DataFrame:
        """Per group of ``answers`` (columns ``by``), the share coherent under floors refitted on
        ``n_boot`` resamples of the gold questions: ``coherent_lo`` and ``coherent_hi``, the
        percentile interval at ``level`` (resamples that fit no floor are skipped). The answers
        are fixed: the interval is where the floor falls, not which questions were asked, so a
        rule "at least half coherent" can ask that it holds wherever the floor plausibly lies.

        Example:
            >>> gold = pd.DataFrame({"trait": "t", "question": list("aabbcc"),
            ...                      "coherence": [90, 10, 80, 20, 85, 15],
            ...                      "distinct2": [1.0, 0.3, 0.9, 0.5, 0.95, 0.2], "log_ppl": 1.0})
            >>> answers = pd.DataFrame({"cell": ["x", "x", "y"], "distinct2": [0.92, 1.0, 0.4], "log_ppl": 1.0})
            >>> FloorRefits(gold).share_interval(answers, ["cell"], n_boot=200).round(2).to_dict("index")
            {'x': {'coherent_lo': 0.5, 'coherent_hi': 1.0}, 'y': {'coherent_lo': 0.0, 'coherent_hi': 0.0}}
        """
        by = list(by)
        codes = answers.groupby(by, sort=False).ngroup().to_numpy()  # groups in order of appearance
        groups = answers[by].drop_duplicates().set_index(by).index
        counts = np.bincount(codes, minlength=len(groups)).astype(float)
        shares = [np.bincount(codes, weights=flags, minlength=len(groups)) / counts
                  for d in unc.unit_draws(self.units, n_boot, seed)[None]
                  if (flags := self.coherent(d, answers)) is not None]
        if not shares:
            raise ValueError("no resample of the gold questions holds both coherence classes: the floors' "
                             "error cannot be estimated")
        lo, hi = unc.percentile_interval(np.asarray(shares), level, axis=0)
        return pd.DataFrame({"coherent_lo": lo, "coherent_hi": hi}, index=groups)


def bootstrap_strata(n_questions: int, refits: FloorRefits | None) -> dict[str | None, int]:
    """The strata of a bootstrap over steered questions (key None) that, with ``refits``, also
    resamples the gold questions the coherence floors are refitted on (key "gold"): pass it to
    ``uncertainty.unit_draws`` or ``uncertainty.bootstrap``, so one seeded draw covers both.

    >>> bootstrap_strata(16, None)
    {None: 16}
    """
    return {None: n_questions} if refits is None else {None: n_questions, "gold": refits.units}


def question_and_gold_draws(n_questions: int, refits: FloorRefits | None, n_boot: int, seed: int = 0
                            ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``n_boot`` bootstrap replicates as (question draw, gold draw) from one seeded
    ``uncertainty.unit_draws`` over ``bootstrap_strata``; the gold draw is None without ``refits``.

    >>> [(q.shape, g) for q, g in question_and_gold_draws(4, None, n_boot=2)]
    [((4,), None), ((4,), None)]
    """
    d = unc.unit_draws(bootstrap_strata(n_questions, refits), n_boot, seed)
    return list(zip(d[None], d["gold"] if refits is not None else [None] * n_boot, strict=True))


def gold_pairs(gold: pd.DataFrame, label: str = "label", min_gap: float = 0.0) -> pd.DataFrame:
    """Every pair of gold rows answering the same question (within trait) whose ``label`` differs
    by more than ``min_gap``, oriented so ``hi`` has the higher label: columns trait, question,
    hi, lo (row positions in ``gold``) and gap."""
    rows = []
    keys = ["trait", "question"] if "trait" in gold else ["question"]
    for key, g in gold.groupby(keys, sort=False):
        idx = g.index.to_list()
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                d = float(gold.at[i, label] - gold.at[j, label])
                if abs(d) > min_gap:
                    hi, lo = (i, j) if d > 0 else (j, i)
                    k = key if isinstance(key, tuple) else (key,)
                    rows.append({"trait": k[0] if len(keys) == 2 else None, "question": k[-1],
                                 "hi": hi, "lo": lo, "gap": abs(d)})
    return pd.DataFrame(rows, columns=["trait", "question", "hi", "lo", "gap"])


def score_wins(scores: Sequence[float] | np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
    """An absolute method's win per pair: 1 when ``scores[hi] > scores[lo]``, ½ for a tie, NaN
    when either is unscored."""
    s = np.asarray(scores, dtype=float)
    hi, lo = s[pairs.hi.to_numpy(int)], s[pairs.lo.to_numpy(int)]
    return np.where(np.isnan(hi) | np.isnan(lo), np.nan, (np.sign(hi - lo) + 1) / 2)


def fit_noise(gap: Sequence[float] | np.ndarray, win: Sequence[float | None] | np.ndarray) -> float:
    """Maximum-likelihood σ of ``P(win) = Φ(gap / σ)`` (gold points); pairs with a NaN win are
    skipped. ``inf`` when the wins do not beat ½ on average (a blind judge), a small σ when every
    pair is won."""
    gap, win = np.asarray(gap, float), np.asarray(win, float)  # None (no judgement) → NaN
    ok = ~np.isnan(win)
    gap, win = gap[ok], win[ok]
    if len(gap) == 0 or np.mean(win) <= 0.5:
        return math.inf

    def nll(log_sigma: float) -> float:
        p = np.clip(norm.cdf(gap / math.exp(log_sigma)), 1e-9, 1 - 1e-9)
        return -float(np.sum(win * np.log(p) + (1 - win) * np.log(1 - p)))

    lo, hi = math.log(0.5), math.log(1e4)
    res = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded")
    return math.inf if res.x > hi - 0.01 else float(math.exp(res.x))  # flat at the bound: blind


def mde_gap(sigma: float, n: int) -> float:
    """The smallest gold gap detectable over ``n`` questions by a method with noise ``sigma``
    (80% power, two-sided 5%); ``inf`` when none is."""
    target = 0.5 + POWER_Z / (2 * math.sqrt(n))
    if not math.isfinite(sigma) or target >= 1:
        return math.inf
    return float(sigma * norm.ppf(target))


def accuracy_at(gap: np.ndarray, win: np.ndarray, min_gap: float = MIN_PAIR_GAP) -> tuple[float, int]:
    """(mean win over pairs whose gap ≥ ``min_gap``, their number)."""
    sel = (np.asarray(gap) >= min_gap) & ~np.isnan(win)
    return (float(np.mean(np.asarray(win)[sel])) if sel.any() else math.nan), int(sel.sum())
