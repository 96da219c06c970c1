"""Steering transfer along a base → SFT → DPO chain, judged 0–100 for trait and coherence.

Trait vectors are extracted **from the base model only** (``vector_method`` on the trait's
contrastive pairs at ``site``, one unit vector per layer) and added, unchanged, to every
model in the chain during generation. Strength is set as a perturbation ratio
``coef × ‖v‖ / ‖activation‖`` against each steered model's own activation norm at that
site (``traitlab.steering.activation_norms`` over the question prompts), so one ratio means
the same relative push in every model. Controls: the unsteered baseline, and a seeded random
unit vector at the same layer and ratios. Multi-layer steering adds each layer's own base
vector at every layer of ``multi_layers``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .. import chain, records, steered_eval
from .. import uncertainty as unc
from ..activations import extract
from ..chat import ChatFormat
from ..data import load_trait, opinion_questions
from ..directions import METHODS, fit_direction, random_unit
from ..judge import TRAIT_DESCRIPTIONS, Judge, judge_from_params
from ..models import LoadedModel, describe, load_model
from ..params import ParamError, traits_folder
from ..sites import SITE_NAMES, Site
from ..steered_eval import Condition, at_ratio, generate_answers
from ..steering import Steer, activation_norms

SEED = pd.DataFrame(
    [("SFT", 12, 84.0, 76.0), ("DPO", 12, 83.0, 82.0), ("SFT", 8, 82.5, np.nan),
     ("DPO", 8, 65.8, np.nan), ("DPO", 24, 1.1, 6.3)],
    columns=["model", "layer", "trait", "coherence"])
"""The seed's transfer numbers (Mistral-7B base vectors; 32 layers; DPO L24 at coef 6)."""
SEED_MULTI = {"multi (layers 6–10)": 90.8, "best single layer": 89.3, "baseline": 61.3}
SWEET_SPOT = (0.5, 0.8)
BROKEN_FROM = 1.3


@dataclass(frozen=True)
class Params:
    chain_profile: str = "default"
    models: dict[str, str] | None = None
    prompt_format: Literal["plain", "auto"] = "plain"
    trait: str = "optimism"
    vector_method: str = "mean_diff"
    site: str = "resid_pre"
    layers: list[int] = field(default_factory=lambda: [3, 6, 9, 12, 15])
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.5])
    multi_layers: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    multi_ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    random_seed: int = 1
    random_ratios: list[float] | None = None
    positions: Literal["response", "all"] = "response"
    n_questions: int | None = 12
    max_new_tokens: int = 48
    coherence_floor: float = 50.0
    judge_backend: Literal["local", "openai"] = "local"
    judge_model: str = "qwen2.5-coder-1.5b-instruct"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_offline: bool = False
    judge_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    min_mass: float = 0.25
    batch_size: int = 16
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""

    def __post_init__(self) -> None:
        if self.trait not in TRAIT_DESCRIPTIONS:
            raise ParamError(f"trait {self.trait!r} has no judge description; known: "
                             f"{', '.join(TRAIT_DESCRIPTIONS)}")
        if self.vector_method not in METHODS:
            raise ParamError(f"vector_method {self.vector_method!r} unknown; choose from {', '.join(METHODS)}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, resid_post, attn_out, mlp_out; got {self.site!r}")
        if not self.layers or not self.ratios:
            raise ParamError("layers and ratios must be non-empty")
        if any(r <= 0 for r in self.ratios + self.multi_ratios):
            raise ParamError("ratios must be > 0 (the trait direction is signed towards the trait)")
        if self.random_ratios is not None and not set(self.random_ratios) <= set(self.ratios):
            raise ParamError(f"random_ratios {self.random_ratios} must be a subset of ratios {self.ratios} "
                             "(the control is compared at the same perturbation ratio)")
        if self.judge_dtype not in ("auto", "float32", "bfloat16"):
            raise ParamError(f"judge_dtype must be 'auto', 'float32' or 'bfloat16', got {self.judge_dtype!r}")
        if self.models is not None and set(self.models) != {"base", "sft", "dpo"}:
            raise ParamError(f"models must name exactly base, sft and dpo; got {sorted(self.models)}")
        if self.n_questions is not None and self.n_questions < 2:
            raise ParamError(f"n_questions must be >= 2 or null, got {self.n_questions}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ParamError("max_new_tokens and batch_size must be >= 1")
        if not 0 <= self.coherence_floor <= 100:
            raise ParamError(f"coherence_floor must be in [0, 100], got {self.coherence_floor}")

    def chain_params(self) -> chain.ChainParams:
        return chain.profile_params(self.chain_profile)

    def check(self) -> None:
        """Layer ranges against the base model's config (no weights read)."""
        base = self.models["base"] if self.models else self.chain_params().base_model
        info = describe(base)
        bad = [x for x in set(self.layers) | set(self.multi_layers) if not 0 <= x < info.n_layers]
        if bad:
            raise ParamError(f"layers {sorted(bad)} out of range for {base} (0..{info.n_layers - 1})")

    def judge(self) -> Judge:
        return judge_from_params(self)


def chain_models(P: Params, progress: bool = True) -> dict[str, str]:
    """Model specs of base, SFT and DPO: given, or built/reused from the chain profile."""
    if P.models is not None:
        return dict(P.models)
    return chain.build(P.chain_params(), progress=progress).paths


def _fmt(P: Params, m: LoadedModel) -> ChatFormat:
    return ChatFormat.plain(m.tokenizer) if P.prompt_format == "plain" else m.chat


def base_vectors(P: Params, base: LoadedModel, progress: bool = True) -> dict[int, torch.Tensor]:
    """One unit trait vector per layer, from the base model's train-split pairs."""
    ds = load_trait(P.trait, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(_fmt(P, base), "train")
    layers = sorted(set(P.layers) | set(P.multi_layers))
    sites = [Site(P.site, x) for x in layers]
    acts = extract(base, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    n = len(pos)
    return {s.layer: fit_direction(P.vector_method, acts[s][:n], acts[s][n:], seed=P.seed, site=str(s),
                                  model=base.spec, trait=P.trait).vector
            for s in sites}


def conditions(P: Params) -> list[dict]:
    """Every steering condition of one model (baseline first)."""
    out = [{"kind": "baseline", "layer": -1, "ratio": 0.0}]
    out += [{"kind": "single", "layer": x, "ratio": r} for x in P.layers for r in P.ratios]
    rr = P.ratios if P.random_ratios is None else P.random_ratios
    out += [{"kind": "random", "layer": x, "ratio": r} for x in P.layers for r in rr]
    if P.multi_layers:
        out += [{"kind": "multi", "layer": -1, "ratio": r} for r in P.multi_ratios]
    return out


def _steers(P: Params, c: dict, vectors: dict[int, torch.Tensor], rand: torch.Tensor,
            norms: dict[str, float]) -> list[Steer]:
    if c["kind"] == "baseline":
        return []
    if c["kind"] == "multi":
        return [at_ratio(Site(P.site, x), vectors[x], c["ratio"], norms) for x in P.multi_layers]
    v = vectors[c["layer"]] if c["kind"] == "single" else rand
    return [at_ratio(Site(P.site, c["layer"]), v, c["ratio"], norms)]


def steer_all(P: Params, specs: dict[str, str], vectors: dict[int, torch.Tensor],
              questions: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Generate every model × condition × question; one row per answer (``coef``: the raw
    coefficient of single and random conditions)."""
    frames = []
    layers = sorted(set(P.layers) | set(P.multi_layers))
    prompts = questions[["id", "question"]].rename(columns={"id": "question_id"})
    for name, spec in specs.items():
        m = load_model(spec, quiet=True)
        fmt = _fmt(P, m)
        norms = activation_norms(m, [fmt.encode(q) for q in questions.question],
                                 [Site(P.site, x) for x in layers], batch_size=P.batch_size)
        rand = random_unit(m.d_model, P.random_seed)
        conds = []
        for c in conditions(P):
            steers = _steers(P, c, vectors, rand, norms)
            coef = steers[0].coef if c["kind"] in ("single", "random") else np.nan
            conds.append(Condition(steers, model=name, **c, coef=coef))
        frames.append(generate_answers(m, prompts, conds, encode=fmt.encode, max_new_tokens=P.max_new_tokens,
                                       positions=P.positions, batch_size=P.batch_size, progress=progress,
                                       desc=f"steer {name}"))
        del m
    return pd.concat(frames, ignore_index=True)


def judge_answers(judge: Judge, answers: pd.DataFrame, trait: str, progress: bool = True
                  ) -> pd.DataFrame:
    """Add the judge's ``trait`` and ``coherence`` scores (columns of those names)."""
    return steered_eval.judge_answers(judge, answers, ("trait", "coherence"), trait=trait, progress=progress)


def summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Mean trait and coherence per model × condition (with the number judged)."""
    return (scored.groupby(["model", "kind", "layer", "ratio"], sort=False)
            .agg(trait=("trait", "mean"), coherence=("coherence", "mean"), coef=("coef", "first"),
                 n=("trait", "count")).reset_index().round(2))


def best_per_layer(summ: pd.DataFrame, floor: float) -> pd.DataFrame:
    """For each model and layer, the ratio with the highest trait at coherence ≥ floor."""
    s = summ[(summ.kind == "single") & (summ.coherence >= floor)]
    idx = s.groupby(["model", "layer"]).trait.idxmax()
    best = s.loc[idx, ["model", "layer", "ratio", "coef", "trait", "coherence"]]
    base = summ[summ.kind == "baseline"].set_index("model").trait
    return best.assign(delta=lambda d: d.trait - d.model.map(base)).reset_index(drop=True)


def by_ratio(summ: pd.DataFrame) -> pd.DataFrame:
    """Trait and coherence against perturbation ratio, averaged over layers (single vs random)."""
    s = summ[summ.kind.isin(["single", "random"])]
    return s.groupby(["model", "kind", "ratio"]).agg(trait=("trait", "mean"),
                                                     coherence=("coherence", "mean")).reset_index()


def multi_vs_single(summ: pd.DataFrame, floor: float) -> pd.DataFrame:
    """Best multi-layer condition vs best single layer (both at coherence ≥ floor) per model."""
    rows = []
    for model, g in summ.groupby("model", sort=False):
        base = g[g.kind == "baseline"].iloc[0]
        row = {"model": model, "baseline_trait": base.trait, "baseline_coherence": base.coherence}
        for kind in ("single", "multi"):
            ok = g[(g.kind == kind) & (g.coherence >= floor)]
            b = ok.loc[ok.trait.idxmax()] if len(ok) else None
            row[f"{kind}_trait"] = b.trait if b is not None else np.nan
            row[f"{kind}_coherence"] = b.coherence if b is not None else np.nan
            row[f"{kind}_at"] = (f"L{b.layer} r={b.ratio}" if kind == "single" else f"r={b.ratio}") \
                if b is not None else "none coherent"
        rows.append(row)
    return pd.DataFrame(rows).set_index("model").round(2)


def learned_vs_random(summ: pd.DataFrame) -> pd.DataFrame:
    """Mean trait shift over baseline, learned vs random direction, per model and ratio."""
    base = summ[summ.kind == "baseline"].set_index("model").trait
    s = summ[summ.kind.isin(["single", "random"])].copy()
    s["trait_shift"] = s.trait - s.model.map(base)
    return s.pivot_table(index=["model", "ratio"], columns="kind", values="trait_shift").round(2)


def conclusions(summ: pd.DataFrame, best: pd.DataFrame, multi: pd.DataFrame,
                lvr: pd.DataFrame, floor: float) -> list[str]:
    """Plain-language findings, each number from the tables above."""
    out = []
    for model in summ.model.unique():
        b = best[best.model == model]
        base = summ[(summ.model == model) & (summ.kind == "baseline")].iloc[0]
        if len(b):
            top = b.loc[b.trait.idxmax()]
            out.append(f"{model}: baseline trait {base.trait:.1f} (coherence {base.coherence:.1f}); best "
                       f"coherent steering L{top.layer} at ratio {top.ratio}: trait {top.trait:.1f}, "
                       f"coherence {top.coherence:.1f} (Δ {top.delta:+.1f}).")
        else:
            out.append(f"{model}: no steered condition stayed above coherence {floor}.")
    if {"sft", "dpo"} <= set(best.model):
        j = best[best.model == "sft"].merge(best[best.model == "dpo"], on="layer", suffixes=("_sft", "_dpo"))
        if len(j):
            gap = j.assign(gap=j.trait_sft - j.trait_dpo).sort_values("gap", ascending=False).iloc[0]
            out.append(f"Largest SFT − DPO gap in best coherent trait: layer {gap.layer} "
                       f"({gap.trait_sft:.1f} vs {gap.trait_dpo:.1f}); seed: layer 8 of 32, 82.5 vs 65.8.")
    for model, r in multi.iterrows():
        out.append(f"{model}: multi-layer best {r.multi_trait:.1f} ({r.multi_at}) vs best single "
                   f"{r.single_trait:.1f} ({r.single_at}), baseline {r.baseline_trait:.1f}; seed "
                   "90.8 vs 89.3 (baseline 61.3).")
    if "random" in lvr and "single" in lvr:
        d = (lvr["single"] - lvr["random"]).groupby(level="model").mean()
        out.append("Learned minus random trait shift, averaged over the ratios where the control ran: "
                   + ", ".join(f"{m} {v:+.1f}" for m, v in d.items()) + ".")
    return out


def questions(P: Params) -> pd.DataFrame:
    return opinion_questions("test", P.n_questions)


def _cell(scored: pd.DataFrame, model: str, kind: str, layer: int | None = None,
          ratio: float | None = None, col: str = "trait") -> pd.Series:
    """One condition's per-question scores (indexed by question id)."""
    m = (scored.model == model) & (scored.kind == kind)
    if layer is not None:
        m &= scored.layer == layer
    if ratio is not None:
        m &= np.isclose(scored.ratio, ratio)
    return scored[m].set_index("question_id")[col]


def _paired(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Per-question ``a − b`` over the questions both scored."""
    d = (a - b).to_numpy(float) if len(a) and len(b) else np.array([])
    return d[np.isfinite(d)]


def _top(best: pd.DataFrame, model: str, layer: int | None = None) -> pd.Series | None:
    b = best[(best.model == model) & ((best.layer == layer) if layer is not None else True)]
    return b.loc[b.trait.idxmax()] if len(b) else None


def _best_coherent(summ: pd.DataFrame, model: str, kind: str, floor: float) -> pd.Series | None:
    ok = summ[(summ.model == model) & (summ.kind == kind) & (summ.coherence >= floor)]
    return ok.loc[ok.trait.idxmax()] if len(ok) else None


def record(P: Params, scored: pd.DataFrame, summ: pd.DataFrame, best: pd.DataFrame,
           multi: pd.DataFrame, lvr: pd.DataFrame) -> records.ResultRecord:
    """The transfer report's result record: per-model baseline and best coherent steering, the
    SFT − DPO gap at the earliest layer, multi vs single layer, learned vs random, seed claims.

    Every score is the judge's reading of a generated answer, so every judge quantity uses
    ``k = 3`` SEs over questions (paired by question for differences; the SE from a handful of
    questions is inflated by its t quantile, ``_evidence.score_mean``); the counts of questions and
    conditions are exact. Which layer/ratio is "best" is an argmax over noisy cells: it is kept in
    the tables and in the claims' text, not as a quantity.
    """
    floor = P.coherence_floor
    models = list(dict.fromkeys(scored.model))
    qs: list[records.Quantity] = [
        records.exact("n_questions", scored.question_id.nunique(), unit="questions"),
        records.exact("n_conditions", len(conditions(P)), unit="conditions"),
        records.exact("n_models", len(models), unit="models")]
    deltas: dict[str, np.ndarray] = {}
    for m in models:
        base = _cell(scored, m, "baseline")
        qs.append(records.score_mean(f"{m}_baseline_trait", base, k=3))
        qs.append(records.score_mean(f"{m}_baseline_coherence", _cell(scored, m, "baseline", col="coherence"), k=3))
        top = _top(best, m)
        steered = (_cell(scored, m, "single", top.layer, top.ratio) if top is not None
                   else pd.Series(dtype=float))
        qs.append(records.score_mean(f"{m}_best_trait", steered, k=3))
        deltas[m] = _paired(steered, base)
        qs.append(records.score_mean(f"{m}_best_delta", deltas[m], k=3))
        # per question: learned − random at every (layer, ratio) where the control ran, averaged
        parts = [_cell(scored, m, "single", x, r) - _cell(scored, m, "random", x, r)
                 for x in P.layers for r in (P.ratios if P.random_ratios is None else P.random_ratios)]
        per_q = pd.concat(parts, axis=1).mean(axis=1)
        qs.append(records.score_mean(f"{m}_learned_minus_random", per_q, k=3))
    early = min(P.layers)
    s_top, d_top = _top(best, "sft", early), _top(best, "dpo", early)
    gap = (_paired(_cell(scored, "sft", "single", early, s_top.ratio),
                   _cell(scored, "dpo", "single", early, d_top.ratio))
           if s_top is not None and d_top is not None else np.array([]))
    qs.append(records.score_mean("sft_minus_dpo_early", gap, k=3))
    bm, bs = _best_coherent(summ, "dpo", "multi", floor), _best_coherent(summ, "dpo", "single", floor)
    mvs = (_paired(_cell(scored, "dpo", "multi", ratio=bm.ratio), _cell(scored, "dpo", "single", bs.layer, bs.ratio))
           if bm is not None and bs is not None else np.array([]))
    qs.append(records.score_mean("dpo_multi_minus_single", mvs, k=3))
    push = _cell(scored, "dpo", "single", max(P.layers), max(P.ratios), col="coherence")
    qs.append(records.score_mean("dpo_coherence_max_push", push, k=3))
    by = {q.name: q for q in qs}

    def steers(name: str) -> bool:
        ci = by[name].ci
        return ci is not None and ci[0] > 0

    claims = []
    both = steers("sft_best_delta") and steers("dpo_best_delta")
    v, why = records.decide(holds=both, positive_control=steers("base_best_delta") if "base" in models else None)
    if v == "not held":
        why = "the base vectors steer the base model (positive control) but not both fine-tunes"
    fmt = records.format_quantity
    claims.append(records.Claim(
        "transfer_works", "Base-model vectors steer the SFT and the DPO model (best coherent Δ trait > 0)",
        seed="trait 84.3 (SFT), 83.2 (DPO) at L12", ours=f"Δ SFT {fmt(by['sft_best_delta'])}; "
        f"Δ DPO {fmt(by['dpo_best_delta'])}", verdict=v, reason=why, quantity="dpo_best_delta"))
    v, why = records.decide(holds=steers("sft_minus_dpo_early"), seed_effect=82.5 - 65.8,
                            mde=unc.score_mde(gap))
    claims.append(records.Claim(
        "dpo_resists_early", f"At an early layer (ours: L{early}, the earliest steered) DPO reaches a lower "
        "best coherent trait than SFT", seed="L8 of 32: SFT 82.5 vs DPO 65.8", ours="", verdict=v,
        reason=why, quantity="sft_minus_dpo_early"))
    s_all, d_all = _top(best, "sft"), _top(best, "dpo")
    same = s_all is not None and d_all is not None and int(s_all.layer) == int(d_all.layer)
    v, why = records.decide(holds=same, comparable=len(P.layers) > 1,
                            comparable_reason=f"one steered layer ({P.layers}): no best layer to compare")
    if v == "inconclusive":
        why = ("the best layers differ or are missing, and a best layer is an argmax over noisy cells "
               "with no test of the difference")
    where = (f"SFT L{int(s_all.layer)}, DPO L{int(d_all.layer)}" if s_all is not None and d_all is not None
             else "no coherent condition in one model")
    claims.append(records.Claim("optimal_layer_preserved", "SFT and DPO share their best steering layer",
                                seed="L12 for both", ours=where, verdict=v, reason=why))
    v, why = records.decide(holds=steers("dpo_multi_minus_single"),
                            seed_effect=SEED_MULTI["multi (layers 6–10)"] - SEED_MULTI["best single layer"],
                            mde=unc.score_mde(mvs),
                            comparable=bool(P.multi_layers and P.multi_ratios),
                            comparable_reason="no multi-layer condition in this run")
    claims.append(records.Claim(
        "multi_beats_single", "Multi-layer steering beats the best single layer (DPO model, both coherent)",
        seed="90.8 vs 89.3 (baseline 61.3)", ours="", verdict=v, reason=why, quantity="dpo_multi_minus_single"))
    pc = by["dpo_coherence_max_push"].ci
    v, why = records.decide(holds=pc is not None and pc[1] < floor, comparable=max(P.ratios) > BROKEN_FROM,
                            comparable_reason=f"our largest ratio {max(P.ratios)} does not reach the "
                                              f"seed's broken region (> {BROKEN_FROM})")
    claims.append(records.Claim(
        "dpo_cliff", f"Pushed hardest (L{max(P.layers)}, ratio {max(P.ratios)}) the DPO model collapses "
        f"(coherence below {floor:g})", seed="L24, coef 6: trait 1.1, coherence 6.3", ours="",
        verdict=v, reason=why, quantity="dpo_coherence_max_push"))
    tables = {"summary": summ, "best_per_layer": best, "multi_vs_single": multi,
              "learned_vs_random": lvr}
    chain_name = f"chain:{P.chain_profile}" if P.models is None else "→".join(P.models.values())
    return records.ResultRecord("sft_dpo_transfer", model=chain_name, quantities=tuple(qs),
                                claims=tuple(claims), tables=tables, params=asdict(P))
