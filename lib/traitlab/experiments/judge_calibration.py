"""Judge calibration: logprob vs text-parse scores, agreement with a hand-labelled gold set,
and the baseline (unsteered) score of a model's own answers.

The gold set (``data/judge/gold.jsonl``, written and labelled by us) crosses optimism level
(≈10 / 50 / 90) with coherence level (≈93 coherent, ≈40 degraded, ≈7 word salad) over 12
questions. Each response is scored for the trait and for coherence by the same judge in
both modes; agreement is Pearson and Spearman correlation with the gold labels (95%
bootstrap CIs over items) and mean absolute error.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from .. import records
from .. import uncertainty as unc
from ..data import read_project_jsonl
from ..judge import TRAIT_DESCRIPTIONS, Judge, JudgeConfig
from ..models import LoadedModel, describe
from ..params import ParamError


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
    max_gold: int | None = None
    responder_model: str = "qwen2.5-coder-0.5b-instruct"
    n_baseline: int | None = None
    max_new_tokens: int = 64
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trait not in TRAIT_DESCRIPTIONS:
            raise ParamError(f"trait {self.trait!r} has no judge description; known: "
                             f"{', '.join(TRAIT_DESCRIPTIONS)}")
        if self.judge_backend not in ("local", "openai"):
            raise ParamError(f"judge_backend must be 'local' or 'openai', got {self.judge_backend!r}")
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
        describe(self.responder_model)
        if self.judge_backend == "local":
            describe(self.judge_model)

    def judge_config(self, mode: Literal["logprob", "text"]) -> JudgeConfig:
        return JudgeConfig(backend=self.judge_backend, model=self.judge_model,
                           base_url=self.judge_base_url, api_key_env=self.judge_api_key_env,
                           mode=mode, top_logprobs=self.top_logprobs, min_mass=self.min_mass,
                           offline=self.judge_offline, dtype=self.judge_dtype)


def load_gold(max_items: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The labelled gold set; ``max_items`` takes a seeded sample stratified by question."""
    df = pd.DataFrame(read_project_jsonl("judge", "gold.jsonl"))
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
    for mode, judge in judges.items():
        for metric in ("trait", "coherence"):
            s = judge.score_many(metric, items, trait=trait, progress=progress)
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


def by_level(df: pd.DataFrame, modes: list[str]) -> pd.DataFrame:
    """Mean gold label and mean judge score per (coherence level, optimism level) cell."""
    d = df.copy()
    d["optimism_level"] = pd.cut(d.optimism, [-1, 30, 70, 101], labels=["low", "mid", "high"])
    cols = {"optimism": "mean", "coherence": "mean"}
    cols.update({f"{m}_{k}": "mean" for m in ("trait", "coherence") for k in modes})
    return (d.groupby(["level", "optimism_level"], observed=True).agg(cols)
            .rename(columns={"optimism": "gold_trait", "coherence": "gold_coherence"}).round(1))


def baseline_responses(model: LoadedModel, questions: pd.DataFrame, max_new_tokens: int,
                       progress: bool = True) -> pd.DataFrame:
    """The unsteered model's greedy answers to ``questions``."""
    from ..steering import generate_steered

    examples = [model.chat.encode(q) for q in questions.question]
    texts = generate_steered(model, examples, [], max_new_tokens=max_new_tokens, progress=progress)
    return questions.assign(response=[t.strip() for t in texts])


def conclusions(agree: pd.DataFrame, modes_df: pd.DataFrame, baseline: pd.DataFrame,
                judge_model: str, weak_r: float = 0.3) -> list[str]:
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
        out.append(f"Baseline (unsteered) answers, {mode}: optimism {t.mean():.1f} ± {t.std():.1f}, "
                   f"coherence {c.mean():.1f} ± {c.std():.1f} (n = {t.notna().sum()}).")
    out.append(f"Judge: {judge_model}. The seed used gpt-4.1-mini; a small local judge is a "
               "stand-in, and these agreement figures say how far to trust it.")
    return out


SEED_BASELINE = {"text": 10.0, "logprob": 6.1}
"""The seed's baseline (unsteered) trait score with gpt-4.1-mini, by judge mode."""


def record(P: Params, scored: pd.DataFrame, base_scored: pd.DataFrame, agree: pd.DataFrame,
           modes_df: pd.DataFrame) -> records.ResultRecord:
    """The report's result record: agreement with gold, mode agreement, baseline, seed claims.

    ``scored``/``base_scored``: ``score`` of the gold set and of the baseline answers;
    ``agree``/``modes_df``: the ``agreement`` and ``mode_agreement`` tables (kept as tables).

    Tolerance rules (the noise of each quantity across CPUs):

    - counts of gold items and baseline questions: exact;
    - share of items a mode scored: a rate over items, one item flipping;
    - Pearson r with the gold labels: ``k`` × (1 − r²)/√(n − 3) over gold items; the responses are
      fixed text, so a logprob score moves only by float noise (k = 2), while a text-parse score is
      a greedy generation that can flip to another integer (k = 3);
    - MAE, baseline means and mode differences: ``k`` SEs over items (k = 3 wherever the judge
      generates text or scores the responder's generated answers, k = 2 otherwise);
    - the r difference logprob − text: k = 3 bootstrap SEs over gold items (``P.n_boot``).
    """
    gold = {"trait": "optimism", "coherence": "coherence"}
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
    diff, diff_se, diff_ci = _r_difference(scored, "trait", "optimism", P.n_boot, P.seed)
    qs.append(records.estimate("trait_r_logprob_minus_text", diff, se=diff_se, n=len(scored), k=3,
                               ci=diff_ci if np.isfinite(diff_ci).all() else None))
    for metric in ("trait", "coherence"):
        for mode in ("logprob", "text"):
            qs.append(records.score_mean(f"baseline_{metric}_{mode}", base_scored[f"{metric}_{mode}"], k=3))
    paired = base_scored.trait_logprob - base_scored.trait_text
    qs.append(records.score_mean("baseline_trait_logprob_minus_text", paired, k=3))
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
    tables = {"agreement": agree, "modes": modes_df,
              "baseline": base_scored[["trait_logprob", "trait_text", "coherence_logprob",
                                       "coherence_text"]].describe().round(2)}
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
