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

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..activations import extract
from ..chat import ChatFormat
from ..data import load_trait
from ..directions import METHODS, fit_direction
from ..judge import TRAIT_DESCRIPTIONS, Judge, judge_from_params
from ..models import LoadedModel, describe, load_model
from ..params import ParamError, load_profile, traits_folder, validate
from ..sites import SITE_NAMES, Site
from ..steering import Steer, activation_norms, generate_steered
from . import judge_calibration, model_chain

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
    judge_dtype: Literal["float32", "bfloat16"] = "float32"
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
        if self.judge_dtype not in ("float32", "bfloat16"):
            raise ParamError(f"judge_dtype must be 'float32' or 'bfloat16', got {self.judge_dtype!r}")
        if self.models is not None and set(self.models) != {"base", "sft", "dpo"}:
            raise ParamError(f"models must name exactly base, sft and dpo; got {sorted(self.models)}")
        if self.n_questions is not None and self.n_questions < 2:
            raise ParamError(f"n_questions must be >= 2 or null, got {self.n_questions}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ParamError("max_new_tokens and batch_size must be >= 1")
        if not 0 <= self.coherence_floor <= 100:
            raise ParamError(f"coherence_floor must be in [0, 100], got {self.coherence_floor}")

    def chain_params(self) -> model_chain.Params:
        values = load_profile("model_chain", self.chain_profile)
        return validate(model_chain.Params, values, where=f"params/model_chain/{self.chain_profile}.yaml")

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
    return model_chain.build(P.chain_params(), progress=progress).paths


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
    return {s.layer: fit_direction(P.vector_method, acts[s][:n], acts[s][n:], seed=P.seed).vector
            for s in sites}


def random_vector(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def conditions(P: Params) -> list[dict]:
    """Every steering condition of one model (baseline first)."""
    out = [{"kind": "baseline", "layer": -1, "ratio": 0.0}]
    out += [{"kind": "single", "layer": x, "ratio": r} for x in P.layers for r in P.ratios]
    rr = P.ratios if P.random_ratios is None else P.random_ratios
    out += [{"kind": "random", "layer": x, "ratio": r} for x in P.layers for r in rr]
    if P.multi_layers:
        out += [{"kind": "multi", "layer": -1, "ratio": r} for r in P.multi_ratios]
    return out


def steer_all(P: Params, specs: dict[str, str], vectors: dict[int, torch.Tensor],
              questions: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Generate every model × condition × question; one row per answer."""
    rows = []
    layers = sorted(set(P.layers) | set(P.multi_layers))
    for name, spec in specs.items():
        m = load_model(spec, quiet=True)
        fmt = _fmt(P, m)
        examples = [fmt.encode(q) for q in questions.question]
        norms = activation_norms(m, examples, [Site(P.site, x) for x in layers],
                                 batch_size=P.batch_size)
        act = {x: norms[str(Site(P.site, x))] for x in layers}
        rand = random_vector(m.d_model, P.random_seed)
        for c in tqdm(conditions(P), desc=f"steer {name}", disable=not progress):
            if c["kind"] == "baseline":
                steers = []
            elif c["kind"] == "multi":
                steers = [Steer(Site(P.site, x), vectors[x], c["ratio"] * act[x]) for x in P.multi_layers]
            else:
                v = vectors[c["layer"]] if c["kind"] == "single" else rand
                steers = [Steer(Site(P.site, c["layer"]), v, c["ratio"] * act[c["layer"]])]
            texts = generate_steered(m, examples, steers, max_new_tokens=P.max_new_tokens,
                                     positions=P.positions, batch_size=P.batch_size)
            coef = c["ratio"] * act[c["layer"]] if c["kind"] in ("single", "random") else np.nan
            for q, t in zip(questions.itertuples(), texts, strict=True):
                rows.append({"model": name, **c, "coef": coef, "question_id": q.id,
                             "question": q.question, "answer": t.strip()})
        del m
    return pd.DataFrame(rows)


def judge_answers(judge: Judge, answers: pd.DataFrame, trait: str, progress: bool = True
                  ) -> pd.DataFrame:
    items = list(zip(answers.question, answers.answer, strict=True))
    out = answers.copy()
    for metric in ("trait", "coherence"):
        s = judge.score_many(metric, items, trait=trait, progress=progress)
        out[metric] = np.array([np.nan if x.value is None else x.value for x in s], dtype=float)
    return out


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
    return judge_calibration.load_questions("test", P.n_questions)
