"""Do extraction metrics predict steering success?

For every (trait, layer, method) cell: the extraction metrics of the fitted direction on the
held-out pairs (accuracy, Cohen's d effect size, AUROC; ``traitlab.metrics``), and the steering
delta it causes: the mean trait reading (``Params.reading``: a probe on the judge model's
activations by default, or the judge's score) over held-out questions when the unit direction
is added at ``site`` (response positions, coefficient = ``ratio`` × the site's mean activation
norm), minus the unsteered answers' mean trait score. Across cells we correlate each metric
with the delta (Pearson and Spearman over cells, pooled and within each trait; bootstrap CIs
over questions, resampled within trait, which is what the deltas are measured on), and compare
the best extraction layer with the best steering layer per trait.

Each cell's delta carries a t-interval over questions (a cell "steers the wrong way" only when
it lies below 0) and the share of its answers that are coherent by their text (distinct-2 and
perplexity floors fitted on the gold sets). Before any of this, the reader's positive control per
trait: the model answers the same questions under system prompts asking for the trait and for
its opposite (``data.system_prompts``). A small model often ignores such instructions, so the
steering itself is a second control (``steering_control``): a cell whose delta's interval lies above
0 while at least ``CONTROL_COHERENT`` of its answers stay coherent (wherever the floors, refitted on
resampled gold questions, plausibly fall) shows that the reader sees a change this model's vectors
make in its own, still readable, answers. A trait that passes neither
control has deltas that may be reader noise, and its nulls are inconclusive.

Example:
    >>> len(Params(traits=["optimism"], layers=[4, 8], methods=["probe"]).cells())
    2
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .. import records
from .. import uncertainty as unc
from ..activations import extract
from ..data import load_trait, opinion_questions, system_prompts
from ..directions import METHODS, fit_direction
from ..judge import Judge, judge_from_params, unjudgeable
from ..judge_power import FloorRefits, check_floor_gold
from ..metrics import evaluate
from ..models import LoadedModel, describe
from ..params import ParamError, check_max_pairs, traits_folder
from ..sites import SITE_NAMES, Site, check_sites
from ..steered_eval import (
    ALIKE,
    Condition,
    at_ratio,
    change_quantities,
    change_text,
    check_reading,
    generate_answers,
    instructed_answers,
    judge_answers,
    paired_effects,
    polarity_effects,
    unit_matrix,
)
from ..steering import activation_norms

SEED = {"effect_size_r": 0.898, "accuracy_r": 0.705, "best_extraction_layer": 13, "best_steering_layer": 8,
        "late_layer_note": "a late layer had 95% accuracy but a negative steering delta"}
"""The seed's numbers (Gemma-2-2B, its traits and judge)."""

METRICS = ("val_accuracy", "effect_size", "auroc")

CONTROL_COHERENT = 0.5
"""A steering-control cell needs at least this share of answers coherent by the text floors, so
that its delta is a reading of answers, not of broken text (the reader can score word salad
anywhere)."""


@dataclass(frozen=True)
class Params:
    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    traits: list[str] = field(default_factory=lambda: ["optimism", "formality", "humor"])
    layers: list[int] = field(default_factory=lambda: [4, 8, 12, 16, 20, 23])
    methods: list[str] = field(default_factory=lambda: ["probe", "mean_diff"])
    site: str = "resid_pre"
    ratio: float = 0.75
    n_questions: int = 16
    max_new_tokens: int = 40
    late_frac: float = 0.75
    """Layers at or past this fraction of the depth are "late" (the seed's trap was at L25 of 26)."""
    n_system_prompts: int = 5
    """Paraphrased system prompts per polarity in the judge's positive control (0: no control)."""
    gold_traits: list[str] = field(default_factory=lambda: ["optimism", "uncertainty", "refusal"])
    """Gold sets whose coherence labels fit the text-coherence floors."""
    gold_dir: str | None = None
    """A folder of one's own ``gold_<trait>.jsonl`` gold sets, read in place of ours (``data/judge``)
    for the traits it holds (``judge_power.gold_path``); null: ours only."""
    reading: Literal["absolute", "yesno", "opposite", "probe"] = "probe"
    """How each answer's trait is read (``steered_eval.JUDGE_READINGS``): ``probe`` (the default)
    reads the local judge model's activations with a probe fitted on each trait's gold answers —
    the judge-calibration report finds the 0.5B judge's own score blind to formality and humor
    and its activations reading them; ``absolute`` is the seed's logprob judge score."""
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
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    max_pairs_per_split: int | None = None
    """The vector's pairs: the first N train and first N val pairs of the trait (``data.load_trait``;
    for quick profiles); null: all of them."""
    questions_file: str | None = None
    """A JSONL file of ``{"id", "question", "split"}`` questions the steered answers respond to
    (``data.opinion_questions``); null: the shipped ``data/steering/optimism_questions.jsonl``."""
    instructions_file: str | None = None
    """A JSONL file of ``{"trait", "positive": [...], "negative": [...]}`` system prompts per trait
    (``data.system_prompts``); null: the shipped ``data/elicitation/instructions.jsonl``."""

    def __post_init__(self) -> None:
        check_max_pairs(self.max_pairs_per_split)
        if not self.traits:
            raise ParamError("traits is empty; name at least one trait")
        if (why := unjudgeable(self.traits, self.trait_descriptions, self.trait_opposites)) is not None:
            raise ParamError(why)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ParamError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, attn_out, mlp_out, resid_post; got {self.site!r}")
        if not self.layers:
            raise ParamError("layers is empty")
        if self.ratio <= 0:
            raise ParamError(f"ratio must be > 0, got {self.ratio}")
        if self.n_questions < 2:
            raise ParamError(f"n_questions must be >= 2, got {self.n_questions}")
        if not 0 < self.late_frac <= 1:
            raise ParamError(f"late_frac must be in (0, 1], got {self.late_frac}")
        if self.n_system_prompts < 0:
            raise ParamError(f"n_system_prompts must be >= 0, got {self.n_system_prompts}")
        for name in ("max_new_tokens", "batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_reading(self.reading, self.judge_backend)
        if self.judge_dtype not in ("auto", "float32", "bfloat16"):
            raise ParamError(f"judge_dtype must be 'auto', 'float32' or 'bfloat16', got {self.judge_dtype!r}")

    def cells(self) -> list[tuple[str, int, str]]:
        return [(t, x, m) for t in self.traits for x in self.layers for m in self.methods]

    def check(self) -> list[Site]:
        opinion_questions("test", self.n_questions, self.questions_file)  # enough questions, before any model work
        if self.n_system_prompts:
            system_prompts(self.instructions_file)  # readable, before any model work
        check_reading(self.reading, self.judge_backend, self.traits, gold_dir=self.gold_dir,
                      trait_opposites=self.trait_opposites)
        info = describe(self.model, self.revision)
        sites = [Site(self.site, x) for x in self.layers]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        for t in self.traits:
            load_trait(t, folder=traits_folder(self.traits_dir))
        check_floor_gold(self.gold_traits, self.gold_dir)
        if self.judge_backend == "local":
            describe(self.judge_model)
        return sites

    def judge(self) -> Judge:
        return judge_from_params(self, gold_dir=self.gold_dir, trait_opposites=self.trait_opposites)


def fit_cells(P: Params, lm: LoadedModel, sites: list[Site], progress: bool = True
              ) -> tuple[pd.DataFrame, dict[tuple[str, int, str], torch.Tensor]]:
    """Extraction metrics per cell (fit on train pairs, scored on val pairs) and the unit vectors."""
    rows, vectors = [], {}
    for trait in P.traits:
        ds = load_trait(trait, max_pairs_per_split=P.max_pairs_per_split, folder=traits_folder(P.traits_dir))
        pos, neg = ds.encode(lm.chat)
        acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
        split = np.array([p.split for p in ds.pairs])
        n = len(ds.pairs)
        tr, va = torch.from_numpy(np.flatnonzero(split == "train")), torch.from_numpy(np.flatnonzero(split == "val"))
        for s in sites:
            for method in P.methods:
                d = fit_direction(method, acts[s][tr], acts[s][n + tr], seed=P.seed, site=str(s), trait=trait)
                vectors[(trait, s.layer, method)] = d.vector
                rows.append({"trait": trait, "layer": s.layer, "method": method,
                             **evaluate(d.vector, acts[s][va], acts[s][n + va]).asdict()})
    return pd.DataFrame(rows), vectors


def steer_cells(P: Params, lm: LoadedModel, vectors: dict, questions: pd.DataFrame,
                progress: bool = True) -> pd.DataFrame:
    """Answers: unsteered (generated once, labelled per trait as method ``baseline``, layer −1),
    then one steered set per cell; one row per (cell, question)."""
    ex = [lm.chat.encode(q) for q in questions.question]
    sites = [Site(P.site, x) for x in P.layers]  # type: ignore[arg-type]
    norms = activation_norms(lm, ex, sites, batch_size=P.batch_size)
    conds = [Condition.unsteered(trait=t, layer=-1, method="baseline") for t in P.traits]
    conds += [Condition((at_ratio(Site(P.site, layer), vectors[(trait, layer, method)], P.ratio, norms),),  # type: ignore[arg-type]
                        trait=trait, layer=layer, method=method)
              for trait, layer, method in P.cells()]
    return generate_answers(lm, questions[["question"]], conds, max_new_tokens=P.max_new_tokens,
                            batch_size=P.batch_size, progress=progress)


def judge_cells(judge: Judge, answers: pd.DataFrame, reading: str = "absolute", progress: bool = True
                ) -> pd.DataFrame:
    """Add each answer's trait (the cell's own trait) as ``score``, read by ``reading``
    (``steered_eval.judge_answers``)."""
    return judge_answers(judge, answers, {"trait": "score"}, reading=reading, progress=progress)


def instructed_control(P: Params, lm: LoadedModel, judge: Judge, questions: pd.DataFrame,
                       progress: bool = True) -> pd.DataFrame:
    """The judge's positive control: per trait with system prompts, the answers to ``questions``
    under the first ``n_system_prompts`` paraphrases asking for the trait and for its opposite
    (question i under paraphrase i mod n), each judged for that trait (``score``). Empty when
    ``n_system_prompts`` is 0 or no trait has system prompts. Read by ``P.reading``, as the cells."""
    known = system_prompts(P.instructions_file) if P.n_system_prompts else {}
    parts = []
    for t in P.traits:
        if t not in known:
            continue
        sysp = {pol: ps[:P.n_system_prompts] for pol, ps in known[t].items()}
        a = instructed_answers(lm, questions[["question"]], sysp, max_new_tokens=P.max_new_tokens,
                               batch_size=P.batch_size, progress=progress, desc=f"instructed {t}")
        parts.append(a.assign(trait=t))
    if not parts:
        return pd.DataFrame(columns=["question", "polarity", "prompt", "answer", "trait", "score"])
    # one reading over every trait's answers (each row read for its own trait): one probe fit, one pass
    return judge_answers(judge, pd.concat(parts, ignore_index=True), {"trait": "score"}, reading=P.reading,
                         progress=progress)


def control_effects(instructed: pd.DataFrame, traits: list[str]) -> pd.DataFrame:
    """Per trait: the judged difference between the positive- and negative-instructed answers
    (``steered_eval.polarity_effects``); a trait without a control has NaNs and ``differ`` False."""
    if not len(instructed):
        return pd.DataFrame({"delta": np.nan, "se": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "mde": np.nan,
                             "n": 0, "differ": False}, index=pd.Index(traits, name="trait"))
    e = polarity_effects(instructed).reindex(traits)
    return e.assign(differ=e.differ.fillna(False).astype(bool))


def deltas(metrics: pd.DataFrame, judged: pd.DataFrame, refits: FloorRefits | None = None, *,
           n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per cell: steered mean trait score, the trait's unsteered mean over the same questions, and
    the paired delta with its SE, 95% t-interval and minimum detectable effect over questions;
    ``wrong_way`` / ``steers`` when the interval lies below / above 0; and, when the answers carry
    a ``coherent`` column, the share of the cell's answers that are coherent. With ``refits``
    (``judge_power.FloorRefits`` of the gold rows the floors were fitted on), that share's 95%
    interval over ``n_boot`` floor refits: ``coherent_lo``, ``coherent_hi``. Joined to the metrics."""
    eff = paired_effects(judged, by=["trait", "layer", "method"], baseline=judged.method == "baseline",
                         within=["trait"])
    df = eff[["steered", "baseline", "delta", "se", "ci_lo", "ci_hi", "n"]].rename(columns={"se": "delta_se"})
    df["mde"] = [unc.mde(se, n) for se, n in zip(df.delta_se, df.n, strict=True)]
    df["wrong_way"] = (df.n > 1) & (df.ci_hi < 0)
    df["steers"] = (df.n > 1) & (df.ci_lo > 0)
    if "coherent" in judged.columns:
        steered = judged[judged.method != "baseline"]
        df["coherent"] = steered.groupby(["trait", "layer", "method"]).coherent.mean().reindex(df.index)
        if refits is not None:
            iv = refits.share_interval(steered, ["trait", "layer", "method"], n_boot=n_boot, seed=seed)
            df = df.join(iv.reindex(df.index))
    return metrics.merge(df.reset_index(), on=["trait", "layer", "method"])


def steering_control(cells: pd.DataFrame, traits: list[str]) -> pd.DataFrame:
    """Per trait, the reader's positive control from steering: ``cells`` (of the trait), ``seen``
    (how many of them steer, their delta's 95% interval above 0, with at least ``CONTROL_COHERENT``
    of their answers coherent), the clearest such cell (the highest interval's lower end) and
    ``passes`` (any seen). Where the cells carry ``coherent_lo`` (``deltas`` with floor refits), a
    cell must stay at least ``CONTROL_COHERENT`` coherent across the floors' 95% interval, so the
    control does not hinge on where the floor fell; ``seen_at_fit`` then counts the cells that
    qualify by the fitted floors alone. Without a ``coherent`` column no cell qualifies: a delta
    read from broken text proves nothing.

    >>> c = pd.DataFrame({"trait": ["t", "t"], "layer": [4, 8], "method": ["probe"] * 2, "delta": [9.0, 20.0],
    ...                   "ci_lo": [2.0, 5.0], "ci_hi": [16.0, 35.0], "steers": [True, True], "coherent": [0.75, 0.25]})
    >>> r = steering_control(c, ["t"]).loc["t"]
    >>> int(r.cells), int(r.seen), r.best, bool(r.passes)
    (2, 1, 'L4 probe +9.0 [+2.0, +16.0]', True)
    >>> r = steering_control(c.assign(coherent_lo=[0.4, 0.2]), ["t"]).loc["t"]
    >>> int(r.seen), int(r.seen_at_fit), bool(r.passes)
    (0, 1, False)
    """
    rows = []
    for t in traits:
        g = cells[cells.trait == t]
        if "coherent" not in g.columns:
            ok = at_fit = g.iloc[:0]
        else:
            at_fit = g[g.steers & (g.coherent >= CONTROL_COHERENT)]
            ok = at_fit[at_fit.coherent_lo >= CONTROL_COHERENT] if "coherent_lo" in g.columns else at_fit
        b = ok.loc[ok.ci_lo.idxmax()] if len(ok) else None
        rows.append({"trait": t, "cells": len(g), "seen": len(ok),
                     **({"seen_at_fit": len(at_fit)} if "coherent_lo" in g.columns else {}),
                     "best": "" if b is None else f"L{b.layer} {b.method} {b.delta:+.1f} [{b.ci_lo:+.1f}, {b.ci_hi:+.1f}]",
                     "passes": len(ok) > 0})
    return pd.DataFrame(rows).set_index("trait")


def _question_bootstrap(cells: pd.DataFrame, judged: pd.DataFrame, P: Params,
                        stat: Callable[[pd.DataFrame, np.ndarray], float]) -> unc.Bootstrap:
    """Bootstrap of ``stat(cells, deltas)`` over questions, resampled within trait: each draw
    recomputes every cell's paired delta from the resampled questions (cells of one trait share
    its questions, so they move together), while the extraction metrics stay as measured. Only
    the traits of ``cells`` are resampled."""
    d = cells.dropna(subset=["delta"])
    judged = judged[judged.trait.isin(set(d.trait))]
    wide, strata = unit_matrix(judged, by=["trait", "layer", "method"], baseline=judged.method == "baseline",
                               within=["trait"])
    D = wide.loc[pd.MultiIndex.from_frame(d[["trait", "layer", "method"]])].to_numpy(float)

    def one(sel: Mapping) -> float:
        cols = np.concatenate([strata[t][i] for t, i in sel.items()])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a cell whose resampled questions all lack a score
            delta = np.nanmean(D[:, cols], axis=1)
        return stat(d, delta)

    return unc.bootstrap(one, {t: len(c) for t, c in strata.items()}, n_boot=P.n_boot, seed=P.seed)


def correlations(cells: pd.DataFrame, judged: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Pearson and Spearman r between each extraction metric and the steering delta over cells,
    pooled over traits and within each trait (``scope``), with a 95% bootstrap CI of Pearson r
    over questions (resampled within trait) and the smallest |r| detectable over that many cells."""
    out = []
    scopes = [("pooled", cells)] + [(t, g) for t, g in cells.groupby("trait", sort=False)] if len(P.traits) > 1 \
        else [("pooled", cells)]
    for scope, c in scopes:
        d = c.dropna(subset=["delta"])
        for m in METRICS:
            x, y = d[m].to_numpy(float), d.delta.to_numpy(float)
            ok = np.std(x) > 0 and np.std(y) > 0
            b = _question_bootstrap(d, judged, P, lambda c, delta, m=m: unc.pearson(c[m].to_numpy(float), delta))
            lo, hi = b.ci
            out.append({"scope": scope, "metric": m, "cells": len(x), "pearson_r": unc.pearson(x, y),
                        "r_lo": lo, "r_hi": hi, "r_ci95": b.text(), "r_mde": unc.r_mde(len(x)),
                        "spearman_rho": stats.spearmanr(x, y)[0] if ok else np.nan})
    return pd.DataFrame(out).set_index(["scope", "metric"])


def best_layers(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (trait, method): the layer with the best val accuracy vs the layer with the largest delta."""
    out = []
    for (trait, method), g in cells.groupby(["trait", "method"], sort=False):
        e, s = g.loc[g.val_accuracy.idxmax()], g.loc[g.delta.idxmax()] if g.delta.notna().any() else None
        out.append({"trait": trait, "method": method, "best_extraction_layer": int(e.layer),
                    "its_accuracy": e.val_accuracy, "its_delta": e.delta,
                    "best_steering_layer": int(s.layer) if s is not None else -1,
                    "best_delta": s.delta if s is not None else np.nan,
                    "same": s is not None and int(e.layer) == int(s.layer)})
    return pd.DataFrame(out).set_index(["trait", "method"])


def late_layers(P: Params, n_layers: int) -> list[int]:
    """The layers of the grid at or past ``late_frac`` of the model's depth."""
    return [x for x in P.layers if x >= P.late_frac * n_layers]


def conclusions(corr: pd.DataFrame, best: pd.DataFrame, cells: pd.DataFrame,
                control: pd.DataFrame | None = None) -> list[str]:
    """Plain-language findings, each number from the tables above."""
    out = []
    if control is not None:
        def control_line(t: str, r: pd.Series) -> str:
            if not np.isfinite(r.delta):
                return f"{t} not run (no system prompts for it: add them with instructions_file)"
            change = change_text(r)
            return f"{t} {r.delta:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}]" + (f", {change}" if change else "")

        out.append("Reader's positive control (positive- minus negative-instructed answers): "
                   + "; ".join(control_line(t, r) for t, r in control.iterrows()) + ".")
    if "coherent" in cells.columns:
        steered = steering_control(cells, list(cells.trait.unique()))
        robust = "seen_at_fit" in steered.columns
        out.append(f"Reader's positive control from steering (cells steering with ≥ {CONTROL_COHERENT:.0%} of their "
                   "answers coherent" + (" across the floors' 95% interval" if robust else "") + "): " + "; ".join(
                       f"{t} {r.seen}/{r.cells}" + (f" ({r.seen_at_fit} by the fitted floors)" if robust else "")
                       + (f", clearest {r.best}" if r.passes else "")
                       for t, r in steered.iterrows()) + ".")
    ranked = corr.loc["pooled"].sort_values("pearson_r", ascending=False)
    out.append("Predictors of the steering delta by Pearson r over all cells: " + ", ".join(
        f"{m} {r.pearson_r:+.2f} {r.r_ci95}" for m, r in ranked.iterrows())
        + f" (seed: effect size {SEED['effect_size_r']}, accuracy {SEED['accuracy_r']}).")
    if {"effect_size", "val_accuracy"} <= set(corr.loc["pooled"].index):
        es, acc = corr.loc[("pooled", "effect_size")], corr.loc[("pooled", "val_accuracy")]
        verdict = ("holds" if es.pearson_r > acc.pearson_r and es.r_lo > 0 else
                   "is not supported (effect size does not reliably predict the delta)" if not es.r_lo > 0 else
                   "does not hold")
        out.append(f"The seed's 'effect size predicts steering better than accuracy' {verdict} here "
                   f"(r {es.pearson_r:+.2f} vs {acc.pearson_r:+.2f}).")
    within = [s for s in corr.index.get_level_values("scope").unique() if s != "pooled"]
    if within:
        out.append("Within each trait (r over its cells, effect size / accuracy): " + "; ".join(
            f"{t} {corr.loc[(t, 'effect_size'), 'pearson_r']:+.2f} {corr.loc[(t, 'effect_size'), 'r_ci95']} / "
            f"{corr.loc[(t, 'val_accuracy'), 'pearson_r']:+.2f} {corr.loc[(t, 'val_accuracy'), 'r_ci95']}"
            for t in within) + f" (|r| detectable over {int(corr.loc[(within[0], 'effect_size'), 'cells'])} cells: "
            f"{corr.loc[(within[0], 'effect_size'), 'r_mde']:.2f}).")
    diff = int((~best.same).sum())
    out.append(f"Best extraction layer ≠ best steering layer in {diff}/{len(best)} (trait, method) pairs "
               f"(seed: extraction L{SEED['best_extraction_layer']} vs steering L{SEED['best_steering_layer']}).")
    steers = int(cells.steers.sum())
    bad = cells[(cells.val_accuracy >= 0.9) & cells.wrong_way]
    out.append(f"Cells whose delta's 95% interval lies above 0: {steers}/{len(cells)}; with ≥90% accuracy and an "
               f"interval below 0 (steering the wrong way): {len(bad)}/{len(cells)}"
               + (" (" + ", ".join(f"{r.trait} L{r.layer} {r.method} {100 * r.val_accuracy:.0f}% Δ{r.delta:+.1f}"
                                   for r in bad.head(5).itertuples()) + ")" if len(bad) else "")
               + f"; seed: {SEED['late_layer_note']}.")
    if "coherent" in cells.columns:
        out.append(f"Coherent answers per cell (text floors): median {100 * cells.coherent.median():.0f}%, "
                   f"range {100 * cells.coherent.min():.0f}–{100 * cells.coherent.max():.0f}%.")
    return out


def _controls_text(control: pd.DataFrame | None, steered: pd.DataFrame) -> str:
    """Which control shows the reader seeing each trait, e.g. "optimism: instructed +25.0; humor:
    steering (6/12 coherent cells, clearest L12 probe +21.7 [+10.2, +33.2])"; "none" when neither."""
    parts = []
    for t, r in steered.iterrows():
        got = []
        if control is not None and t in control.index and bool(control.loc[t, "differ"]):
            got.append(f"instructed {control.loc[t, 'delta']:+.1f}")
        if r.passes:
            got.append(f"steering ({r.seen}/{r.cells} coherent cells, clearest {r.best})")
        if got:
            parts.append(f"{t}: {' and '.join(got)}")
    return "; ".join(parts) or "none"


def questions(P: Params) -> pd.DataFrame:
    return opinion_questions("test", P.n_questions, P.questions_file)


def _r_gap(cells: pd.DataFrame, judged: pd.DataFrame, P: Params) -> tuple[float, float, tuple[float, float]]:
    """r(effect size, Δ) − r(accuracy, Δ) over cells, with its bootstrap SE and 95% CI over
    questions (resampled within trait)."""
    def gap(c: pd.DataFrame, delta: np.ndarray) -> float:
        return (unc.pearson(c.effect_size.to_numpy(float), delta)
                - unc.pearson(c.val_accuracy.to_numpy(float), delta))

    b = _question_bootstrap(cells, judged, P, gap)
    if b.draws.size < 2:
        return b.value, 1.0, (np.nan, np.nan)
    return b.value, max(b.se, 1e-3), b.ci


def record(P: Params, cells: pd.DataFrame, corr: pd.DataFrame, best: pd.DataFrame,
           judged: pd.DataFrame, control: pd.DataFrame | None = None, n_layers: int | None = None
           ) -> records.ResultRecord:
    """The report's result record: the judge's positive control per trait, metric–delta
    correlations (pooled and within trait), best layers, cells steering either way, the late-layer
    trap.

    Tolerance rules: cell and question counts exact; each Pearson r over cells
    ``3 × (1 − r²)/√(cells − 3)`` and the r difference 3 bootstrap SEs over questions (the delta is a
    judge's reading of generated text, chaotic across CPUs); judge deltas (the control, the mean
    steering delta) 3 cautious SEs over questions or cells; the mean extraction accuracy 2 SEs over
    cells (fixed text through a forward pass); shares of (trait, method) pairs or cells: one pair
    flipping, two cells flipping.
    """
    scored = cells.dropna(subset=["delta"])
    n = len(scored)
    qs: list[records.Quantity] = [records.exact("n_cells", len(P.cells()), unit="cells"),
                                  records.exact("n_questions", P.n_questions, unit="questions")]
    readable: dict[str, bool] = {t: False for t in P.traits}
    if control is not None:
        for t, r in control.iterrows():
            readable[str(t)] = bool(r.differ)
            if np.isfinite(r.delta) and r.n > 1:
                qs.append(records.estimate(f"control.{t}", float(r.delta), se=unc.score_se(float(r.se), int(r.n)),
                                           n=int(r.n), unit="points", k=3, ci=(float(r.ci_lo), float(r.ci_hi))))
            qs += change_quantities(f"control.{t}", r)
    for (scope, m), r in corr.iterrows():
        name = f"{m}_r" if scope == "pooled" else f"{scope}.{m}_r"
        ci = (r.r_lo, r.r_hi) if np.isfinite([r.r_lo, r.r_hi]).all() else None
        qs.append(records.correlation(name, float(r.pearson_r), int(r.cells), k=3, ci=ci))
    gap, gap_se, gap_ci = _r_gap(cells, judged, P)
    qs.append(records.estimate("effect_size_minus_accuracy_r", gap, se=gap_se, n=n, k=3,
                               ci=gap_ci if np.isfinite(gap_ci).all() else None))
    qs.append(records.score_mean("mean_delta", scored.delta, k=3))
    _, acc_se, _ = unc.mean_se(cells.val_accuracy)
    qs.append(records.estimate("mean_val_accuracy", float(cells.val_accuracy.mean()),
                               se=max(acc_se if np.isfinite(acc_se) else 0.0, 1e-3), n=len(cells), k=2))
    differ = _question_bootstrap(cells, judged, P, lambda c, delta: float(
        (~best_layers(c.assign(delta=delta)).same).mean()))
    qs.append(records.rate("best_layer_differs", float((~best.same).mean()), n=len(best),
                           ci=differ.ci if np.isfinite(differ.ci).all() else None))
    qs.append(records.rate("cells_steering", float(cells.steers.mean()), n=len(cells), items=2))
    trap = cells[(cells.val_accuracy >= 0.9) & cells.wrong_way]
    qs.append(records.rate("high_accuracy_negative_delta", len(trap) / max(len(cells), 1), n=len(cells), items=2))
    if "coherent" in cells.columns:
        # with floor refits (``deltas``): the median of the cells' lower ends to that of their upper
        # ends; one floor moves every cell the same way, so this spans where the median falls
        env = ((float(cells.coherent_lo.median()), float(cells.coherent_hi.median()))
               if {"coherent_lo", "coherent_hi"} <= set(cells.columns) else None)
        qs.append(records.rate("median_cell_coherent", float(cells.coherent.median()),
                               n=P.n_questions, items=2, ci=env))
    steered = steering_control(cells, P.traits)
    for t, r in steered.iterrows():
        qs.append(records.rate(f"steering_control.{t}", r.seen / max(r.cells, 1), n=max(int(r.cells), 1), items=2))
        readable[str(t)] = readable[str(t)] or bool(r.passes)
    by = {q.name: q for q in qs}
    no_control = ("neither of the reader's positive controls passed for any trait: the instructed answers were "
                  "not separated")
    if control is not None and "similarity" in control.columns:
        alike = control[control.similarity >= ALIKE]
        if len(alike):
            no_control += (" (" + "; ".join(f"{t}: {change_text(r)}" for t, r in alike.iterrows())
                           + ": the model barely follows them)")
    no_control += (f", and no cell steers with at least {CONTROL_COHERENT:.0%} of its answers coherent"
                   if "coherent" in cells.columns else ", and coherence was not measured")
    seen_by = _controls_text(control, steered)

    def needs_control(verdict: str, why: str) -> tuple[str, str]:
        """A null counts only where the reader demonstrably sees some trait (either control)."""
        if verdict != "not held":
            return verdict, why
        if not any(readable.values()):
            return "inconclusive", f"{why}; but {no_control}: the deltas may be reader noise"
        return verdict, f"{why}; the reader's positive control: {seen_by}"

    es = by["effect_size_r"]
    v1, why1 = needs_control(*records.decide(holds=bool(es.ci is not None and es.ci[0] > 0),
                                             seed_effect=SEED["effect_size_r"], mde=unc.r_mde(n)))
    g = by["effect_size_minus_accuracy_r"]
    v2, why2 = needs_control(*records.decide(holds=bool(g.ci is not None and g.ci[0] > 0),
                                             seed_effect=SEED["effect_size_r"] - SEED["accuracy_r"],
                                             mde=unc.mde(gap_se)))
    # a best steering layer is an argmax over noisy cells: the share of (trait, method) pairs whose
    # best layers differ, recomputed on question resamples, must stay above (or below) one half
    share, (d_lo, d_hi) = by["best_layer_differs"].value, differ.ci
    if len(P.layers) < 2:
        v3, why3 = "not comparable", "one layer: no best layer to compare"
    elif d_lo > 0.5:
        v3, why3 = "holds", (f"the best layers differ in {share:.0%} of (trait, method) pairs, and in more than half "
                             f"of them in 97.5% of question resamples (95% interval [{d_lo:.0%}, {d_hi:.0%}])")
    elif d_hi < 0.5:
        v3, why3 = "not held", (f"the best layers differ in {share:.0%} of (trait, method) pairs, and in fewer than "
                                f"half in 97.5% of question resamples (95% interval [{d_lo:.0%}, {d_hi:.0%}])")
    else:
        v3, why3 = "inconclusive", (f"the best layers differ in {share:.0%} of (trait, method) pairs, but the share "
                                    f"over question resamples reaches one half (95% interval [{d_lo:.0%}, "
                                    f"{d_hi:.0%}]): a best layer is an argmax over noisy cells")
    # the trap: a late, accurate cell whose delta's interval lies below 0
    late = late_layers(P, n_layers) if n_layers else [max(P.layers)]
    late_acc = cells[cells.layer.isin(late) & (cells.val_accuracy >= 0.9)]
    late_trap = late_acc[late_acc.wrong_way]
    seed_trap = 10.6
    if len(late_trap):
        v4, why4 = "holds", (f"{len(late_trap)} late cell(s) (layers {late}) with ≥ 90% accuracy steer the wrong "
                             "way (95% interval below 0)")
    elif not len(late_acc):
        v4, why4 = "inconclusive", f"no cell at the late layers {late} reaches 90% accuracy"
    else:
        seen = late_acc[late_acc.trait.map(readable) & (late_acc.mde < seed_trap)]
        if len(seen):
            v4, why4 = "not held", (f"{len(seen)} late accurate cell(s) could detect a delta of −{seed_trap} (minimum "
                                    f"detectable {seen.mde.max():.1f}) on traits the reader demonstrably sees (a positive control passed), and "
                                    "none steers the wrong way")
        else:
            v4, why4 = "inconclusive", (f"no late accurate cell both could detect −{seed_trap} points and belongs to a "
                                        "trait whose reader passed a positive control")
    qs.append(records.rate("late_high_accuracy_negative_delta", len(late_trap) / max(len(late_acc), 1),
                           n=max(len(late_acc), 1), items=2))
    claims = (
        records.Claim("effect_size_predicts", "Effect size on held-out pairs predicts the steering delta "
                      "(Pearson r over cells > 0)", seed=f"r = {SEED['effect_size_r']}", ours="",
                      verdict=v1, reason=why1, quantity="effect_size_r"),
        records.Claim("effect_size_beats_accuracy", "Effect size predicts the delta better than validation "
                      "accuracy (r difference)", seed=f"{SEED['effect_size_r']} vs {SEED['accuracy_r']}", ours="",
                      verdict=v2, reason=why2, quantity="effect_size_minus_accuracy_r"),
        records.Claim("best_layers_differ", "The best extraction layer is not the best steering layer",
                      seed=f"L{SEED['best_extraction_layer']} vs L{SEED['best_steering_layer']}",
                      ours=f"differ in {int((~best.same).sum())}/{len(best)} (trait, method) pairs",
                      verdict=v3, reason=why3, quantity="best_layer_differs"),
        records.Claim("late_layer_trap", "A late layer has high accuracy (≥90%) yet steers the wrong way",
                      seed=f"L25: 95% accuracy, Δ −{seed_trap}",
                      ours=f"{len(late_trap)}/{len(late_acc)} accurate cells at layers {late}",
                      verdict=v4, reason=why4, quantity="late_high_accuracy_negative_delta"),
    )
    tables = {"cells": cells, "correlations": corr, "best_layers": best, "steering_control": steered}
    if control is not None:
        tables["control"] = control
    return records.ResultRecord("metrics_vs_steering", model=P.model, quantities=tuple(qs), claims=claims,
                                tables=tables, params=asdict(P))
