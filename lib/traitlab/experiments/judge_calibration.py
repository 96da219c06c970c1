"""Judge calibration: logprob vs text-parse scores, agreement with a hand-labelled gold set,
and the baseline (unsteered) score of a model's own answers.

The gold set (``data/judge/gold_optimism.jsonl``, written and labelled by us) crosses optimism level
(≈10 / 50 / 90) with coherence level (≈93 coherent, ≈40 degraded, ≈7 word salad) over 12
questions. Each response is scored for the trait and for coherence by the same judge in
both modes; agreement is Pearson and Spearman correlation with the gold labels (95%
bootstrap CIs over items) and mean absolute error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .. import judge_power, probe_reader, records, textstats
from .. import uncertainty as unc
from ..activations import extract
from ..data import DataError, load_trait, opinion_questions
from ..directions import METHODS as DIRECTION_METHODS
from ..directions import fit_direction
from ..judge import Judge, JudgeConfig, described, opposed, score_modes, unjudgeable
from ..models import LoadedModel, describe, load_model
from ..params import ParamError, check_max_pairs
from ..sites import Site
from ..steered_eval import Condition, at_ratio, generate_answers, probe_answers
from ..steering import activation_norms


@dataclass(frozen=True)
class Params:
    judge_backend: Literal["local", "openai"] = "local"
    judge_model: str = "qwen2.5-coder-1.5b-instruct"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_offline: bool = False
    judge_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    trait: str = "optimism"
    top_logprobs: int = 20
    min_mass: float = 0.25
    trait_descriptions: dict[str, str] = field(default_factory=dict)
    """One-line judge definitions of traits ``traitlab.judge.TRAIT_DESCRIPTIONS`` lacks (or to
    replace one there), e.g. ``{candour: "saying plainly what one thinks."}``."""
    trait_opposites: dict[str, list[str]] = field(default_factory=dict)
    """Opposites to read traits through (the ``opposite`` reading) beyond ``judge.TRAIT_OPPOSITES``,
    trait → [name, one-line definition], e.g. ``{cheer: [gloom, "a bleak, downcast tone."]}``."""
    max_gold: int | None = None
    responder_model: str = "qwen2.5-coder-0.5b-instruct"
    n_baseline: int | None = None
    max_new_tokens: int = 64
    n_boot: int = 1000
    seed: int = 0
    gold_traits: list[str] = field(default_factory=lambda: ["optimism", "uncertainty", "refusal"])
    """Traits whose gold sets (``data/judge/gold_<trait>.jsonl``) the judge methods are compared on."""
    gold_dir: str | None = None
    """A folder of one's own ``gold_<trait>.jsonl`` gold sets, read in place of ours (``data/judge``)
    for the traits it holds (``judge_power.gold_path``), with an ``anchors.jsonl`` for the anchored
    rubric read before ours (``judge_power.load_anchors``); null: ours only."""
    gold_split: Literal["heldout", "tune"] | None = "heldout"
    """Which part of each gold set the comparison reads (null: both)."""
    max_gold_questions: int | None = None
    """At most this many questions per gold trait (null: all of the split)."""
    coherence_floor: float = 50.0
    """The coherence score below which a steering report calls an answer broken."""
    mde_questions: int = 16
    """Questions per steering condition at which each method's minimum detectable effect is read."""
    perplexity: bool = True
    """Also score coherence as perplexity under the responder model (a judge-free measure)."""
    anchored: bool = True
    """Also compare the anchored rubric: the judge sees scored example answers (10 / 50 / 90,
    ``data/judge/anchors.jsonl``) before the answer it scores, for the trait and for coherence."""
    control_questions: int | None = 16
    """Positive control: steer the responder's optimism at ± ``control_ratio`` on this many
    held-out opinion questions and ask whether each judge method sees the change (null: skip)."""
    questions_file: str | None = None
    """A JSONL file of ``{"id", "question", "split"}`` questions the control's steered answers respond to
    (``data.opinion_questions``); null: the shipped ``data/steering/optimism_questions.jsonl``."""
    control_layer: int = 12
    """The responder layer (``resid_pre``) the control steers at."""
    control_ratio: float = 0.75
    """The control's perturbation ratio (‖added vector‖ / mean ‖activation‖ at that site)."""
    control_method: str = "mean_diff"
    """How the control's optimism direction is fitted (``directions.fit_direction``)."""
    max_pairs_per_split: int | None = None
    """The control direction's pairs: the first N train and first N val optimism pairs
    (``data.load_trait``; for quick profiles); null: all of them."""
    probe_model: str | None = "judge"
    """Also read each trait and coherence with a linear probe on a model's activations
    (``traitlab.probe_reader``, fitted on the gold sets' tune part; read only when ``gold_split``
    is held-out): ``judge`` (the local judge's own model), another model's name, or null (no probe)."""

    def __post_init__(self) -> None:
        if not self.gold_traits:
            raise ParamError("gold_traits must name at least one trait")
        if self.gold_split not in ("heldout", "tune", None):
            raise ParamError(f"gold_split must be 'heldout', 'tune' or null, got {self.gold_split!r}")
        if self.max_gold_questions is not None and self.max_gold_questions < 2:
            raise ParamError(f"max_gold_questions must be >= 2 or null, got {self.max_gold_questions}")
        if not 0 <= self.coherence_floor <= 100 or self.mde_questions < 2:
            raise ParamError("coherence_floor must be in 0..100 and mde_questions >= 2")
        if (why := unjudgeable([self.trait, *self.gold_traits], self.trait_descriptions, self.trait_opposites)) is not None:
            raise ParamError(why)
        try:
            gold = judge_power.check_gold([self.trait, *self.gold_traits], self.gold_dir)
            for t in self.gold_traits:  # the methods compare answers to one question, question by question
                part = gold[t] if self.gold_split is None else gold[t][gold[t].split == self.gold_split]
                n = part.question.nunique()
                if n < 2:
                    raise DataError(f"{judge_power.gold_path(t, self.gold_dir)}: the method comparison reads its "
                                    f"{self.gold_split or 'whole'} part, which has answers to {n} question(s); "
                                    "it needs 2 or more (or set gold_split)")
            if self.gold_split == "heldout" and (self.probe_model is not None or self.perplexity):
                probe_reader.check_gold_fit(self.gold_traits, folder=self.gold_dir)  # fitted on the tune part
        except (DataError, probe_reader.ProbeError) as err:
            raise ParamError(str(err)) from None
        if self.anchored:
            for t in (*self.gold_traits, "coherence"):
                try:
                    judge_power.load_anchors(t, self.gold_dir)
                except DataError as err:
                    raise ParamError(f"anchored: true needs anchors for {t!r}: {err} (or set anchored: false)") from None
        check_max_pairs(self.max_pairs_per_split)
        if self.control_questions is not None:
            if self.control_questions < 2:
                raise ParamError(f"control_questions must be >= 2 or null, got {self.control_questions}")
            if not self.control_ratio > 0:
                raise ParamError(f"control_ratio must be > 0, got {self.control_ratio}")
            if self.control_method not in DIRECTION_METHODS:
                raise ParamError(f"control_method must be one of {', '.join(DIRECTION_METHODS)}, "
                                 f"got {self.control_method!r}")
        if self.judge_backend not in ("local", "openai"):
            raise ParamError(f"judge_backend must be 'local' or 'openai', got {self.judge_backend!r}")
        if self.probe_model == "judge" and self.judge_backend != "local":
            raise ParamError("probe_model: judge needs judge_backend: local (an HTTP judge shows no activations); "
                             "name a local model instead (e.g. the responder) or set probe_model: null")
        if self.judge_dtype not in ("auto", "float32", "bfloat16"):
            raise ParamError(f"judge_dtype must be 'auto', 'float32' or 'bfloat16', got {self.judge_dtype!r}")
        if not 1 <= self.top_logprobs <= 20:
            raise ParamError(f"top_logprobs must be in 1..20, got {self.top_logprobs}")
        if not 0 <= self.min_mass <= 1:
            raise ParamError(f"min_mass must be in [0, 1], got {self.min_mass}")
        for name in ("max_gold", "n_baseline"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ParamError(f"{name} must be >= 2 or null, got {v}")
        if self.max_new_tokens < 1 or self.n_boot < 1:
            raise ParamError("max_new_tokens and n_boot must be >= 1")

    def check(self) -> None:
        """Checks that need the models' identity (no weights are read)."""
        if self.control_questions is not None:
            opinion_questions("test", self.control_questions, self.questions_file)  # enough questions, before model work
        info = describe(self.responder_model)
        if self.control_questions is not None and not 0 <= self.control_layer < info.n_layers:
            raise ParamError(f"control_layer {self.control_layer} is outside {self.responder_model}'s "
                             f"0..{info.n_layers - 1}")
        if self.judge_backend == "local":
            describe(self.judge_model)
        if self.probe_model not in (None, "judge"):
            describe(self.probe_model)

    def judge_config(self, mode: Literal["logprob", "text"]) -> JudgeConfig:
        return JudgeConfig(backend=self.judge_backend, model=self.judge_model,
                           base_url=self.judge_base_url, api_key_env=self.judge_api_key_env,
                           mode=mode, top_logprobs=self.top_logprobs, min_mass=self.min_mass,
                           offline=self.judge_offline, dtype=self.judge_dtype,
                           descriptions=described(self.trait_descriptions),
                           opposites=opposed(self.trait_opposites), gold_dir=self.gold_dir)


def load_gold(trait: str = "optimism", max_items: int | None = None, seed: int = 0,
              folder: str | None = None) -> pd.DataFrame:
    """The labelled gold set of ``trait`` (``judge_power.gold_path``: in ``folder`` where it holds
    one, else ``data/judge/gold_<trait>.jsonl``; both splits), its label in a column named after
    the trait; ``max_items`` takes a seeded sample."""
    df = judge_power.load_gold(trait, folder=folder).rename(columns={"label": trait})
    df["level"] = np.select([df.coherence < 25, df.coherence < 70], ["word salad", "degraded"],
                            "coherent")
    if max_items is not None and max_items < len(df):
        df = df.sample(n=max_items, random_state=seed).sort_values("id")
    return df.reset_index(drop=True)


def score(judges: dict[str, Judge], df: pd.DataFrame, trait: str, progress: bool = True
          ) -> pd.DataFrame:
    """Add ``<metric>_<mode>`` columns (and the logprob mass) for every judge mode."""
    out = df.copy()
    items = list(zip(df.question, df.response, strict=True))
    # one local judge read both ways prefills each prompt once for both (``score_modes``)
    got = {metric: score_modes(judges, metric, items, trait=trait, progress=progress)
           for metric in ("trait", "coherence")}
    for mode in judges:
        for metric in ("trait", "coherence"):
            s = got[metric][mode]
            out[f"{metric}_{mode}"] = np.array([np.nan if x.value is None else x.value for x in s],
                                               dtype=float)
            if mode == "logprob":
                out[f"{metric}_mass"] = np.array([np.nan if x.mass is None else x.mass for x in s],
                                                 dtype=float)
    return out


def _boot_r(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, fn) -> tuple[float, float]:
    """95% CI of a correlation over gold items (NaN when every draw is undefined, e.g. a judge
    that always gives the same score)."""
    return unc.bootstrap(lambda i: fn(x[i[None]], y[i[None]]), len(x), n_boot=n_boot, seed=seed).ci


def _r(fn, a: np.ndarray, b: np.ndarray) -> float:
    """A correlation, NaN (silently) when either side is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(a, b)[0])


def agreement(df: pd.DataFrame, gold: dict[str, str], modes: list[str], n_boot: int = 1000,
              seed: int = 0) -> pd.DataFrame:
    """Pearson r, Spearman ρ (95% bootstrap CIs), MAE and coverage of each mode vs gold."""
    rows = []
    pearson = lambda a, b: _r(stats.pearsonr, a, b)  # noqa: E731
    spearman = lambda a, b: _r(stats.spearmanr, a, b)  # noqa: E731
    for metric, gcol in gold.items():
        for mode in modes:
            col = f"{metric}_{mode}"
            ok = df[col].notna()
            x, y = df.loc[ok, col].to_numpy(float), df.loc[ok, gcol].to_numpy(float)
            r = pearson(x, y) if len(x) > 2 else np.nan
            rho = spearman(x, y) if len(x) > 2 else np.nan
            r_ci = _boot_r(x, y, n_boot, seed, pearson) if len(x) > 2 else (np.nan, np.nan)
            rho_ci = _boot_r(x, y, n_boot, seed, spearman) if len(x) > 2 else (np.nan, np.nan)
            rows.append({"metric": metric, "mode": mode, "scored": f"{ok.sum()}/{len(df)}",
                         "pearson_r": r, "r_ci": f"[{r_ci[0]:.2f}, {r_ci[1]:.2f}]",
                         "spearman_rho": rho, "rho_ci": f"[{rho_ci[0]:.2f}, {rho_ci[1]:.2f}]",
                         "mae": float(np.mean(np.abs(x - y))) if len(x) else np.nan})
    return pd.DataFrame(rows).set_index(["metric", "mode"]).round(3)


def mode_agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Logprob vs text-parse on the same responses: r, mean difference, and coverage."""
    rows = []
    for metric in ("trait", "coherence"):
        a, b = df[f"{metric}_logprob"], df[f"{metric}_text"]
        ok = a.notna() & b.notna()
        rows.append({"metric": metric, "both_scored": int(ok.sum()), "n": len(df),
                     "pearson_r": _r(stats.pearsonr, a[ok], b[ok]),
                     "mean_logprob_minus_text": float((a[ok] - b[ok]).mean()) if ok.any() else np.nan,
                     "text_distinct_values": int(b[ok].nunique())})
    return pd.DataFrame(rows).set_index("metric").round(3)


def by_level(df: pd.DataFrame, modes: list[str], trait: str = "optimism") -> pd.DataFrame:
    """Mean gold label and mean judge score per (coherence level, trait level) cell."""
    d = df.copy()
    d[f"{trait}_level"] = pd.cut(d[trait], [-1, 30, 70, 101], labels=["low", "mid", "high"])
    cols = {trait: "mean", "coherence": "mean"}
    cols.update({f"{m}_{k}": "mean" for m in ("trait", "coherence") for k in modes})
    return (d.groupby(["level", f"{trait}_level"], observed=True).agg(cols)
            .rename(columns={trait: "gold_trait", "coherence": "gold_coherence"}).round(1))


def baseline_responses(model: LoadedModel, questions: pd.DataFrame, max_new_tokens: int,
                       progress: bool = True) -> pd.DataFrame:
    """The unsteered model's greedy answers to ``questions``."""
    from ..steering import generate_steered

    examples = [model.chat.encode(q) for q in questions.question]
    texts = generate_steered(model, examples, [], max_new_tokens=max_new_tokens, progress=progress)
    return questions.assign(response=[t.strip() for t in texts])


def conclusions(agree: pd.DataFrame, modes_df: pd.DataFrame, baseline: pd.DataFrame,
                judge_model: str, weak_r: float = 0.3, trait: str = "optimism") -> list[str]:
    """Plain-language findings, every number read from the tables above.

    ``weak_r``: below this Pearson r in both modes, the judge is called unusable for a metric.
    """
    out = []
    for metric in ("trait", "coherence"):
        lp, tx = agree.loc[(metric, "logprob")], agree.loc[(metric, "text")]
        if np.isnan(lp.pearson_r) or np.isnan(tx.pearson_r):
            verdict = "too few scored answers in one mode to compare the two"
        elif max(lp.pearson_r, tx.pearson_r) < weak_r:
            verdict = f"neither mode tracks our labels (r < {weak_r}): do not use this judge for {metric}"
        elif lp.pearson_r >= tx.pearson_r:
            verdict = "logprob agrees better with our labels"
        else:
            verdict = "text parse agrees better with our labels"
        out.append(f"{metric}: logprob r = {lp.pearson_r:.2f} {lp.r_ci} (MAE {lp.mae:.1f}, scored "
                   f"{lp.scored}); text r = {tx.pearson_r:.2f} {tx.r_ci} (MAE {tx.mae:.1f}, scored "
                   f"{tx.scored}) → {verdict}.")
    for metric in ("trait", "coherence"):
        m = modes_df.loc[metric]
        out.append(f"{metric}: logprob vs text r = {m.pearson_r:.2f} on {int(m.both_scored)}/"
                   f"{int(m.n)} answers scored by both; the text answers take "
                   f"{int(m.text_distinct_values)} distinct values.")
    for mode in ("logprob", "text"):
        t, c = baseline[f"trait_{mode}"], baseline[f"coherence_{mode}"]
        out.append(f"Baseline (unsteered) answers, {mode}: {trait} {t.mean():.1f} ± {t.std():.1f}, "
                   f"coherence {c.mean():.1f} ± {c.std():.1f} (n = {t.notna().sum()}).")
    out.append(f"Judge: {judge_model}. The seed used gpt-4.1-mini; a small local judge is a "
               "stand-in, and these agreement figures say how far to trust it.")
    return out


SEED_BASELINE = {"text": 10.0, "logprob": 6.1}
"""The seed's baseline (unsteered) trait score with gpt-4.1-mini, by judge mode."""


def record(P: Params, scored: pd.DataFrame, base_scored: pd.DataFrame, agree: pd.DataFrame,
           modes_df: pd.DataFrame, methods: tuple[pd.DataFrame, pd.DataFrame] | None = None,
           control: pd.DataFrame | None = None) -> records.ResultRecord:
    """The report's result record: agreement with gold, mode agreement, baseline, seed claims.

    ``scored``/``base_scored``: ``score`` of the gold set and of the baseline answers;
    ``agree``/``modes_df``: the ``agreement`` and ``mode_agreement`` tables (kept as tables);
    ``methods``: the ``method_sensitivity`` and ``coherence_sensitivity`` tables (``method_quantities``);
    ``control``: the positive control's ``control_table``.

    Tolerance rules (the noise of each quantity across CPUs):

    - counts of gold items and baseline questions: exact;
    - share of items a mode scored: a rate over items, one item flipping;
    - Pearson r with the gold labels: ``k`` × (1 − r²)/√(n − 3) over gold items; the responses are
      fixed text, so a logprob score moves only by float noise (k = 2), while a text-parse score is
      a greedy generation that can flip to another integer (k = 3);
    - MAE, baseline means and mode differences: ``k`` SEs over items (k = 3 wherever the judge
      generates text or scores the responder's generated answers, k = 2 otherwise);
    - the r difference logprob − text: k = 3 bootstrap SEs over gold items (``P.n_boot``);
    - the positive control's win rates: rates over questions, two questions flipping (the answers
      are greedy generations of a steered model, which another CPU can end differently).
    """
    gold = {"trait": P.trait, "coherence": "coherence"}
    qs: list[records.Quantity] = [records.exact("n_gold", len(scored), unit="items"),
                                  records.exact("n_baseline", len(base_scored), unit="questions")]
    for metric, gcol in gold.items():
        for mode in ("logprob", "text"):
            k = 2 if mode == "logprob" else 3
            col = f"{metric}_{mode}"
            ok = scored[col].notna()
            x, y = scored.loc[ok, col].to_numpy(float), scored.loc[ok, gcol].to_numpy(float)
            qs.append(records.rate(f"{col}_scored", ok.mean(), n=len(scored)))
            qs.append(records.correlation(f"{col}_r", _r(stats.pearsonr, x, y), len(x), k=k))
            qs.append(records.score_mean(f"{col}_mae", np.abs(x - y), k=k))
        a, b = scored[f"{metric}_logprob"], scored[f"{metric}_text"]
        both = a.notna() & b.notna()
        qs.append(records.correlation(f"{metric}_modes_r", _r(stats.pearsonr, a[both], b[both]),
                                  int(both.sum()), k=3))
    diff, diff_se, diff_ci = _r_difference(scored, "trait", P.trait, P.n_boot, P.seed)
    qs.append(records.estimate("trait_r_logprob_minus_text", diff, se=diff_se, n=len(scored), k=3,
                               ci=diff_ci if np.isfinite(diff_ci).all() else None))
    for metric in ("trait", "coherence"):
        for mode in ("logprob", "text"):
            qs.append(records.score_mean(f"baseline_{metric}_{mode}", base_scored[f"{metric}_{mode}"], k=3))
    paired = base_scored.trait_logprob - base_scored.trait_text
    qs.append(records.score_mean("baseline_trait_logprob_minus_text", paired, k=3))
    if methods is not None:
        qs += method_quantities(*methods, P)
    if control is not None:
        for (c, m), row in control.iterrows():
            qs.append(records.rate(f"control.{c}.{m}.win_rate", row.win_rate, n=int(row.questions), items=2,
                                   ci=unc.parse_ci(row.win_ci) if row.win_ci else None))
    rec = records.ResultRecord("judge_calibration", model=P.judge_model, quantities=tuple(qs),
                               params=asdict(P))
    by_name = {q.name: q for q in qs}

    harsh = by_name["baseline_trait_logprob_minus_text"]
    lo, hi = harsh.ci if harsh.ci else (np.nan, np.nan)
    seed_gap = SEED_BASELINE["logprob"] - SEED_BASELINE["text"]
    v1, why1 = records.decide(holds=bool(hi < 0), seed_effect=seed_gap, mde=unc.score_mde(paired))
    better = by_name["trait_r_logprob_minus_text"]
    v2, why2 = records.decide(holds=bool(better.ci is not None and better.ci[0] > 0))
    if v2 == "inconclusive":
        why2 = "the seed gives no agreement number for its judge, so no detectable effect to compare: " + why2
    claims = (
        records.Claim("logprob_harsher_baseline",
                      "The logprob judge scores unsteered answers lower than the text-parse judge "
                      "(baseline trait, logprob − text)",
                      seed=f"{SEED_BASELINE['logprob']} vs {SEED_BASELINE['text']} (gpt-4.1-mini)",
                      ours="", verdict=v1, reason=why1, quantity=harsh.name),
        records.Claim("logprob_agrees_better",
                      "Logprob scoring tracks hand labels better than text parsing (trait Pearson r, "
                      "logprob − text)",
                      seed="'better calibrated' (no number)", ours="", verdict=v2, reason=why2,
                      quantity=better.name),
    )
    if control is not None and methods is not None:
        claims += (control_claim(control, methods[0], P),)
    tables = {"agreement": agree, "modes": modes_df,
              "baseline": base_scored[["trait_logprob", "trait_text", "coherence_logprob",
                                       "coherence_text"]].describe().round(2)}
    if methods is not None:
        tables.update({"methods": methods[0], "coherence_measures": methods[1]})
    if control is not None:
        tables["control"] = control
    return replace(rec, claims=claims, tables=tables)


def _r_difference(df: pd.DataFrame, metric: str, gcol: str, n_boot: int, seed: int
                  ) -> tuple[float, float, tuple[float, float]]:
    """Pearson r (logprob) − r (text) with the gold labels, bootstrap SE and 95% CI over items
    (items either mode failed to score are dropped from both, so the two r share their items)."""
    ok = df[f"{metric}_logprob"].notna() & df[f"{metric}_text"].notna()
    a, b = df.loc[ok, f"{metric}_logprob"].to_numpy(float), df.loc[ok, f"{metric}_text"].to_numpy(float)
    g = df.loc[ok, gcol].to_numpy(float)

    def d(i: np.ndarray) -> float:
        return _r(stats.pearsonr, a[i], g[i]) - _r(stats.pearsonr, b[i], g[i])

    if len(g) < 3:
        return d(np.arange(len(g))), 1.0, (np.nan, np.nan)
    boot = unc.bootstrap(lambda i: d(i[None]), len(g), n_boot=n_boot, seed=seed)
    value, draws = boot.value, boot.draws
    if len(draws) < 2:  # no spread to measure: the widest possible difference of two r
        return value, 1.0, (np.nan, np.nan)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return value, max(float(draws.std(ddof=1)), 1e-3), (float(lo), float(hi))


# ----------------------------------------------------------------------------------------
# Judge methods compared: which one can see a steering effect? (``traitlab.judge_power``)
# ----------------------------------------------------------------------------------------

METHODS = ("absolute", "anchored", "yesno", "opposite", "probe", "pairwise", "pairwise_opposite")
"""Trait methods: ``absolute`` = the logprob 0–100 score (the seed's method), compared per pair
by which answer scores higher; ``anchored`` = the same score with scored example answers in the
rubric; ``yesno`` = 100 × P(the trait's yes/no question is answered the trait's way), read from
the Yes/No logprobs (``Judge.yesno_many``, ``judge.YESNO_QUESTIONS``); ``opposite`` = 100 − the
0–100 score of the trait's opposite (``Judge.opposite_many``, ``judge.TRAIT_OPPOSITES``; only traits
that have one); ``probe`` = a ridge line on the reader model's mean activations over the answer,
fitted on the gold set's tune part (``traitlab.probe_reader``; only with ``probe_model``);
``pairwise`` = "which of the two shows more?" read from the A/B logprobs, both
orders averaged, the judge's decision; ``pairwise_opposite`` = the same question about the trait's
opposite, reversed (``Judge.prefer_opposite_many``; only traits that have one)."""

SCORED_METHODS = ("absolute", "anchored", "yesno", "opposite", "probe")
"""The methods that give each answer a 0–100 score (so a Pearson r with the labels)."""

JUDGE_SCORED = ("absolute", "anchored", "yesno", "opposite")
"""The scored methods that ask the judge (``trait_scores``); ``probe`` reads activations instead."""

COHERENCE_MEASURES = {"judge": 1.0, "judge_anchored": 1.0, "judge_yesno": 1.0, "repetition": -1.0,
                      "distinct2": 1.0, "log_perplexity": -1.0, "relevance": 1.0, "text_fit": 1.0,
                      "probe": 1.0}
"""Coherence measures and the sign that makes higher mean more coherent: the judge's logprob
score (plain and anchored rubric), its yes/no reading ("is the answer clear, fluent and on
topic?"), four judge-free ones read from the text (``traitlab.textstats``; relevance is how much
the question lowers the answer's log-perplexity), and ``text_fit``, the judge-free ones combined
by a line fitted on the gold sets' tune part (``text_fit``), and ``probe``, a ridge line on the
reader model's activations fitted on the same tune part (``probe_columns``)."""

SCALE_MEASURES = ("judge", "judge_anchored", "judge_yesno", "text_fit", "probe")
"""The coherence measures on the gold 0–100 scale (column ``coherence_<measure>``; checked
against the coherence floor)."""

TEXT_FIT_FEATURES = ("repetition", "distinct2", "log_perplexity")
"""What ``text_fit`` combines: the judge-free columns ``score_methods`` adds."""


def method_gold(P: Params) -> pd.DataFrame:
    """The gold rows the method comparison reads: each of ``P.gold_traits``, its ``P.gold_split``
    part, at most ``P.max_gold_questions`` questions per trait (first in file order)."""
    parts = []
    for t in P.gold_traits:
        g = judge_power.load_gold(t, P.gold_split, P.gold_dir)
        if P.max_gold_questions is not None:
            g = g[g.question.isin(list(dict.fromkeys(g.question))[:P.max_gold_questions])]
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


def text_measures(gold: pd.DataFrame, reference: LoadedModel | None = None) -> pd.DataFrame:
    """``gold`` with the judge-free coherence measures of each response: ``repetition``,
    ``distinct2`` and, with a ``reference`` model, ``log_perplexity`` and ``relevance``
    (``traitlab.textstats.coherence_measures``)."""
    st = [textstats.stats(r) for r in gold.response]
    g = gold.assign(repetition=[x.repetition for x in st], distinct2=[x.distinct2 for x in st])
    if reference is not None:  # each distinct answer scored once, in length order
        m = textstats.coherence_measures(reference, g, relevance=True)
        g["log_perplexity"], g["relevance"] = m.log_ppl, m.relevance
    return g


def text_fit(P: Params, reference: LoadedModel) -> textstats.CoherenceFit:
    """The judge-free coherence line (``textstats.fit_coherence`` on ``TEXT_FIT_FEATURES``, perplexity
    under ``reference``) fitted on the *tune* part of every ``P.gold_traits`` gold set, so a report
    that reads the held-out part reads it out of sample."""
    tune = pd.concat([judge_power.load_gold(t, "tune", P.gold_dir) for t in P.gold_traits], ignore_index=True)
    return textstats.fit_coherence(text_measures(tune, reference), tune.coherence, TEXT_FIT_FEATURES)


def probe_reader_model(P: Params, judge: Judge, responder: LoadedModel) -> LoadedModel | None:
    """The model whose activations the probe reads (``P.probe_model``): the local judge's own model
    for ``judge``, the responder when named, another model loaded, None for no probe."""
    if P.probe_model is None:
        return None
    if P.probe_model == "judge":
        return judge.backend.model
    return responder if P.probe_model == responder.spec else load_model(P.probe_model, quiet=True)


def probe_columns(probes: dict[str, probe_reader.ProbeReader], reader: LoadedModel, gold: pd.DataFrame,
                  progress: bool = True) -> pd.DataFrame:
    """``gold`` with ``trait_probe`` (each row's trait read by that trait's probe) and, where
    ``probes`` has one, ``coherence_probe``, both on the gold 0–100 scale
    (``steered_eval.probe_answers``: one pass of ``reader`` serves every probe)."""
    cols = {"trait": "trait_probe"} | ({"coherence": "coherence_probe"} if "coherence" in probes else {})
    return probe_answers(probes, reader, gold.assign(answer=gold.response), cols,
                         progress=progress).drop(columns="answer")


def score_methods(judge: Judge, gold: pd.DataFrame, reference: LoadedModel | None = None,
                  progress: bool = True, anchored: bool = True,
                  fit: textstats.CoherenceFit | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every gold row scored by every method, and every within-question pair with each method's win.

    Rows gain ``trait_absolute`` (logprob trait score), ``coherence_judge``, ``trait_yesno`` and
    ``coherence_judge_yesno`` (the yes/no readings), ``trait_opposite`` (``Judge.opposite_many``;
    NaN for traits without an opposite: ``JudgeConfig.opposite``), with ``anchored`` ``trait_anchored`` and
    ``coherence_judge_anchored`` (the anchored rubric, ``judge_power.load_anchors``),
    ``repetition``, ``distinct2`` and (with a ``reference`` model) ``log_perplexity`` and
    ``relevance`` (``text_measures``), and with a ``fit`` (``text_fit``) ``coherence_text_fit``.
    Columns already in ``gold`` stay (``probe_columns``' ``trait_probe`` and ``coherence_probe``).
    Pairs (``judge_power.gold_pairs``: same trait and question, ``hi`` has the
    higher label) gain ``win_absolute`` (``win_anchored``), ``win_pairwise`` (the judge's
    order-averaged decision, ``Preference.win``) and ``p_pairwise`` (its probability), and for
    traits with an opposite ``win_pairwise_opposite`` and ``p_pairwise_opposite``.
    """
    g = (pd.concat([score({"absolute": judge}, rows, t, progress) for t, rows in gold.groupby("trait", sort=False)])
         .loc[gold.index].rename(columns={"coherence_absolute": "coherence_judge"}))
    value = lambda got: [np.nan if x.value is None else x.value for x in got]  # noqa: E731
    for t, rows in gold.groupby("trait", sort=False):
        items = list(zip(rows.question, rows.response, strict=True))
        for m in ("yesno", "opposite", "anchored") if anchored else ("yesno", "opposite"):
            got = trait_scores(judge, m, items, t, progress)
            g.loc[rows.index, f"trait_{m}"] = np.nan if got is None else got
        g.loc[rows.index, "coherence_judge_yesno"] = value(judge.yesno_many("coherence", items, progress=progress))
        if anchored:
            anchors = judge_power.load_anchors("coherence", judge.config.gold_dir)
            g.loc[rows.index, "coherence_judge_anchored"] = value(judge.score_many(
                "coherence", items, anchors=anchors, progress=progress))
    g = text_measures(g, reference)
    if fit is not None:
        g["coherence_text_fit"] = fit.predict(g)
    pairs = judge_power.gold_pairs(g)
    for m in SCORED_METHODS:
        if f"trait_{m}" in g:  # probe: only where probe_columns added it
            pairs[f"win_{m}"] = judge_power.score_wins(g[f"trait_{m}"].to_numpy(float), pairs)
    for m in ("pairwise", "pairwise_opposite"):
        pairs[f"win_{m}"] = pairs[f"p_{m}"] = np.nan
    for t, pr in pairs.groupby("trait", sort=False):
        items = [(g.question[h], g.response[h], g.response[lo]) for h, lo in zip(pr.hi, pr.lo, strict=True)]
        read = {"pairwise": judge.prefer_many(items, trait=t, progress=progress)}
        if judge.config.opposite(t) is not None:
            read["pairwise_opposite"] = judge.prefer_opposite_many(items, trait=t, progress=progress)
        for m, got in read.items():
            pairs.loc[pr.index, f"win_{m}"] = [np.nan if x.win is None else x.win for x in got]
            pairs.loc[pr.index, f"p_{m}"] = [np.nan if x.p_first is None else x.p_first for x in got]
    return g, pairs


def trait_scores(judge: Judge, method: str, items: Sequence[tuple[str, str]], trait: str,
                 progress: bool = True) -> np.ndarray | None:
    """One judge method's (``JUDGE_SCORED``) 0–100 readings of ``trait`` in (question, answer)
    ``items``, NaN where the judge gave none; None when the method does not read ``trait``
    (``opposite`` for a trait without an opposite: ``JudgeConfig.opposite``)."""
    if method not in JUDGE_SCORED:
        raise ValueError(f"method must be one of {', '.join(JUDGE_SCORED)}, got {method!r}")
    if method == "opposite" and judge.config.opposite(trait) is None:
        return None
    got = (judge.yesno_many("trait", items, trait=trait, progress=progress) if method == "yesno" else
           judge.opposite_many(items, trait=trait, progress=progress) if method == "opposite" else
           judge.score_many("trait", items, trait=trait, progress=progress,
                            anchors=judge_power.load_anchors(trait, judge.config.gold_dir) if method == "anchored"
                            else ()))
    return np.array([np.nan if x.value is None else x.value for x in got], dtype=float)


def _by_question(df: pd.DataFrame) -> tuple[list[str], dict[str, np.ndarray]]:
    qs = list(dict.fromkeys(df.question))
    return qs, {q: np.flatnonzero(df.question.to_numpy() == q) for q in qs}


def _take(pos: dict[str, np.ndarray], qs: list[str], idx: np.ndarray) -> np.ndarray:
    return np.concatenate([pos[qs[i]] for i in idx]) if len(idx) else np.array([], int)


MDE_CAP = 100.0
"""An MDE is capped at the width of the scale: 100 means no gap on 0–100 is detectable."""


def method_sensitivity(scored: pd.DataFrame, pairs: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (trait, method): Pearson r with the gold labels (absolute only), accuracy on pairs at
    least 40 gold points apart (pairwise also: its mean probability for the right answer there,
    ``p_right_gap40``, which shows how far the label probabilities sit from ½), the noise σ and the minimum detectable effect at
    ``P.mde_questions`` questions (gold points, capped at 100), each with a 95% bootstrap CI
    over questions."""
    rows = []
    for t in dict.fromkeys(scored.trait):
        gi, pi = scored[scored.trait == t].reset_index(drop=True), pairs[pairs.trait == t].reset_index(drop=True)
        for method in METHODS:
            if f"win_{method}" in pi and pi[f"win_{method}"].notna().any():  # e.g. no opposite: not read
                rows.append({"trait": t, "method": method, **_sensitivity(gi, pi, method, P)})
    return pd.DataFrame(rows).set_index(["trait", "method"])


def _sensitivity(gi: pd.DataFrame, pi: pd.DataFrame, method: str, P: Params) -> dict:
    """One trait's gold rows ``gi`` and pairs ``pi`` read by one method (see ``method_sensitivity``)."""
    qs, item_pos = _by_question(gi)
    pair_pos = {q: np.flatnonzero(pi.question.to_numpy() == q) for q in qs}
    gap, win = pi.gap.to_numpy(float), pi[f"win_{method}"].to_numpy(float)
    scored = method in SCORED_METHODS
    x, y = gi[f"trait_{method}" if scored else "trait_absolute"].to_numpy(float), gi.label.to_numpy(float)

    def r(i: np.ndarray) -> float:
        k = _take(item_pos, qs, i)
        ok = ~np.isnan(x[k])
        return unc.pearson(x[k][ok], y[k][ok]) if scored else np.nan

    def acc(i: np.ndarray) -> float:
        k = _take(pair_pos, qs, i)
        return judge_power.accuracy_at(gap[k], win[k])[0]

    def mde(i: np.ndarray) -> float:
        k = _take(pair_pos, qs, i)
        return min(judge_power.mde_gap(judge_power.fit_noise(gap[k], win[k]), P.mde_questions), MDE_CAP)

    b = {name: unc.bootstrap(lambda d, f=f: f(d[None]), len(qs), n_boot=P.n_boot, seed=P.seed)
         for name, f in (("r", r), ("acc", acc), ("mde", mde))}
    a40, n40 = judge_power.accuracy_at(gap, win)
    p_right = (judge_power.accuracy_at(gap, pi[f"p_{method}"].to_numpy(float))[0]
               if method.startswith("pairwise") and f"p_{method}" in pi else np.nan)
    return {"items": len(gi), "questions": len(qs), "pairs": int((~np.isnan(win)).sum()), "pairs_gap40": n40,
            "pearson_r": b["r"].value, "r_ci": b["r"].text(), "accuracy_gap40": a40, "acc_ci": b["acc"].text(),
            "p_right_gap40": p_right,
            "sigma": judge_power.fit_noise(gap, win), f"mde_n{P.mde_questions}": b["mde"].value,
            "mde_ci": b["mde"].text(".1f"), "mde_se": b["mde"].se}


def coherence_sensitivity(scored: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per coherence measure: Pearson r with the gold coherence labels over every trait's rows
    (signed so higher = more coherent; 95% bootstrap CI over questions within trait), and for the
    measures on the 0–100 scale (``SCALE_MEASURES``), how word salad scores against
    ``P.coherence_floor``."""
    strata = {t: _by_question(scored[scored.trait == t]) for t in dict.fromkeys(scored.trait)}
    offset = {t: int(np.flatnonzero(scored.trait.to_numpy() == t)[0]) for t in strata}
    y = scored.coherence.to_numpy(float)
    salad = scored[scored["shape"] == "word_salad"]
    rows = []
    for measure, sign in COHERENCE_MEASURES.items():
        col = f"coherence_{measure}" if measure in SCALE_MEASURES else measure
        if col not in scored:
            continue
        x = sign * scored[col].to_numpy(float)

        def r(d: dict, x: np.ndarray = x) -> float:
            k = np.concatenate([offset[t] + _take(pos, qs, d[t]) for t, (qs, pos) in strata.items()])
            ok = np.isfinite(x[k])
            return unc.pearson(x[k][ok], y[k][ok])

        b = unc.bootstrap(r, {t: len(qs) for t, (qs, _) in strata.items()}, n_boot=P.n_boot, seed=P.seed)
        row = {"measure": measure, "items": len(scored), "pearson_r": b.value, "r_ci": b.text(), "r_se": b.se}
        if measure in SCALE_MEASURES:
            s = salad[col]
            row.update({"word_salad": len(s), "word_salad_max": float(s.max()) if len(s) else np.nan,
                        "word_salad_above_floor": int((s >= P.coherence_floor).sum())})
        rows.append(row)
    return pd.DataFrame(rows).set_index("measure")


def best_methods(sens: pd.DataFrame, P: Params) -> dict[str, str | None]:
    """Per trait, the method with the smallest minimum detectable effect at ``P.mde_questions``
    questions (ties: the earlier in ``METHODS``), None when no method can see any effect.

    This is the method a steering report should read that trait with."""
    col, out = f"mde_n{P.mde_questions}", {}
    for t in dict.fromkeys(sens.index.get_level_values(0)):
        rows = sens.loc[t]
        order = [m for m in METHODS if m in rows.index]
        best = min(order, key=lambda m: (rows.at[m, col], order.index(m)))
        out[t] = best if rows.at[best, col] < MDE_CAP else None
    return out


def method_conclusions(sens: pd.DataFrame, coh: pd.DataFrame, P: Params) -> list[str]:
    """Plain-language findings on the judge methods, every number read from the two tables."""
    n = P.mde_questions
    out = []
    best = best_methods(sens, P)
    for t in dict.fromkeys(sens.index.get_level_values(0)):
        rows = sens.loc[t]
        parts = []
        for m, row in rows.iterrows():
            r = f"r = {row.pearson_r:.2f} {row.r_ci}, " if m in SCORED_METHODS else ""
            parts.append(f"{m}: {r}{_pct(row.accuracy_gap40, row.acc_ci)} of pairs ordered right, "
                         f"MDE {_gap(row[f'mde_n{n}'], row.mde_ci)}")
        verdict = (f"{best[t]} sees the smallest effects" if best[t]
                   else f"no method can see a steering effect with {n} questions")
        backwards = [m for m, row in rows.iterrows() if m in SCORED_METHODS and unc.parse_ci(row.r_ci)[1] < 0]
        if backwards:
            verdict += (f"; {' and '.join(backwards)} read{'s' if len(backwards) == 1 else ''} {t} backwards "
                        "(the whole r CI below 0)")
        out.append(f"{t} ({int(rows.pairs_gap40.iloc[0])} pairs ≥ 40 points apart; MDE at {n} questions, "
                   f"gold points): " + "; ".join(parts) + f" → {verdict}.")
    for m, row in coh.iterrows():
        line = f"coherence, {m}: r = {row.pearson_r:.2f} {row.r_ci} with the gold coherence labels"
        if m in SCALE_MEASURES:
            line += (f"; word salad scored at most {row.word_salad_max:.0f}, {int(row.word_salad_above_floor)}/"
                     f"{int(row.word_salad)} at or above the floor {P.coherence_floor:.0f}")
        out.append(line + ".")
    split = P.gold_split or "both"
    out.append(f"Read on the {split} part of each gold set ({int(sens.questions.iloc[0])} questions for "
               f"{sens.index[0][0]}); the MDE is in gold points: a steering effect smaller than it would "
               f"usually go unseen with {n} questions.")
    return out


def _pct(x: float, ci: str) -> str:
    lo, hi = unc.parse_ci(ci)
    return f"{x:.0%} [{lo:.0%}, {hi:.0%}]" if np.isfinite(x) else "n/a"


def _gap(x: float, ci: str) -> str:
    """An MDE in gold points, "none" at the cap (no gap on the 0–100 scale is detectable)."""
    lo, hi = unc.parse_ci(ci)
    show = lambda v: "none" if v >= MDE_CAP else f"{v:.0f}"  # noqa: E731
    return f"{show(x)} [{show(lo)}, {show(hi)}]"


def method_quantities(sens: pd.DataFrame, coh: pd.DataFrame, P: Params) -> list[records.Quantity]:
    """Record quantities of the method comparison (tolerances: fixed gold text scored, so only float
    noise moves a score: r k = 2 SEs; accuracy one pair flipping; the MDE 3 bootstrap SEs; a word
    salad maximum one point)."""
    n = P.mde_questions
    qs: list[records.Quantity] = []
    for (t, m), row in sens.iterrows():
        if m in SCORED_METHODS:
            qs.append(records.correlation(f"methods.{t}.{m}.r", row.pearson_r, int(row["items"]), k=2))
        if np.isfinite(row.accuracy_gap40):
            qs.append(records.rate(f"methods.{t}.{m}.accuracy_gap40", row.accuracy_gap40, n=int(row.pairs_gap40)))
        se = row.mde_se if np.isfinite(row.mde_se) and row.mde_se > 0 else 1.0
        qs.append(records.estimate(f"methods.{t}.{m}.mde_n{n}", row[f"mde_n{n}"], se=se, n=int(row.questions),
                                   unit="gold points", k=3, ci=unc.parse_ci(row.mde_ci)
                                   if np.isfinite(unc.parse_ci(row.mde_ci)).all() else None))
    for m, row in coh.iterrows():
        qs.append(records.correlation(f"coherence.{m}.r", row.pearson_r, int(row["items"]), k=2))
        if m in SCALE_MEASURES and row.word_salad:
            qs.append(records.Quantity(f"coherence.{m}.word_salad_max", row.word_salad_max, "points",
                                       int(row.word_salad), None, 1.0, "fixed text scored: float noise (1 point)"))
    return qs


# ----------------------------------------------------------------------------------------
# Positive control: a steering vector that visibly changes answers
# ----------------------------------------------------------------------------------------

def control_answers(P: Params, responder: LoadedModel, progress: bool = True) -> pd.DataFrame:
    """The positive control's answers: the responder's optimism direction (``P.control_method``
    on the shipped optimism pairs' train split, mean over response tokens, ``resid_pre`` at
    ``P.control_layer``) added at ratio −r, 0 and +r (r = ``P.control_ratio``) while answering
    ``P.control_questions`` held-out opinion questions. One row per (ratio, question)."""
    site = Site("resid_pre", P.control_layer)
    ds = load_trait("optimism", max_pairs_per_split=P.max_pairs_per_split)
    pos, neg = ds.encode(responder.chat)
    acts = extract(responder, pos + neg, [site], position="mean", batch_size=8, progress=progress)[site]
    train = torch.from_numpy(np.flatnonzero(np.array([p.split for p in ds.pairs]) == "train"))
    d = fit_direction(P.control_method, acts[train], acts[len(ds.pairs) + train], seed=P.seed,
                      site=str(site), trait="optimism")
    qs = opinion_questions("test", P.control_questions, P.questions_file)
    norms = activation_norms(responder, [responder.chat.encode(q) for q in qs.question], [site], batch_size=8)
    conds = [Condition.unsteered(ratio=0.0)] + [
        Condition((at_ratio(site, d.vector, r, norms),), ratio=r) for r in (-P.control_ratio, P.control_ratio)]
    return generate_answers(responder, qs[["question"]], conds, max_new_tokens=P.max_new_tokens,
                            progress=progress, desc="control answers")


CONTROL_CONTRASTS = (("more", 1.0, 0.0), ("less", 0.0, -1.0))
"""The control's comparisons, (name, ratio sign of the answer that should show more optimism,
of the one that should show less): +r vs unsteered, unsteered vs −r."""


def control_wins(judge: Judge, answers: pd.DataFrame, P: Params, anchored: bool = True,
                 progress: bool = True,
                 probe: tuple[probe_reader.ProbeReader, LoadedModel] | None = None) -> pd.DataFrame:
    """Per (contrast, method, question): the method's win (1: it says the answer steered towards
    optimism shows more of it, 0: less, ½: a tie) and, for scored methods, the score difference.
    ``probe``: the optimism probe and its reader model (``probe_reader.fit_gold``), read as one more method."""
    by = {sign: answers[answers.ratio == sign * P.control_ratio].set_index("question").answer
          for sign in (-1.0, 0.0, 1.0)}
    qs = list(by[0.0].index)
    rows = []
    scores: dict[str, dict[float, np.ndarray]] = {}
    for m in JUDGE_SCORED:
        if m == "anchored" and not anchored:
            continue
        got = {sign: trait_scores(judge, m, [(q, ans[q]) for q in qs], "optimism", progress)
               for sign, ans in by.items()}
        if not any(v is None for v in got.values()):  # None: the method does not read optimism
            scores[m] = got
    if probe is not None:  # one pass over every answer, then split by sign
        got = probe_reader.read(probe[0], probe[1], [(q, ans[q]) for ans in by.values() for q in qs], progress=progress)
        scores["probe"] = {sign: got[i * len(qs):(i + 1) * len(qs)] for i, sign in enumerate(by)}
    for name, hi, lo in CONTROL_CONTRASTS:
        for m, sc in scores.items():
            diff = sc[hi] - sc[lo]
            win = np.where(np.isnan(diff), np.nan, (np.sign(diff) + 1) / 2)
            rows += [{"contrast": name, "method": m, "question": q, "win": w, "difference": x}
                     for q, w, x in zip(qs, win, diff, strict=True)]
        got = judge.prefer_many([(q, by[hi][q], by[lo][q]) for q in qs], trait="optimism", progress=progress)
        rows += [{"contrast": name, "method": "pairwise", "question": q,
                  "win": np.nan if g.win is None else g.win, "difference": np.nan} for q, g in zip(qs, got, strict=True)]
    return pd.DataFrame(rows)


def control_table(wins: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (contrast, method): the share of questions the method ordered as the steering intends,
    its 95% bootstrap CI over questions, whether the CI excludes ½ (the effect is seen), and for
    scored methods the mean score difference."""
    rows = []
    for (c, m), g in wins.groupby(["contrast", "method"], sort=False):
        w = g.win.dropna().to_numpy(float)
        b = unc.bootstrap_mean(w, n_boot=P.n_boot, seed=P.seed) if len(w) else None
        lo, hi = b.ci if b is not None else (np.nan, np.nan)
        rows.append({"contrast": c, "method": m, "questions": len(w), "win_rate": b.value if b else np.nan,
                     "win_ci": b.text() if b else "", "seen": bool(lo > 0.5),
                     "mean_difference": float(np.nanmean(g.difference)) if g.difference.notna().any() else np.nan})
    return pd.DataFrame(rows).set_index(["contrast", "method"])


def control_claim(control: pd.DataFrame, sens: pd.DataFrame, P: Params) -> records.Claim:
    """Whether the method chosen for optimism (``best_methods``) sees the positive control's
    steering in both directions (each win-rate CI above ½). Not a claim of the seed's but its
    premise: a judge that reads steered answers must see a steering effect that is visibly there."""
    best = best_methods(sens, P).get("optimism")
    rows = [control.loc[(c, best)] for c, _, _ in CONTROL_CONTRASTS] if best in control.index.get_level_values(1) else []
    seen = bool(rows) and all(r.seen for r in rows)
    ours = ("; ".join(f"{c}: {_pct(r.win_rate, r.win_ci)}" for (c, _, _), r in zip(CONTROL_CONTRASTS, rows, strict=True))
            if rows else "no method can see optimism effects (every MDE at the cap)")
    verdict, why = records.decide(holds=seen)
    if not seen:
        why = ("the steered answers were not told apart from unsteered ones, so either the judge or the "
               "steering is too weak here; " + why)
    return records.Claim(
        "judge_sees_control",
        f"The judge method chosen for optimism ({best or 'none'}) orders answers steered at ±{P.control_ratio} "
        f"(layer {P.control_layer}) as the steering intends, in both directions, on {P.control_questions} questions",
        seed="the seed's judge (gpt-4.1-mini) saw its steering effects", ours=ours, verdict=verdict, reason=why,
        quantity=f"control.more.{best}.win_rate" if best else None)


def control_conclusions(control: pd.DataFrame, P: Params) -> list[str]:
    """One line per method: its win rates on the positive control and whether it saw them."""
    out = []
    for m in dict.fromkeys(control.index.get_level_values(1)):
        parts = []
        for c, _, _ in CONTROL_CONTRASTS:
            if (c, m) in control.index:
                r = control.loc[(c, m)]
                diff = f", mean score difference {r.mean_difference:+.1f}" if np.isfinite(r.mean_difference) else ""
                parts.append(f"{'+r vs 0' if c == 'more' else '0 vs −r'}: {_pct(r.win_rate, r.win_ci)}"
                             f"{diff} ({'seen' if r.seen else 'not seen'})")
        out.append(f"{m}: " + "; ".join(parts) + ".")
    return out
