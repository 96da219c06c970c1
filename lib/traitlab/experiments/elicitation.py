"""Natural vs instruction-based elicitation of a trait vector.

- **Natural** vector: ``method`` on our contrastive scenario pairs (``data/traits/<trait>.jsonl``,
  train split): written responses that show the trait or not, read by the model.
- **Instruction** vector: the model answers neutral questions under a system prompt that asks for
  the trait and under one that asks for its opposite (``data/elicitation/instructions.jsonl``);
  ``method`` on the response-mean activations of its *own* answers (system prompt included in the
  context), train questions only.

Compared per layer: cosine similarity; cross-projection (each vector classifying the other
source's held-out examples: natural val pairs, instruction answers to test questions); and
steering: each vector added at ``steer_layers`` (response positions, coefficient = ``ratio`` ×
the site's mean activation norm) on the test questions, *without* any system prompt, trait
scored by the judge, delta vs unsteered.

Example:
    >>> sorted(instructions())
    ['optimism', 'sycophancy']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .. import records
from .. import uncertainty as unc
from ..activations import extract
from ..chat import Encoded
from ..data import load_trait, opinion_questions, read_project_jsonl
from ..directions import METHODS, fit_direction
from ..judge import TRAIT_DESCRIPTIONS, Judge, judge_from_params
from ..metrics import evaluate
from ..models import LoadedModel, describe
from ..params import ParamError, traits_folder
from ..sites import SITE_NAMES, Site, check_sites
from ..steered_eval import Condition, at_ratio, generate_answers, judge_answers, paired_effects
from ..steering import activation_norms, generate_steered

SEED = pd.DataFrame([("optimism", 0.63, np.nan, True, True), ("sycophancy", 0.20, 84.0, False, True)],
                    columns=["trait", "cosine", "natural_detect_pct", "natural_steers", "instruction_steers"]
                    ).set_index("trait")
"""The seed's elicitation comparison (Qwen2.5-7B-Instruct): cosine natural vs instruction, whether each steers."""


def instructions() -> dict[str, dict[str, str]]:
    """trait → {positive, negative} system prompts (``data/elicitation/instructions.jsonl``)."""
    return {r["trait"]: r for r in read_project_jsonl("elicitation", "instructions.jsonl")}


def questions(trait: str, split: str, n: int | None) -> pd.DataFrame:
    """Neutral questions for a trait: sycophancy has its own set; others use the opinion questions."""
    if trait == "sycophancy":
        df = pd.DataFrame(read_project_jsonl("elicitation", "sycophancy_questions.jsonl"))
        df = df[df.split == split].reset_index(drop=True)
    else:
        df = opinion_questions(split)
    return df.head(n) if n is not None else df


@dataclass(frozen=True)
class Params:
    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    traits: list[str] = field(default_factory=lambda: ["optimism", "sycophancy"])
    method: str = "mean_diff"
    site: str = "resid_pre"
    layers: list[int] = field(default_factory=lambda: [4, 8, 12, 16, 20])
    steer_layers: list[int] = field(default_factory=lambda: [8, 12])
    ratio: float = 0.75
    n_instruction_questions: int = 10
    n_test_questions: int = 6
    max_new_tokens: int = 40
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
        if not self.traits:
            raise ParamError("traits is empty")
        missing = [t for t in self.traits if t not in TRAIT_DESCRIPTIONS]
        if missing:
            raise ParamError(f"traits {missing} have no judge description; known: {', '.join(TRAIT_DESCRIPTIONS)}")
        if self.method not in METHODS or self.method == "random":
            raise ParamError(f"method {self.method!r} unknown; choose from {', '.join(m for m in METHODS if m != 'random')}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, attn_out, mlp_out, resid_post; got {self.site!r}")
        if not self.layers or not set(self.steer_layers) <= set(self.layers):
            raise ParamError(f"steer_layers {self.steer_layers} must be a subset of layers {self.layers}")
        if self.ratio <= 0:
            raise ParamError(f"ratio must be > 0, got {self.ratio}")
        for name in ("n_instruction_questions", "n_test_questions"):
            if getattr(self, name) < 2:
                raise ParamError(f"{name} must be >= 2, got {getattr(self, name)}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")

    def check(self) -> list[Site]:
        info = describe(self.model, self.revision)
        sites = [Site(self.site, x) for x in self.layers]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        known = instructions()
        for t in self.traits:
            load_trait(t, folder=traits_folder(self.traits_dir))
            if t not in known:
                raise ParamError(f"no system prompts for {t!r} in data/elicitation/instructions.jsonl "
                                 f"(have {', '.join(known)})")
            for split, n in (("train", self.n_instruction_questions), ("test", self.n_test_questions)):
                if len(questions(t, split, n)) < n:
                    raise ParamError(f"{t}: only {len(questions(t, split, None))} {split} questions, asked for {n}")
        if self.judge_backend == "local":
            describe(self.judge_model)
        return sites

    def judge(self) -> Judge:
        return judge_from_params(self)


@dataclass(frozen=True)
class TraitVectors:
    natural: dict[int, torch.Tensor]
    instruction: dict[int, torch.Tensor]
    natural_val: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer → (pos, neg) val activations
    instruction_val: dict[int, tuple[torch.Tensor, torch.Tensor]]
    instruction_answers: pd.DataFrame  # split, question, polarity, answer


def _instructed_answers(P: Params, lm: LoadedModel, trait: str) -> pd.DataFrame:
    sysp = instructions()[trait]
    rows = []
    for split, n in (("train", P.n_instruction_questions), ("test", P.n_test_questions)):
        qs = list(questions(trait, split, n).question)
        for pol in ("positive", "negative"):
            ex = [lm.chat.encode(q, system=sysp[pol]) for q in qs]
            texts = generate_steered(lm, ex, [], max_new_tokens=P.max_new_tokens, batch_size=P.batch_size)
            rows += [{"split": split, "question": q, "polarity": pol, "answer": t.strip()} for q, t in zip(qs, texts, strict=True)]
    return pd.DataFrame(rows)


def trait_vectors(P: Params, lm: LoadedModel, trait: str, sites: list[Site], progress: bool = True) -> TraitVectors:
    """Both vectors per layer, and each source's held-out activations for cross-projection."""
    ds = load_trait(trait, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(lm.chat)
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    split = np.array([p.split for p in ds.pairs])
    n = len(ds.pairs)
    tr, va = torch.from_numpy(np.flatnonzero(split == "train")), torch.from_numpy(np.flatnonzero(split == "val"))
    ans = _instructed_answers(P, lm, trait)
    sysp = instructions()[trait]
    enc: list[Encoded] = [lm.chat.encode(r.question, r.answer or " ", system=sysp[r.polarity]) for r in ans.itertuples()]
    iacts = extract(lm, enc, sites, position="mean", batch_size=P.batch_size, progress=progress)
    itr = torch.tensor(np.flatnonzero(ans.split == "train"))
    ite = torch.tensor(np.flatnonzero(ans.split == "test"))
    ipos = torch.tensor((ans.polarity == "positive").to_numpy())
    nat, ins, nval, ival = {}, {}, {}, {}
    for s in sites:
        nat[s.layer] = fit_direction(P.method, acts[s][tr], acts[s][n + tr], seed=P.seed, site=str(s),
                                     trait=f"{trait}/natural").vector
        a = iacts[s]
        tp, tn = a[itr][ipos[itr]], a[itr][~ipos[itr]]
        ins[s.layer] = fit_direction(P.method, tp, tn, seed=P.seed, site=str(s), trait=f"{trait}/instructed").vector
        nval[s.layer] = (acts[s][va], acts[s][n + va])
        ival[s.layer] = (a[ite][ipos[ite]], a[ite][~ipos[ite]])
    return TraitVectors(nat, ins, nval, ival, ans)


def compare(trait: str, tv: TraitVectors) -> pd.DataFrame:
    """Per layer: cosine(natural, instruction) and the four detection accuracies (vector × held-out source)."""
    rows = []
    for layer in tv.natural:
        n, i = tv.natural[layer], tv.instruction[layer]
        row = {"trait": trait, "layer": layer, "cosine": float(torch.nn.functional.cosine_similarity(n, i, dim=0))}
        for vname, v in (("natural", n), ("instruction", i)):
            for dname, (p, q) in (("natural", tv.natural_val[layer]), ("instruction", tv.instruction_val[layer])):
                m = evaluate(v, p, q)
                row[f"{vname}_on_{dname}_acc"] = 100 * m.val_accuracy
                row[f"{vname}_on_{dname}_auroc"] = m.auroc
        rows.append(row)
    return pd.DataFrame(rows).set_index(["trait", "layer"])


def steer(P: Params, lm: LoadedModel, trait: str, tv: TraitVectors, progress: bool = True) -> pd.DataFrame:
    """Unsteered and steered answers (no system prompt) to the trait's test questions."""
    qs = questions(trait, "test", P.n_test_questions)[["question"]]
    sites = [Site(P.site, x) for x in P.steer_layers]  # type: ignore[arg-type]
    norms = activation_norms(lm, [lm.chat.encode(q) for q in qs.question], sites, batch_size=P.batch_size)
    conds = [Condition.unsteered(trait=trait, vector="none", layer=-1)]
    conds += [Condition((at_ratio(s, (tv.natural if src == "natural" else tv.instruction)[s.layer], P.ratio, norms),),
                        trait=trait, vector=src, layer=s.layer)
              for s in sites for src in ("natural", "instruction")]
    return generate_answers(lm, qs, conds, max_new_tokens=P.max_new_tokens, batch_size=P.batch_size,
                            progress=progress, desc=f"steer {trait}")


def judge_steered(judge: Judge, answers: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Add the judge's trait score to every answer as ``score``."""
    return judge_answers(judge, answers, {"trait": "score"}, progress=progress)


def steering_effect(judged: pd.DataFrame) -> pd.DataFrame:
    """Per (trait, vector, layer): mean trait score and delta vs unsteered (paired by question),
    with a 95% t-interval over questions; ``steers`` when the interval is above 0."""
    e = paired_effects(judged, by=["trait", "vector", "layer"], baseline=judged.vector == "none", within=["trait"])
    ci = [f"[{lo:+.1f}, {hi:+.1f}]" if n > 1 else "n/a" for lo, hi, n in zip(e.ci_lo, e.ci_hi, e.n, strict=True)]
    return pd.DataFrame({"steered": e.steered, "baseline": e.baseline, "delta": e.delta, "delta_ci95": ci,
                         "steers": (e.n > 1) & (e.ci_lo > 0)}, index=e.index)


def versus_seed(cmp: pd.DataFrame, eff: pd.DataFrame) -> pd.DataFrame:
    """Per trait: our best-layer cosine, natural detection on natural val, which vectors steer; the seed's."""
    rows = []
    for trait, g in cmp.groupby(level="trait", sort=False):
        e = eff.loc[trait] if trait in eff.index.get_level_values(0) else None
        rows.append({"trait": trait, "cosine_max": g.cosine.max(), "cosine_mean": g.cosine.mean(),
                     "natural_detect_pct": g.natural_on_natural_acc.max(),
                     "natural_steers": bool(e is not None and e.loc["natural"].steers.any()),
                     "instruction_steers": bool(e is not None and e.loc["instruction"].steers.any()),
                     **{f"seed_{c}": SEED.loc[trait, c] if trait in SEED.index else np.nan for c in SEED.columns}})
    return pd.DataFrame(rows).set_index("trait")


def conclusions(vs: pd.DataFrame, eff: pd.DataFrame) -> list[str]:
    out = []
    for trait, r in vs.iterrows():
        best = eff.loc[trait].delta.groupby(level="vector").max()
        out.append(f"{trait}: cosine natural vs instruction {r.cosine_mean:.2f} (mean over layers; max {r.cosine_max:.2f}); "
                   f"natural vector detects {r.natural_detect_pct:.0f}% of held-out pairs; best steering delta "
                   f"natural {best.get('natural', np.nan):+.1f}, instruction {best.get('instruction', np.nan):+.1f} "
                   f"(steers reliably: natural {r.natural_steers}, instruction {r.instruction_steers}). "
                   f"Seed: cosine {r.seed_cosine}, natural steers {r.seed_natural_steers}, "
                   f"instruction steers {r.seed_instruction_steers}.")
    return out


def _cosine_se(P: Params, tv: TraitVectors, layer: int) -> float:
    """Split-sample SE of cosine(natural, instruction) at ``layer``: the instruction vector refitted
    on the test-question answers is a second, independent draw of the same vector, so
    |cos(train fit) − cos(test fit)| / √2 estimates the SD of one cosine (over the instructed
    answers, which are generated text)."""
    tp, tn = tv.instruction_val[layer]
    if len(tp) < 1 or len(tn) < 1:
        return 1.0
    again = fit_direction(P.method, tp, tn, seed=P.seed).vector
    cos = torch.nn.functional.cosine_similarity
    a = float(cos(tv.natural[layer], tv.instruction[layer], dim=0))
    b = float(cos(tv.natural[layer], again, dim=0))
    return abs(a - b) / np.sqrt(2)


def record(P: Params, vecs: dict[str, TraitVectors], cmp: pd.DataFrame, judged: pd.DataFrame,
           eff: pd.DataFrame, vs: pd.DataFrame) -> records.ResultRecord:
    """The report's result record: per trait, cosine natural vs instruction, natural detection on
    held-out pairs, each vector's best steering delta, and the seed's elicitation claims.

    Tolerance rules: counts exact; cosines 3 × a split-sample SE (the instruction vector comes from
    generated answers; ``_cosine_se``, mean over layers of the per-layer SE, at least 0.01);
    natural detection accuracy a rate over held-out examples, one flipping (fixed text through a
    forward pass); steering deltas 3 SEs over questions, paired (judge reading generated text).
    """
    qs: list[records.Quantity] = [records.exact("n_layers", len(P.layers), unit="layers"),
                                  records.exact("n_test_questions", P.n_test_questions, unit="questions")]
    deltas: dict[tuple[str, str], np.ndarray] = {}
    base = judged[judged.vector == "none"][["trait", "question", "score"]].rename(columns={"score": "base"})
    paired = judged[judged.vector != "none"].merge(base, on=["trait", "question"])
    eff_sorted = eff.sort_index()  # a sorted MultiIndex: no lexsort warning on lookups
    for trait in P.traits:
        tv = vecs[trait]
        se = max(float(np.mean([_cosine_se(P, tv, x) for x in tv.natural])), 0.01)
        qs.append(records.estimate(f"{trait}_cosine_mean", float(vs.loc[trait, "cosine_mean"]), se=se,
                                   n=len(tv.natural), k=3))
        vp, vn = next(iter(tv.natural_val.values()))
        n_val = len(vp) + len(vn)
        qs.append(records.rate(f"{trait}_natural_detect", float(vs.loc[trait, "natural_detect_pct"]), n=n_val,
                               unit="%"))
        for src in ("natural", "instruction"):
            e = eff_sorted.loc[(trait, src)]
            layer = int(e.delta.idxmax()) if e.delta.notna().any() else int(e.index[0])
            g = paired[(paired.trait == trait) & (paired.vector == src) & (paired.layer == layer)]
            deltas[(trait, src)] = (g.score - g.base).to_numpy(float)
            qs.append(records.score_mean(f"{trait}_{src}_best_delta", deltas[(trait, src)], k=3))
    by = {q.name: q for q in qs}

    def steers(trait: str, src: str) -> bool:
        return bool(trait in vs.index and vs.loc[trait, f"{src}_steers"])

    claims = []
    if {"optimism", "sycophancy"} <= set(P.traits):
        a, b = by["optimism_cosine_mean"], by["sycophancy_cosine_mean"]
        gap = a.value - b.value
        gse = float(np.hypot(a.tolerance / 3, b.tolerance / 3))
        # each SE rests on one train-vs-test difference: one degree of freedom, so t quantiles with n = 2
        v, why = records.decide(holds=gap - 1.96 * gse > 0, seed_effect=0.63 - 0.20, mde=unc.mde(gse, 2))
    else:
        v, why = records.decide(holds=False, comparable=False,
                                comparable_reason="needs both optimism and sycophancy in traits")
    claims.append(records.Claim(
        "cosine_cognitive_vs_behavioural", "Natural and instruction vectors agree more for optimism than for "
        "sycophancy (cosine, mean over layers)", seed="0.63 vs 0.20",
        ours=(f"{by['optimism_cosine_mean'].value:.2f} vs {by['sycophancy_cosine_mean'].value:.2f}"
              if {"optimism", "sycophancy"} <= set(P.traits) else "not run"), verdict=v, reason=why))
    for trait, cid, src, statement, seed in (
            ("optimism", "optimism_natural_steers", "natural", "The natural optimism vector steers", "steers"),
            ("optimism", "optimism_instruction_steers", "instruction", "The instruction optimism vector steers",
             "steers"),
            ("sycophancy", "sycophancy_instruction_steers", "instruction",
             "The instruction sycophancy vector steers", "steers")):
        if trait not in P.traits:
            v, why = records.decide(holds=False, comparable=False, comparable_reason=f"{trait} not in traits")
            quantity = None
        else:
            other = "instruction" if src == "natural" else "natural"
            v, why = records.decide(holds=steers(trait, src), positive_control=steers(trait, other) or None)
            if v == "not held":
                why = f"the {other} {trait} vector steered in this run (positive control), this one did not"
            quantity = f"{trait}_{src}_best_delta"
        claims.append(records.Claim(cid, statement, seed=seed, ours="", verdict=v, reason=why, quantity=quantity))
    # the seed's negative claim: the natural sycophancy vector detects but does not steer
    if "sycophancy" in P.traits:
        if steers("sycophancy", "natural"):
            v, why = "not held", "the natural sycophancy vector steered (95% interval above 0)"
        elif steers("sycophancy", "instruction"):
            v, why = records.decide(holds=True)
            why = "it did not steer, while the instruction vector did (positive control)"
        else:
            v, why = records.decide(holds=False)
            why = "neither sycophancy vector steered: no positive control that this run could see steering"
        quantity = "sycophancy_natural_best_delta"
    else:
        v, why = records.decide(holds=False, comparable=False, comparable_reason="sycophancy not in traits")
        quantity = None
    claims.append(records.Claim("sycophancy_natural_no_steer", "The natural sycophancy vector does not steer",
                                seed="detects 84%, does not steer", ours="", verdict=v, reason=why,
                                quantity=quantity))
    return records.ResultRecord("elicitation", model=P.model, quantities=tuple(qs), claims=tuple(claims),
                                tables={"comparison": cmp, "steering": eff, "versus_seed": vs},
                                params=asdict(P))
