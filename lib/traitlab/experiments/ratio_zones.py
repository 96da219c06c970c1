"""Perturbation-ratio zones: how hard can a trait vector push before the answers break?

The seed's steering rule of thumb is stated in the perturbation ratio ``coef × ‖v‖ / ‖act‖``
(the added vector's norm over the activation's): 0.5–0.8 is the sweet spot, 1.0–1.3 is where
coherence breaks down, above 1.3 the text is broken, and later layers break earlier. It also
says mean_diff vectors have ‖v‖/‖act‖ ≈ 0.12–0.15 at every layer (one coefficient works
everywhere) while the probe's ratio falls 3× from layer 10 to 16.

This module measures each of those on one trait, several layers and two methods:

1. **Vectors**: each method fitted on the trait's train pairs (mean over response tokens) at
   every layer of ``site``; the *separation ratio* of a unit direction v̂ is
   ``(μ₊ − μ₋)·v̂ / ‖act‖``, the class-mean gap along v̂ in units of the activation norm (for
   mean_diff exactly the seed's ‖v‖/‖act‖; for the probe the same gap along its own direction,
   so both methods share one scale).
2. **Norm denominators**, stated and compared: the mean ‖act‖ over ``response`` positions
   (from the last prompt token on: where steering adds the vector), over ``all`` positions,
   and over all positions but the first (``no_first``: the attention-sink token, whose
   residual norm is often many times the rest). ``norm_positions`` picks the one that sets the
   coefficients; the table shows how far the others would move every ratio.
3. **Answers** to ``n_questions`` held-out opinion questions, unsteered and steered at every
   (method, layer, ratio), greedy.
4. **Trait**: whether the steered answer shows more of the trait than the unsteered answer to
   the same question, by ``trait_method``: ``absolute`` (the judge's 0–100 logprob score of each,
   compared), ``yesno`` (its yes/no reading of each, compared) or ``pairwise`` (the judge's
   decision between the two, both orders averaged). Use
   the method judge_calibration finds best for your judge (the 0.5B judge: absolute, which sees
   its ±0.75 optimism control both ways; the 1.5B: pairwise). The *win rate* is the share of
   questions where the steered answer shows more of the trait (a tie counts ½). **Coherence** from the text: distinct-2 and the answer's log-perplexity under the
   unsteered model, each with a floor calibrated on the gold sets' coherence labels; an answer
   is *coherent* when it clears both. A condition is *broken* when fewer than
   ``coherent_share`` of its answers are coherent.
5. **Zones** per (method, layer): the *breaking ratio* (the smallest ratio whose condition is
   broken, with a bootstrap CI over questions) and the *best coherent ratio* (the highest win
   rate among unbroken conditions). The floors are fitted, so they are uncertain too: with
   ``judge_power.FloorRefits`` each bootstrap replicate also resamples the gold questions and
   refits the floors, and the breaking-ratio and layer-trend intervals cover where the floor
   falls as well as which questions were asked.

Example:
    >>> p = Params(layers=[4, 8], ratios=[0.5, 1.0])
    >>> len(p.conditions())
    8
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .. import judge_power, records, steering, textstats
from .. import uncertainty as unc
from ..activations import extract
from ..data import load_trait, opinion_questions
from ..directions import METHODS, fit_direction
from ..judge import Judge, judge_from_params, unjudgeable
from ..models import LoadedModel, describe
from ..params import ParamError, check_max_pairs, traits_folder
from ..sites import SITE_NAMES, Site, check_sites
from ..steered_eval import (
    JUDGE_READINGS,
    Condition,
    at_ratio,
    check_reading,
    generate_answers,
    judge_answers,
)

SEED = {"sweet_spot": (0.5, 0.8), "breakdown": (1.0, 1.3), "broken_above": 1.3,
        "mean_diff_separation": (0.12, 0.15), "probe_drop": 3.0, "probe_layers": (10, 16), "n_layers": 26}
"""The seed's numbers (Gemma-2-2B, 26 layers)."""

NORM_POSITIONS = ("response", "all", "no_first")


TRAIT_METHODS = (*JUDGE_READINGS, "pairwise")
"""How ``trait_wins`` compares a steered answer with the unsteered one: by the two answers'
0–100 readings (``steered_eval.JUDGE_READINGS``: the judge's score, its yes/no reading, 100 − its
score of the trait's opposite, or a probe on the local judge model's activations fitted on the
trait's gold set), or ``pairwise``, the judge's decision between the two."""


@dataclass(frozen=True)
class Params:
    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    trait: str = "optimism"
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    max_pairs_per_split: int | None = None
    """The vector's pairs: the first N train and first N val pairs of the trait (``data.load_trait``;
    for quick profiles); null: all of them."""
    questions_file: str | None = None
    """A JSONL file of ``{"id", "question", "split"}`` questions the steered answers respond to
    (``data.opinion_questions``); null: the shipped ``data/steering/optimism_questions.jsonl``."""
    site: str = "resid_pre"
    layers: list[int] = field(default_factory=lambda: [6, 10, 14, 18])
    methods: list[str] = field(default_factory=lambda: ["mean_diff", "probe"])
    ratios: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.0, 1.3, 2.0])
    norm_positions: Literal["response", "all", "no_first"] = "response"
    n_questions: int = 16
    max_new_tokens: int = 32
    coherent_share: float = 0.5
    """A condition is broken when fewer than this share of its answers are coherent."""
    trait_method: Literal["absolute", "yesno", "opposite", "probe", "pairwise"] = "absolute"
    """How a steered answer is compared with the unsteered one (``TRAIT_METHODS``; which sees most:
    the judge-calibration report). ``probe`` needs a local judge and a gold set for ``trait``."""
    gold_traits: list[str] = field(default_factory=lambda: ["optimism", "uncertainty", "refusal"])
    """Gold sets whose coherence labels calibrate the text floors (``data/judge/gold_<trait>.jsonl``)."""
    gold_dir: str | None = None
    """A folder of one's own ``gold_<trait>.jsonl`` gold sets, read in place of ours (``data/judge``)
    for the traits it holds (``judge_power.gold_path``); null: ours only."""
    judge_backend: Literal["local", "openai"] = "local"
    judge_model: str = "qwen2.5-coder-0.5b-instruct"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_offline: bool = False
    judge_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    min_mass: float = 0.25
    trait_descriptions: dict[str, str] = field(default_factory=dict)
    """One-line judge definitions of traits ``traitlab.judge.TRAIT_DESCRIPTIONS`` lacks (or to
    replace one there), e.g. ``{candour: "saying plainly what one thinks."}``."""
    trait_opposites: dict[str, list[str]] = field(default_factory=dict)
    """Opposites to read traits through (the ``opposite`` reading) beyond ``judge.TRAIT_OPPOSITES``,
    trait → [name, one-line definition], e.g. ``{cheer: [gloom, "a bleak, downcast tone."]}``."""
    batch_size: int = 16
    n_boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        check_max_pairs(self.max_pairs_per_split)
        if (why := unjudgeable([self.trait], self.trait_descriptions, self.trait_opposites)) is not None:
            raise ParamError(why)
        bad = [m for m in self.methods if m not in METHODS or m == "random"]
        if bad or not self.methods:
            raise ParamError(f"methods {bad} cannot be used; choose from {', '.join(m for m in METHODS if m != 'random')}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, attn_out, mlp_out, resid_post; got {self.site!r}")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ParamError(f"layers must be a non-empty list without repeats, got {self.layers}")
        if len(self.ratios) < 2 or any(not r > 0 for r in self.ratios) or list(self.ratios) != sorted(set(self.ratios)):
            raise ParamError(f"ratios must be ≥ 2 increasing positive numbers, got {self.ratios}")
        if self.norm_positions not in NORM_POSITIONS:
            raise ParamError(f"norm_positions must be one of {', '.join(NORM_POSITIONS)}, got {self.norm_positions!r}")
        if self.n_questions < 4:
            raise ParamError(f"n_questions must be >= 4 (the CIs resample questions), got {self.n_questions}")
        if self.trait_method not in TRAIT_METHODS:
            raise ParamError(f"trait_method must be one of {', '.join(TRAIT_METHODS)}, got {self.trait_method!r}")
        if self.trait_method != "pairwise":
            check_reading(self.trait_method, self.judge_backend, key="trait_method")
        if not 0 < self.coherent_share < 1:
            raise ParamError(f"coherent_share must be in (0, 1), got {self.coherent_share}")
        for name in ("max_new_tokens", "batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.gold_traits:
            raise ParamError("gold_traits is empty: the coherence floors need labelled answers")

    def conditions(self) -> list[tuple[str, int, float]]:
        """Every steered (method, layer, ratio)."""
        return [(m, x, r) for m in self.methods for x in self.layers for r in self.ratios]

    def check(self, n_layers: int | None = None) -> list[Site]:
        """The steered sites, after checking the model, layers, prompt sets and gold sets exist
        (before any model work)."""
        opinion_questions("test", self.n_questions, self.questions_file)  # enough questions, before any model work
        if self.trait_method != "pairwise":
            check_reading(self.trait_method, self.judge_backend, [self.trait], key="trait_method",
                          gold_dir=self.gold_dir, trait_opposites=self.trait_opposites)
        info = describe(self.model, self.revision)
        sites = [Site(self.site, x) for x in self.layers]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        load_trait(self.trait, folder=traits_folder(self.traits_dir))
        judge_power.check_floor_gold(self.gold_traits, self.gold_dir)
        if self.judge_backend == "local":
            describe(self.judge_model)
        return sites

    def judge(self) -> Judge:
        return judge_from_params(self, gold_dir=self.gold_dir, trait_opposites=self.trait_opposites)


def questions(P: Params) -> pd.DataFrame:
    return opinion_questions("test", P.n_questions, P.questions_file)[["question"]]


# ----------------------------------------------------------------------------------------
# Vectors and the norm denominators
# ----------------------------------------------------------------------------------------

def fit_vectors(P: Params, lm: LoadedModel, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Each method's unit direction at every layer of ``P.site`` (train pairs, mean over
    response tokens), and per (method, layer) the class-mean gap along it: ``gap`` (activation
    units) and ``raw_norm`` (the method's own vector norm before normalising)."""
    ds = load_trait(P.trait, max_pairs_per_split=P.max_pairs_per_split, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(lm.chat)
    sites = [Site(P.site, x) for x in range(lm.n_layers)]  # type: ignore[arg-type]
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    tr = torch.from_numpy(np.flatnonzero(np.array([p.split for p in ds.pairs]) == "train"))
    n = len(ds.pairs)
    vectors, rows = {}, []
    for s in sites:
        a_pos, a_neg = acts[s][tr].float(), acts[s][n + tr].float()
        gap_vec = a_pos.mean(0) - a_neg.mean(0)
        for m in P.methods:
            d = fit_direction(m, a_pos, a_neg, seed=P.seed, site=str(s), trait=P.trait)
            vectors[(m, s.layer)] = d.vector
            rows.append({"method": m, "layer": s.layer, "gap": float(gap_vec @ d.vector), "raw_norm": d.raw_norm})
    return vectors, pd.DataFrame(rows)


def position_norms(lm: LoadedModel, items: list[tuple[str, str]], layers: list[int], site: str = "resid_pre",
                   batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """Per layer, the mean activation norm of (question, answer) texts over each position set of
    ``steering.position_norms``: ``response``, ``all``, ``no_first`` and ``first``."""
    ex = [lm.chat.encode(q, a) for q, a in items]
    table = steering.position_norms(lm, ex, [Site(site, x) for x in layers],  # type: ignore[arg-type]
                                    batch_size=batch_size, progress=progress)
    return pd.DataFrame([{"layer": Site.parse(k).layer, **v} for k, v in table.items()]).set_index("layer")


def separation_table(gaps: pd.DataFrame, norms: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (method, layer): the separation ratio ``gap / ‖act‖`` under the chosen denominator,
    and under each other one."""
    df = gaps.join(norms, on="layer")
    for pos in NORM_POSITIONS:
        df[f"separation_{pos}"] = df.gap / df[pos]
    df["separation"] = df[f"separation_{P.norm_positions}"]
    return df[["method", "layer", "gap", "raw_norm", "separation",
               *(f"separation_{p}" for p in NORM_POSITIONS)]].set_index(["method", "layer"])


def denominator_effect(norms: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per layer: each denominator's norm and the factor by which a ratio stated with the chosen
    one would read under it (``chosen / other``): a seed zone at 0.5–0.8 under one convention
    sits at 0.5–0.8 × factor under another."""
    df = norms.copy()
    for pos in NORM_POSITIONS:
        df[f"factor_{pos}"] = df[P.norm_positions] / df[pos]
    df["first_over_rest"] = df["first"] / df["no_first"]
    return df


def steering_norms(norms: pd.DataFrame, P: Params) -> dict[str, float]:
    """The ``{site: norm}`` table ``at_ratio`` takes, from the chosen denominator."""
    return {str(Site(P.site, x)): float(norms.loc[x, P.norm_positions]) for x in P.layers}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------
# Answers, trait wins and coherence
# ----------------------------------------------------------------------------------------

def baseline_answers(P: Params, lm: LoadedModel, qs: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """The unsteered answers (method ``none``, layer −1, ratio 0)."""
    return generate_answers(lm, qs, [Condition.unsteered(method="none", layer=-1, ratio=0.0)],
                            max_new_tokens=P.max_new_tokens, batch_size=P.batch_size, progress=progress,
                            desc="unsteered")


def steered_answers(P: Params, lm: LoadedModel, vectors: dict, qs: pd.DataFrame, norms: dict[str, float],
                    progress: bool = True) -> pd.DataFrame:
    """Answers at every (method, layer, ratio): one row per (condition, question)."""
    conds = [Condition((at_ratio(Site(P.site, x), vectors[(m, x)], r, norms),), method=m, layer=x, ratio=r)  # type: ignore[arg-type]
             for m, x, r in P.conditions()]
    return generate_answers(lm, qs, conds, max_new_tokens=P.max_new_tokens, batch_size=P.batch_size,
                            progress=progress, desc="steered answers")


def trait_wins(judge: Judge, steered: pd.DataFrame, base: pd.DataFrame, trait: str,
               method: str = "absolute", progress: bool = True) -> pd.Series:
    """Per steered answer: 1 when ``method`` (``TRAIT_METHODS``) finds it shows more of ``trait``
    than the unsteered answer to the same question, 0 when less, ½ for a tie, NaN without a
    usable reading. ``pairwise`` takes the judge's decision between the two (both orders
    averaged); every other method compares the two answers' 0–100 readings
    (``steered_eval.judge_answers`` with that ``reading``)."""
    if method not in TRAIT_METHODS:
        raise ValueError(f"method must be one of {', '.join(TRAIT_METHODS)}, got {method!r}")
    ref = base.set_index("question").answer
    if method == "pairwise":
        got = judge.prefer_many([(q, a, ref[q]) for q, a in zip(steered.question, steered.answer, strict=True)],
                                trait=trait, progress=progress)
        return pd.Series([np.nan if g.win is None else g.win for g in got], index=steered.index, name="win")
    items = pd.DataFrame({"question": [*ref.index, *steered.question], "answer": [*ref, *steered.answer]})
    scores = judge_answers(judge, items, ("trait",), trait=trait, reading=method, progress=progress).trait
    pairs = pd.DataFrame({"hi": np.arange(len(ref), len(items)),            # the steered answer
                          "lo": steered.question.map({q: i for i, q in enumerate(ref.index)}).to_numpy(int)})
    return pd.Series(judge_power.score_wins(scores.to_numpy(float), pairs), index=steered.index, name="win")


# ----------------------------------------------------------------------------------------
# Zones
# ----------------------------------------------------------------------------------------

def _matrix(judged: pd.DataFrame, P: Params, value: str) -> tuple[pd.DataFrame, list[str]]:
    """``value`` as a (method, layer, ratio) × question matrix, questions in one fixed order."""
    qs = list(dict.fromkeys(judged.question))
    wide = judged.pivot_table(index=["method", "layer", "ratio"], columns="question", values=value,
                              aggfunc="mean", dropna=False)
    idx = pd.MultiIndex.from_tuples(P.conditions(), names=["method", "layer", "ratio"])
    return wide.reindex(index=idx, columns=qs), qs


def _rate(values: np.ndarray, P: Params) -> tuple[float, float, float]:
    """(mean, 95% CI) of per-question values by ``uncertainty.bootstrap_mean`` over the questions
    that have one; NaNs throughout when none has."""
    v = values[np.isfinite(values)]
    if not v.size:
        return np.nan, np.nan, np.nan
    b = unc.bootstrap_mean(v, n_boot=P.n_boot, seed=P.seed)
    return b.value, *b.ci


def zone_table(judged: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None = None) -> pd.DataFrame:
    """Per (method, layer, ratio): the trait win rate and the coherent share, each with a 95%
    bootstrap CI over questions, the mean distinct-2 and log-perplexity, and whether the
    condition is broken (coherent share below ``P.coherent_share``). With ``refits``, the
    coherent share's interval resamples the gold questions the floors are refitted on together
    with the questions (the draws ``curves`` makes), so it covers the floors' error too."""
    wins, qs = _matrix(judged, P, "win")
    coh, _ = _matrix(judged.assign(coherent=judged.coherent.astype(float)), P, "coherent")
    d2, lp = (_matrix(judged, P, col)[0].mean(axis=1) for col in ("distinct2", "log_ppl"))
    refit_ci: dict[tuple, tuple[float, float]] = {}
    if refits is not None:
        kept = _replicates(judged, P, refits, len(qs))
        for m in P.methods:
            for x in P.layers:
                S = np.array([C[(m, x)][:, d].mean(axis=1) for d, C in kept])  # [replicates, ratios]
                lo, hi = unc.percentile_interval(S, axis=0)
                refit_ci.update({(m, x, r): (float(a), float(b)) for r, a, b in zip(P.ratios, lo, hi, strict=True)})
    rows = []
    for key in wins.index:
        w, c = wins.loc[key].to_numpy(float), coh.loc[key].to_numpy(float)
        win, win_lo, win_hi = _rate(w, P)
        share, coh_lo, coh_hi = _rate(c, P)
        coh_lo, coh_hi = refit_ci.get(key, (coh_lo, coh_hi))
        rows.append({"method": key[0], "layer": key[1], "ratio": key[2], "win_rate": win, "win_lo": win_lo,
                     "win_hi": win_hi, "coherent": share, "coh_lo": coh_lo, "coh_hi": coh_hi,
                     "distinct2": float(d2[key]), "log_ppl": float(lp[key]),
                     "broken": bool(share < P.coherent_share), "n": int(np.isfinite(w).sum())})
    return pd.DataFrame(rows).set_index(["method", "layer", "ratio"])


def _breaking(share: np.ndarray, ratios: np.ndarray, threshold: float) -> float:
    """The smallest ratio whose coherent share is below ``threshold`` (inf: none breaks)."""
    below = np.flatnonzero(share < threshold)
    return float(ratios[below[0]]) if below.size else math.inf


def _best(win: np.ndarray, share: np.ndarray, ratios: np.ndarray, threshold: float) -> float:
    """The ratio with the highest win rate among unbroken conditions (NaN: none)."""
    ok = (share >= threshold) & np.isfinite(win)
    return float(ratios[ok][np.argmax(win[ok])]) if ok.any() else math.nan


def _grid_percentile(values, q: float) -> float:
    """A percentile of grid values that may include ``inf`` (never breaks): an order statistic
    (no interpolation between grid points, none between a ratio and infinity)."""
    return float(np.percentile(np.asarray(values, float), q, method="inverted_cdf"))


def _coherent_matrices(judged: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None):
    """``of(draw)``: per (method, layer), the ratio × question coherent matrix (as ``_matrix``
    pivots it) as judged by the fitted floors (``draw`` None) or by floors refitted on the gold
    questions ``draw`` (None when that resample cannot be fitted); memoised per draw. Each
    answer's grid cell is located once, so a replicate costs one weighted count, not a pivot."""
    conds = pd.MultiIndex.from_tuples(P.conditions())
    qs = pd.Index(list(dict.fromkeys(judged.question)))
    cell = conds.get_indexer(pd.MultiIndex.from_frame(judged[["method", "layer", "ratio"]]))
    steered = cell >= 0  # the unsteered answers have no cell
    code = cell[steered] * len(qs) + qs.get_indexer(judged.question[steered])
    count = np.bincount(code, minlength=len(conds) * len(qs))
    shape = (len(P.methods), len(P.layers), len(P.ratios), len(qs))  # P.conditions' nesting
    memo: dict[bytes, dict[tuple[str, int], np.ndarray] | None] = {}

    def of(draw: np.ndarray | None) -> dict[tuple[str, int], np.ndarray] | None:
        key = b"" if draw is None else np.asarray(draw, np.int64).tobytes()
        if key not in memo:
            flags = judged.coherent.to_numpy(bool) if draw is None else refits.coherent(draw, judged)
            memo[key] = None
            if flags is not None:
                with np.errstate(invalid="ignore"):  # a cell without an answer: NaN, as the pivot gives
                    M = (np.bincount(code, weights=flags[steered].astype(float), minlength=count.size) / count
                         ).reshape(shape)
                memo[key] = {(m, x): M[i, j] for i, m in enumerate(P.methods) for j, x in enumerate(P.layers)}
        return memo[key]
    return of


def _replicates(judged: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None, n_questions: int
                ) -> list[tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]]:
    """The bootstrap's replicates that judge coherence (``curves`` and ``zone_table`` share
    them): each replicate's resampled question indices and its coherent matrices (by the floors
    refitted on its gold draw, with ``refits``; else by the fitted floors), dropping the
    replicates whose gold draw fits no floor."""
    coh_of = _coherent_matrices(judged, P, refits)
    return [(d, C) for d, g in judge_power.question_and_gold_draws(n_questions, refits, P.n_boot, P.seed)
            if (C := coh_of(g)) is not None]


def curves(judged: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None = None) -> pd.DataFrame:
    """Per (method, layer): the breaking ratio and the best coherent ratio, each with a 95%
    bootstrap interval over questions (percentiles of the resampled grid values), the
    unsteered answers' coherent share and the peak win rate among unbroken conditions. With
    ``refits`` (``judge_power.FloorRefits`` of ``judged``), each replicate also refits the
    coherence floors on resampled gold questions, so the intervals cover the floors' error too."""
    wins, qs = _matrix(judged, P, "win")
    fitted = _coherent_matrices(judged, P, None)(None)
    base = judged[judged.method == "none"].set_index("question").coherent.reindex(qs).astype(float).to_numpy()
    kept = _replicates(judged, P, refits, len(qs))
    ratios = np.asarray(P.ratios, float)
    rows = []
    for m in P.methods:
        for x in P.layers:
            W, C = wins.loc[(m, x)].to_numpy(float), fitted[(m, x)]  # [ratios, questions]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a ratio with no readable answer: NaN
                w, c = np.nanmean(W, axis=1), C.mean(axis=1)
                br = [_breaking(Cb[(m, x)][:, d].mean(axis=1), ratios, P.coherent_share) for d, Cb in kept]
                be = [_best(np.nanmean(W[:, d], axis=1), Cb[(m, x)][:, d].mean(axis=1), ratios, P.coherent_share)
                      for d, Cb in kept]
            ok = c >= P.coherent_share
            be_ok = np.asarray(be, float)[~np.isnan(be)]
            rows.append({"method": m, "layer": x, "breaking_ratio": _breaking(c, ratios, P.coherent_share),
                         "breaking_lo": _grid_percentile(br, 2.5), "breaking_hi": _grid_percentile(br, 97.5),
                         "best_ratio": _best(w, c, ratios, P.coherent_share),
                         "best_lo": _grid_percentile(be_ok, 2.5) if be_ok.size else np.nan,
                         "best_hi": _grid_percentile(be_ok, 97.5) if be_ok.size else np.nan,
                         "peak_win_rate": float(np.nanmax(w[ok])) if (ok & np.isfinite(w)).any() else np.nan,
                         "unsteered_coherent": float(base.mean())})
    return pd.DataFrame(rows).set_index(["method", "layer"])


def layer_trend(judged: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None = None) -> pd.DataFrame:
    """Per method: Spearman ρ between layer and breaking ratio (a curve that never breaks counts
    as breaking above the grid), with a 95% bootstrap CI over questions (and, with ``refits``,
    over the gold questions the coherence floors are refitted on, as in ``curves``). Negative:
    later layers break earlier."""
    from scipy import stats

    coh_of = _coherent_matrices(judged, P, refits)
    qs = list(dict.fromkeys(judged.question))
    ratios = np.r_[np.asarray(P.ratios, float), 2 * P.ratios[-1]]  # "never" ranks above the grid
    rows = []
    for m in P.methods:
        def rho(idx, m=m) -> float:
            coh = coh_of(idx.get("gold"))
            if coh is None:
                return math.nan
            Cs = [coh[(m, x)] for x in P.layers]
            br = [min(_breaking(C[:, idx[None]].mean(axis=1), ratios[:-1], P.coherent_share), ratios[-1]) for C in Cs]
            if len(set(br)) < 2:
                return 0.0  # every layer breaks at the same grid ratio: no trend
            return float(stats.spearmanr(P.layers, br)[0])

        b = unc.bootstrap(rho, judge_power.bootstrap_strata(len(qs), refits), n_boot=P.n_boot, seed=P.seed)
        rows.append({"method": m, "rho": b.value, "ci_lo": b.ci[0], "ci_hi": b.ci[1], "se": b.se})
    return pd.DataFrame(rows).set_index("method")


# ----------------------------------------------------------------------------------------
# Verdicts
# ----------------------------------------------------------------------------------------

def _within(x: float, lo: float, hi: float) -> bool:
    return bool(np.isfinite(x) and lo <= x <= hi)


def _depth_layer(layer: int, n_layers: int) -> int:
    """The layer at the same relative depth as the seed's ``layer`` (of its 26)."""
    return int(round(layer / SEED["n_layers"] * n_layers))


def _separation_stats(sep: pd.DataFrame, P: Params, n_layers: int) -> dict:
    """The numbers the separation claims and quantities share: mean_diff's ratio per steered layer
    and its max/min spread; the probe's layers at the seed's relative depths and its drop."""
    out: dict = {}
    if "mean_diff" in P.methods:
        s = sep.loc["mean_diff"].separation.reindex(P.layers)
        out["mean_diff"] = (s, float(s.max() / s.min()) if (s > 0).all() else math.inf)
    if "probe" in P.methods:
        a, b = (_depth_layer(x, n_layers) for x in SEED["probe_layers"])
        s = sep.loc["probe"].separation
        out["probe"] = (a, b, s.loc[a], s.loc[b], float(s.loc[a] / s.loc[b]) if s.loc[b] > 0 else math.inf)
    return out


def separation_claims(sep: pd.DataFrame, P: Params, n_layers: int) -> list[records.Claim]:
    """mean_diff's separation ratio within 0.12–0.15 at every steered layer; the probe's falling
    3× between the layers at the seed's relative depths of 10 and 16."""
    out = []
    lo, hi = SEED["mean_diff_separation"]
    st = _separation_stats(sep, P, n_layers)
    if "mean_diff" in st:
        s, spread = st["mean_diff"]
        inside = sum(_within(round(v, 2), lo, hi) for v in s)
        holds = spread <= hi / lo
        out.append(records.Claim(
            "mean_diff_separation_stable", "mean_diff's ‖v‖/‖act‖ is stable across layers at 0.12–0.15 (one coefficient "
            "works everywhere)", seed="0.12–0.15 (max/min ≤ 1.25×)", ours=", ".join(f"L{x} {v:.2f}" for x, v in s.items())
            + f" (max/min {spread:.1f}×; {inside}/{len(s)} layers at 0.12–0.15)",
            verdict="holds" if holds else "not held",
            reason=(f"the spread across layers is within the seed's range's {hi / lo:.2f}×" if holds else
                    f"it varies {spread:.1f}× across layers against the seed's at most {hi / lo:.2f}× (a ratio of "
                    "the model's own activations on fixed text: float noise only)"),
            quantity="separation.mean_diff.max_over_min"))
    if "probe" in st:
        a, b, at_a, at_b, drop = st["probe"]
        if a == b:
            out.append(records.Claim(
                "probe_separation_drops", "The probe's ‖v‖/‖act‖ falls ~3× from the seed's layer 10 to 16",
                seed="3× drop", ours=f"one layer (L{a}) at both relative depths", verdict="not comparable",
                reason=f"a {n_layers}-layer model has no two layers at the seed's depths 10 and 16 of 26",
                quantity="separation.probe.drop"))
            return out
        holds = drop >= 2.0
        out.append(records.Claim(
            "probe_separation_drops", f"The probe's ‖v‖/‖act‖ falls ~3× from the seed's layer 10 to 16 (here L{a} → L{b}, "
            "same relative depth)", seed="3× drop", ours=f"{at_a:.3f} → {at_b:.3f} ({drop:.1f}×)",
            verdict="holds" if holds else "not held",
            reason="falls at least 2×" if holds else (f"{'rises' if drop < 1 else 'falls'} {max(drop, 1 / drop):.1f}×, "
                                                      "not the seed's 3× fall (float noise only)"),
            quantity="separation.probe.drop"))
    return out


def zone_claims(cur: pd.DataFrame, trend: pd.DataFrame, zones: pd.DataFrame, P: Params,
                control_seen: bool) -> list[records.Claim]:
    """The seed's three zones and 'later layers break earlier', judged over the (method, layer)
    curves. ``control_seen``: some condition's win-rate CI excludes ½ (the judge sees this
    steering at all); without it, verdicts about the trait's sweet spot are inconclusive."""
    lo, hi = SEED["sweet_spot"]
    best = cur.dropna(subset=["best_ratio"])
    n_sweet = int(sum(_within(v, lo, hi) for v in best.best_ratio))
    n_against = int(((best.best_hi < lo) | (best.best_lo > hi)).sum())  # the CI misses the band
    holds = bool(len(best) and n_sweet > len(best) / 2)
    v1, why1 = records.decide(holds=holds, positive_control=control_seen and n_against > len(best) / 2)
    if v1 == "not held":
        why1 = f"{n_against}/{len(best)} curves' best-ratio CIs lie outside 0.5–0.8 while the judge sees the steering"
    elif v1 == "inconclusive":
        why1 = ("no condition's win rate has a CI above ½: the judge saw no trait effect to locate" if not control_seen
                else f"{n_sweet}/{len(best)} curves peak in 0.5–0.8 and {n_against} have a best-ratio CI outside it; "
                     "the rest are undecided (win rates of neighbouring ratios overlap at this n)")
    b_lo, b_hi = SEED["breakdown"]
    brk = cur.breaking_ratio
    n_break = int(sum(_within(v, b_lo, b_hi) for v in brk))
    n_never = int(np.isinf(brk).sum())
    above = float(P.ratios[-1]) > SEED["broken_above"]
    broken_top = zones.xs(P.ratios[-1], level="ratio").broken if above else pd.Series(dtype=bool)
    claims = [
        records.Claim("sweet_spot", "The best coherent ratio lies in 0.5–0.8 (majority of method × layer curves)",
                      seed="0.5–0.8", ours=f"{n_sweet}/{len(best)} curves inside, {n_against} outside by CI; "
                      + ", ".join(f"{m} L{x} {r.best_ratio:g} [{r.best_lo:g}, {r.best_hi:g}]" for (m, x), r in best.iterrows()),
                      verdict=v1, reason=why1, quantity="sweet_spot_share"),
        records.Claim("breakdown_1_to_1_3", "Coherence breaks at a ratio of 1.0–1.3 (majority of curves)",
                      seed="1.0–1.3", ours=f"{n_break}/{len(brk)} curves break in 1.0–1.3, {n_never} never break; "
                      + ", ".join(f"{m} L{x} {v:g}" for (m, x), v in brk.items()),
                      verdict="holds" if n_break > len(brk) / 2 else "not held",
                      reason=("most curves break inside the seed's band" if n_break > len(brk) / 2 else
                              "most curves break outside it; the coherence rule is calibrated on labelled answers "
                              "(its balanced accuracy is in the record)"),
                      quantity="breakdown_share"),
        records.Claim("broken_above_1_3", "Above a ratio of 1.3 the answers are broken (every curve, top ratio)",
                      seed="> 1.3 broken", ours=(f"{int(broken_top.sum())}/{len(broken_top)} curves broken at "
                                                 f"{P.ratios[-1]:g}" if above else "grid stops at or below 1.3"),
                      verdict=("not comparable" if not above else "holds" if bool(broken_top.all()) else "not held"),
                      reason=("the ratio grid does not reach above 1.3" if not above else
                              "every curve broken at the top ratio" if bool(broken_top.all()) else
                              "some curves still coherent above 1.3"),
                      quantity="broken_at_top_share"),
    ]
    for m, r in trend.iterrows():
        holds = bool(r.ci_hi < 0)
        v, why = records.decide(holds=holds, positive_control=bool(r.ci_lo > 0) or None)
        if v == "inconclusive":
            why = "the CI of ρ(layer, breaking ratio) spans 0: with this grid and n the trend is not resolved"
        elif v == "not held":
            why = "later layers break later here (ρ's CI above 0)"
        claims.append(records.Claim(f"later_layers_break_earlier.{m}", f"Later layers break at lower ratios ({m})",
                                    seed="later layers break earlier", ours=f"ρ = {r.rho:+.2f} [{r.ci_lo:+.2f}, {r.ci_hi:+.2f}]",
                                    verdict=v, reason=why, quantity=f"trend.{m}.rho"))
    return claims


def control_seen(zones: pd.DataFrame) -> bool:
    """Whether any condition's win-rate CI lies above ½: the judge sees the steering."""
    return bool((zones.win_lo > 0.5).any())


def record(P: Params, sep: pd.DataFrame, den: pd.DataFrame, floors: textstats.Floors, zones: pd.DataFrame,
           cur: pd.DataFrame, trend: pd.DataFrame, n_layers: int) -> records.ResultRecord:
    """The report's result record.

    Tolerance rules: counts exact; separation ratios and norm factors 2% of their value (fixed
    text through one forward pass: float noise only); win rates and coherent shares one question
    of ``n_questions`` (the answers are greedy text, which can flip a token on another CPU);
    shares of curves one curve; ρ 3 bootstrap SEs; the floors' balanced accuracy two gold items.
    """
    n_q = P.n_questions
    qs: list[records.Quantity] = [records.exact("n_questions", n_q, unit="questions"),
                                  records.exact("n_conditions", len(P.conditions()), unit="conditions")]
    for (m, x), r in sep.iterrows():
        qs.append(records.estimate(f"separation.{m}.L{x}", float(r.separation), se=abs(float(r.separation)) * 0.01,
                                   unit="ratio", k=2))
    st = _separation_stats(sep, P, n_layers)
    if "mean_diff" in st:
        spread = st["mean_diff"][1]
        qs.append(records.estimate("separation.mean_diff.max_over_min", spread, se=0.01 * spread, unit="×", k=2))
    if "probe" in st:
        drop = st["probe"][4]
        qs.append(records.estimate("separation.probe.drop", drop, se=0.01 * abs(drop), unit="×", k=2))
    for x, r in den.iterrows():
        qs.append(records.estimate(f"norms.L{x}.first_over_rest", float(r.first_over_rest),
                                   se=0.01 * float(r.first_over_rest), unit="×", k=2))
    qs.append(records.rate("floors.balanced_accuracy", floors.balanced_accuracy, n=floors.n, items=2))
    for (m, x, r), z in zones.iterrows():
        qs.append(records.rate(f"zones.{m}.L{x}.r{r:g}.win_rate", float(z.win_rate), n=n_q,
                               ci=(float(z.win_lo), float(z.win_hi))))
        qs.append(records.rate(f"zones.{m}.L{x}.r{r:g}.coherent", float(z.coherent), n=n_q,
                               ci=(float(z.coh_lo), float(z.coh_hi))))
    n_c = len(cur)
    lo, hi = SEED["sweet_spot"]
    b_lo, b_hi = SEED["breakdown"]
    qs.append(records.rate("sweet_spot_share", float(np.mean([_within(v, lo, hi) for v in cur.best_ratio])), n=n_c))
    qs.append(records.rate("breakdown_share", float(np.mean([_within(v, b_lo, b_hi) for v in cur.breaking_ratio])),
                           n=n_c))
    top = zones.xs(P.ratios[-1], level="ratio").broken
    qs.append(records.rate("broken_at_top_share", float(top.mean()), n=len(top)))
    for m, r in trend.iterrows():
        qs.append(records.estimate(f"trend.{m}.rho", float(r.rho), se=max(float(r.se), 0.05), k=3,
                                   ci=(float(r.ci_lo), float(r.ci_hi))))
    claims = (*separation_claims(sep, P, n_layers),
              *zone_claims(cur, trend, zones, P, control_seen(zones)))
    return records.ResultRecord("ratio_zones", model=P.model, quantities=tuple(qs), claims=claims,
                                tables={"zones": zones, "curves": cur, "separation": sep, "norms": den,
                                        "trend": trend}, params=asdict(P))


def conclusions(sep: pd.DataFrame, den: pd.DataFrame, floors: textstats.Floors, zones: pd.DataFrame, cur: pd.DataFrame,
                trend: pd.DataFrame, P: Params) -> list[str]:
    """Plain-language findings, each number from the tables above."""
    out = [f"Coherence rule (distinct-2 ≥ {floors.distinct2_min:.2f} and log-perplexity ≤ {floors.log_ppl_max:.2f}): "
           f"balanced accuracy {100 * floors.balanced_accuracy:.0f}% on {floors.n} gold answers labelled for coherence."]
    seen = zones[zones.win_lo > 0.5]
    if len(seen):
        top = zones.loc[zones.win_rate.idxmax()]
        m, x, r = zones.win_rate.idxmax()
        out.append(f"The judge sees the steering in {len(seen)}/{len(zones)} conditions (win-rate CI above ½); "
                   f"the strongest: {m} L{x} at ratio {r:g}, win rate {100 * top.win_rate:.0f}% "
                   f"[{100 * top.win_lo:.0f}%, {100 * top.win_hi:.0f}%], {100 * top.coherent:.0f}% coherent.")
    else:
        out.append("No condition's win rate has a CI above ½: the judge does not see this steering, so the "
                   "sweet-spot claim is inconclusive.")
    for (m, x), c in cur.iterrows():
        br = "never (up to the top ratio)" if math.isinf(c.breaking_ratio) else f"at {c.breaking_ratio:g}"
        out.append(f"{m} L{x}: breaks {br} [{c.breaking_lo:g}, {c.breaking_hi:g}]; best coherent ratio "
                   f"{c.best_ratio:g} (win rate {100 * c.peak_win_rate:.0f}%).")
    for m, r in trend.iterrows():
        out.append(f"Layer vs breaking ratio ({m}): Spearman ρ {r.rho:+.2f} [{r.ci_lo:+.2f}, {r.ci_hi:+.2f}] "
                   "(negative: later layers break earlier).")
    steered = den.loc[P.layers]
    others = ", ".join(f"{pos} {steered[f'factor_{pos}'].min():.2f}–{steered[f'factor_{pos}'].max():.2f}×"
                       for pos in NORM_POSITIONS if pos != P.norm_positions)
    out.append(f"Denominator: ratios here divide by the mean norm over {P.norm_positions} positions. At the steered "
               f"layers the first (attention-sink) token's norm is {steered.first_over_rest.min():.0f}–"
               f"{steered.first_over_rest.max():.0f}× the rest, so the same coefficients, stated against the other "
               f"denominators, read as: {others} of the ratios here. A zone quoted without its denominator can "
               "sit anywhere in that range.")
    if "mean_diff" in P.methods:
        s = sep.loc["mean_diff"].separation.reindex(P.layers)
        out.append("mean_diff separation ‖μ₊ − μ₋‖/‖act‖: " + ", ".join(f"L{x} {v:.3f}" for x, v in s.items())
                   + " (seed: 0.12–0.15 everywhere).")
    return out
