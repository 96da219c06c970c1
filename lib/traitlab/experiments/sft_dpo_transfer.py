"""Steering transfer along a base → SFT → DPO chain, with a positive control and measured power.

Trait vectors are extracted **from the base model only** (``vector_method`` on the trait's
contrastive pairs at ``site``, one unit vector per layer) and added, unchanged, to every
model in the chain during generation. Strength is a perturbation ratio
``coef × ‖v‖ / ‖activation‖`` against each steered model's own mean activation norm at the
response positions of the question prompts (from the last prompt token on, so the attention
sink at position 0 is not in the denominator; ``norm_table`` shows how far the sink would
move it), so one ratio means the same relative push in every model.

What each answer is scored on:

- **trait**: a 0–100 reading by ``reading`` (``steered_eval.JUDGE_READINGS``): the judge's
  absolute score, or (``probe``) a ridge probe fitted on the trait's gold answers reading the
  judge model's activations, which the judge-calibration report finds as sensitive to
  optimism steering as the score at a fraction of its compute. A condition's effect is the mean
  paired difference from the same model's unsteered answer to the same question, with a
  t-interval over questions. ``judge_scale`` reads the reading's slope on the trait's gold set
  (out of sample for a probe: its held-out part), so the seed's effects (on its judge's 0–100
  scale) can be stated on ours before a "not held" is allowed.
- **coherence**: from the text, not the judge (``textstats``): distinct-2 and log-perplexity
  under ``reference_model``, with floors fitted on the gold sets' coherence labels. A condition
  is *broken* when fewer than ``coherent_share`` of its answers clear both floors.

Controls, all in the same run: the unsteered baseline; norm-matched random unit directions at
``random_seeds`` in every cell of ``random_layers`` × ``random_ratios`` (``random_design``
rotated, the default: each question answered under one of the seeds per cell, the seed
rotating over the questions, so a cell sees every seed for the cost of one condition; crossed:
every seed answers every question); and a **positive control**: the same
pipeline on ``control_model`` (in its own chat template) steered with its own vectors (at
``control_layers``), the setting in which the metrics-vs-steering (probe) and ratio-zones (judge
score) reports see optimism steering. Without the control a flat grid cannot tell "does not
transfer" from "this reading cannot see it".

Example (the condition grid of one chain model):
    >>> p = Params(layers=[3, 8], ratios=[0.1, 0.4], random_seeds=[1, 2], random_layers=[8],
    ...            multi_layers=[4, 5], multi_ratios=[0.1])
    >>> [c["kind"] for c in conditions(p)].count("random"), len(conditions(p))
    (4, 10)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from .. import chain, judge_power, probe_reader, records, steered_eval, textstats
from .. import uncertainty as unc
from ..activations import extract
from ..chat import ChatFormat
from ..data import load_trait, opinion_questions
from ..directions import METHODS, fit_direction, random_unit
from ..judge import Judge, judge_from_params, undescribed
from ..models import LoadedModel, describe, load_model
from ..params import ParamError, check_max_pairs, traits_folder
from ..sites import SITE_NAMES, Site
from ..steered_eval import Condition, at_ratio, generate_answers, paired_effects
from ..steering import position_norms

SEED = pd.DataFrame(
    [("SFT", 12, 84.0, 76.0), ("DPO", 12, 83.0, 82.0), ("SFT", 8, 82.5, np.nan),
     ("DPO", 8, 65.8, np.nan), ("DPO", 24, 1.1, 6.3)],
    columns=["model", "layer", "trait", "coherence"])
"""The seed's transfer numbers (Mistral-7B base vectors; 32 layers; DPO L24 at coef 6)."""
SEED_MULTI = {"multi (layers 6–10)": 90.8, "best single layer": 89.3, "baseline": 61.3}
SEED_BASELINE = 61.3
"""The seed's unsteered trait score; its steered effects below are differences from it."""
SWEET_SPOT = (0.5, 0.8)
BROKEN_FROM = 1.3
CONTROL = "control"
"""The positive control's name in every table."""
CHAIN = ("base", "sft", "dpo")


@dataclass(frozen=True)
class Params:
    chain_profile: str = "default"
    models: dict[str, str] | None = None
    prompt_format: Literal["plain", "auto"] = "plain"
    trait: str = "optimism"
    vector_method: str = "mean_diff"
    site: str = "resid_pre"
    layers: list[int] = field(default_factory=lambda: [3, 8, 13])
    ratios: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.8, 1.6])
    multi_layers: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8])
    multi_ratios: list[float] = field(default_factory=lambda: [0.05, 0.2])
    """Per-layer ratios of multi-layer steering (each of ``multi_layers`` gets this push)."""
    random_seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    random_layers: list[int] | None = None
    """Layers of the random control (null: every steered layer)."""
    random_ratios: list[float] | None = None
    """Ratios of the random control (null: every ratio); a subset of ``ratios``."""
    random_design: Literal["rotated", "crossed"] = "rotated"
    """rotated: in each random cell question i is answered under ``random_seeds[(i + j) mod n]``
    only, j the cell's layer's position in the random layers (``steered_eval.rotate``): every seed
    per cell at the cost of one answer per question, and each question meets other seeds at other
    layers. crossed: every seed answers every question (n times the answers; the per-question
    random delta is then a mean over the n seeds, the rotated one a single draw)."""
    control_model: str | None = "qwen2.5-coder-0.5b-instruct"
    """The positive control: this model, prompted with its own chat template, steered with its own
    vectors (null: no control; the base model steering itself then stands in)."""
    control_layers: list[int] = field(default_factory=lambda: [12])
    positions: Literal["response", "all"] = "response"
    n_questions: int = 16
    max_new_tokens: int = 32
    coherent_share: float = 0.5
    """A condition is broken when fewer than this share of its answers are coherent."""
    gold_traits: list[str] = field(default_factory=lambda: ["optimism", "uncertainty", "refusal"])
    """Gold sets whose coherence labels fit the text floors (``data/judge/gold_<trait>.jsonl``)."""
    gold_dir: str | None = None
    """A folder of one's own ``gold_<trait>.jsonl`` gold sets, read in place of ours (``data/judge``)
    for the traits it holds (``judge_power.gold_path``); null: ours only."""
    reference_model: str = "qwen2.5-coder-0.5b-instruct"
    """The model whose perplexity of each answer (after its question) measures coherence."""
    judge_backend: Literal["local", "openai"] = "local"
    judge_model: str = "qwen2.5-coder-0.5b-instruct"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_offline: bool = False
    judge_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    reading: Literal["absolute", "yesno", "opposite", "probe"] = "absolute"
    """How each answer's trait is read (``steered_eval.JUDGE_READINGS``): ``absolute``, the judge's
    0–100 score; ``probe``, a probe fitted on the trait's gold answers (tune part) reading the
    local judge model's activations: one forward of the answer up to the probe's layer instead of
    the judge's rubric, answer, instruction and digit tree."""
    min_mass: float = 0.25
    trait_descriptions: dict[str, str] = field(default_factory=dict)
    """One-line judge definitions of traits ``traitlab.judge.TRAIT_DESCRIPTIONS`` lacks (or to
    replace one there), e.g. ``{candour: "saying plainly what one thinks."}``."""
    batch_size: int = 16
    n_boot: int = 2000
    """Bootstrap resamples of the questions (how often SFT and DPO agree on their best layer)."""
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    max_pairs_per_split: int | None = None
    """The vector's pairs: the first N train and first N val pairs of the trait (``data.load_trait``;
    for quick profiles); null: all of them."""
    questions_file: str | None = None
    """A JSONL file of ``{"id", "question", "split"}`` questions the steered answers respond to
    (``data.opinion_questions``); null: the shipped ``data/steering/optimism_questions.jsonl``."""

    def __post_init__(self) -> None:
        check_max_pairs(self.max_pairs_per_split)
        if (why := undescribed([self.trait], self.trait_descriptions)) is not None:
            raise ParamError(why)
        if self.vector_method not in METHODS or self.vector_method == "random":
            raise ParamError(f"vector_method {self.vector_method!r} cannot be used; choose from "
                             f"{', '.join(m for m in METHODS if m != 'random')}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, resid_post, attn_out, mlp_out; got {self.site!r}")
        if not self.layers or not self.ratios:
            raise ParamError("layers and ratios must be non-empty")
        if any(not r > 0 for r in self.ratios + self.multi_ratios):
            raise ParamError("ratios must be > 0 (the trait direction is signed towards the trait)")
        if list(self.ratios) != sorted(set(self.ratios)):
            raise ParamError(f"ratios must increase without repeats, got {self.ratios}")
        if self.random_ratios is not None and not set(self.random_ratios) <= set(self.ratios):
            raise ParamError(f"random_ratios {self.random_ratios} must be a subset of ratios {self.ratios} "
                             "(the control is compared at the same perturbation ratio)")
        if self.random_layers is not None and not set(self.random_layers) <= set(self.layers):
            raise ParamError(f"random_layers {self.random_layers} must be a subset of layers {self.layers} "
                             "(the control is compared at the same layer)")
        if len(set(self.random_seeds)) != len(self.random_seeds):
            raise ParamError(f"random_seeds repeat: {self.random_seeds}")
        steered_eval.check_random_design(self.random_design)
        steered_eval.check_reading(self.reading, self.judge_backend)
        if self.judge_dtype not in ("auto", "float32", "bfloat16"):
            raise ParamError(f"judge_dtype must be 'auto', 'float32' or 'bfloat16', got {self.judge_dtype!r}")
        if self.models is not None and set(self.models) != set(CHAIN):
            raise ParamError(f"models must name exactly base, sft and dpo; got {sorted(self.models)}")
        if self.n_questions < 4:
            raise ParamError(f"n_questions must be >= 4 (intervals are over questions), got {self.n_questions}")
        if self.random_design == "rotated" and len(self.random_seeds) > self.n_questions:
            raise ParamError(f"random_design rotated spreads {len(self.random_seeds)} random_seeds over "
                             f"{self.n_questions} questions, one seed per question: use at most n_questions "
                             "seeds, more questions, or random_design: crossed")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.n_boot < 1:
            raise ParamError("max_new_tokens, batch_size and n_boot must be >= 1")
        if not 0 < self.coherent_share < 1:
            raise ParamError(f"coherent_share must be in (0, 1), got {self.coherent_share}")
        if not self.gold_traits:
            raise ParamError("gold_traits is empty: the coherence floors need labelled answers")
        if self.control_model is not None and not self.control_layers:
            raise ParamError("control_layers is empty: name the layers the positive control steers "
                             "(or set control_model: null)")

    def chain_params(self) -> chain.ChainParams:
        return chain.profile_params(self.chain_profile)

    def check(self) -> None:
        """Layer ranges against the base and control models' configs, the prompt and gold sets
        (no weights read)."""
        opinion_questions("test", self.n_questions, self.questions_file)  # enough questions, before any model work
        base = self.models["base"] if self.models else self.chain_params().base_model
        info = describe(base)
        bad = [x for x in set(self.layers) | set(self.multi_layers) if not 0 <= x < info.n_layers]
        if bad:
            raise ParamError(f"layers {sorted(bad)} out of range for {base} (0..{info.n_layers - 1})")
        if self.control_model is not None:
            n = describe(self.control_model).n_layers
            bad = [x for x in self.control_layers if not 0 <= x < n]
            if bad:
                raise ParamError(f"control_layers {sorted(bad)} out of range for {self.control_model} (0..{n - 1})")
        describe(self.reference_model)
        load_trait(self.trait, folder=traits_folder(self.traits_dir))
        # the trait's own set gives the reading's scale; gold_traits' sets the coherence floors
        steered_eval.check_reading(self.reading, self.judge_backend, [self.trait], gold_dir=self.gold_dir)
        gold = judge_power.check_gold([self.trait, *self.gold_traits], self.gold_dir)
        judge_power.check_floor_gold(self.gold_traits, gold=gold)

    def judge(self) -> Judge:
        return judge_from_params(self, gold_dir=self.gold_dir)


def chain_models(P: Params, progress: bool = True) -> dict[str, str]:
    """Model specs of base, SFT and DPO: given, or built/reused from the chain profile."""
    if P.models is not None:
        return dict(P.models)
    return chain.build(P.chain_params(), progress=progress).paths


def _fmt(P: Params, m: LoadedModel, control: bool = False) -> ChatFormat:
    """The chain's prompt format (``prompt_format``); the positive control always uses its own
    chat template, the setting in which its steering is known to work."""
    return ChatFormat.plain(m.tokenizer) if P.prompt_format == "plain" and not control else m.chat


def fit_vectors(P: Params, lm: LoadedModel, layers: list[int], control: bool = False,
                progress: bool = True) -> dict[int, torch.Tensor]:
    """One unit trait vector per layer, fitted on ``lm``'s activations of the train-split pairs."""
    ds = load_trait(P.trait, max_pairs_per_split=P.max_pairs_per_split, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(_fmt(P, lm, control), "train")
    sites = [Site(P.site, x) for x in sorted(set(layers))]  # type: ignore[arg-type]
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    n = len(pos)
    return {s.layer: fit_direction(P.vector_method, acts[s][:n], acts[s][n:], seed=P.seed, site=str(s),
                                   model=lm.spec, trait=P.trait).vector
            for s in sites}


def base_vectors(P: Params, base: LoadedModel, progress: bool = True) -> dict[int, torch.Tensor]:
    """The base model's vectors at every steered and multi-layer layer."""
    return fit_vectors(P, base, sorted(set(P.layers) | set(P.multi_layers)), progress=progress)


def conditions(P: Params, control: bool = False) -> list[dict]:
    """Every steering condition of one model (baseline first); ``seed`` is the random
    direction's seed (−1 elsewhere). The positive control runs baseline and learned vectors
    at ``control_layers`` only."""
    out = [{"kind": "baseline", "layer": -1, "ratio": 0.0, "seed": -1}]
    layers = P.control_layers if control else P.layers
    out += [{"kind": "single", "layer": x, "ratio": r, "seed": -1} for x in layers for r in P.ratios]
    if control:
        return out
    rr = P.ratios if P.random_ratios is None else P.random_ratios
    rl = P.layers if P.random_layers is None else P.random_layers
    out += [{"kind": "random", "layer": x, "ratio": r, "seed": s}
            for s in P.random_seeds for x in rl for r in rr]
    if P.multi_layers:
        out += [{"kind": "multi", "layer": -1, "ratio": r, "seed": -1} for r in P.multi_ratios]
    return out


def _steers(P: Params, c: dict, vectors: dict[int, torch.Tensor], d_model: int,
            norms: dict[str, float]) -> list:
    if c["kind"] == "baseline":
        return []
    if c["kind"] == "multi":
        return [at_ratio(Site(P.site, x), vectors[x], c["ratio"], norms) for x in P.multi_layers]  # type: ignore[arg-type]
    v = vectors[c["layer"]] if c["kind"] == "single" else random_unit(d_model, c["seed"])
    return [at_ratio(Site(P.site, c["layer"]), v, c["ratio"], norms)]  # type: ignore[arg-type]


def norm_table(lm: LoadedModel, encoded: list, P: Params, layers: list[int]) -> pd.DataFrame:
    """Per layer: the mean activation norm over response positions (the ratio's denominator),
    over all positions, and at position 0 alone (the attention sink); ``all_over_response``
    is how much smaller every ratio would read with the sink included."""
    t = position_norms(lm, encoded, [Site(P.site, x) for x in layers], batch_size=P.batch_size)  # type: ignore[arg-type]
    df = pd.DataFrame([{"layer": Site.parse(k).layer, **v} for k, v in t.items()])
    df["all_over_response"] = df["all"] / df["response"]
    return df[["layer", "response", "all", "first", "all_over_response"]]


def steer_model(P: Params, name: str, lm: LoadedModel, vectors: dict[int, torch.Tensor],
                questions: pd.DataFrame, control: bool = False, progress: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One model's answers under every condition (``coef``: the raw coefficient of single and
    random conditions) and its norm table."""
    fmt = _fmt(P, lm, control)
    layers = sorted(set(P.control_layers if control else P.layers) | (set() if control else set(P.multi_layers)))
    norms = norm_table(lm, [fmt.encode(q) for q in questions.question], P, layers)
    by_site = {str(Site(P.site, int(x))): float(r) for x, r in zip(norms.layer, norms.response, strict=True)}  # type: ignore[arg-type]
    conds = []
    for c in conditions(P, control=control):
        steers = _steers(P, c, vectors, lm.d_model, by_site)
        coef = steers[0].coef if c["kind"] in ("single", "random") else np.nan
        conds.append(Condition(steers, model=name, **c, coef=coef))
    if P.random_design == "rotated":
        conds = _rotated(P, conds, len(questions))
    prompts = questions[["id", "question"]].rename(columns={"id": "question_id"})
    answers = generate_answers(lm, prompts, conds, encode=fmt.encode, max_new_tokens=P.max_new_tokens,
                               positions=P.positions, batch_size=P.batch_size, progress=progress,
                               desc=f"steer {name}")
    return answers, norms.assign(model=name)


def _rotated(P: Params, conds: list[Condition], n_questions: int) -> list[Condition]:
    """``conds`` with each random cell's seeds spread over the questions (``steered_eval.rotate``;
    offset: the layer's position in the random layers), in the same order."""
    layers, _ = _random_grid(P)
    cells: dict[tuple[int, float], list[int]] = {}
    for i, c in enumerate(conds):
        lab = dict(c.labels)
        if lab["kind"] == "random":
            cells.setdefault((lab["layer"], lab["ratio"]), []).append(i)
    out = list(conds)
    for (x, _), idx in cells.items():
        for i, c in zip(idx, steered_eval.rotate([conds[i] for i in idx], n_questions, offset=layers.index(x)),
                        strict=True):
            out[i] = c
    return out


def steer_all(P: Params, specs: dict[str, str], vectors: dict[int, torch.Tensor],
              questions: pd.DataFrame, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every chain model (base vectors) and the positive control (its own vectors): the
    answers, one row per (model, condition, question), and the norm tables."""
    frames, norms = [], []
    for name, spec in specs.items():
        m = load_model(spec, quiet=True)
        a, n = steer_model(P, name, m, vectors, questions, progress=progress)
        frames.append(a)
        norms.append(n)
        del m
    if P.control_model is not None:
        m = load_model(P.control_model, quiet=True)
        own = fit_vectors(P, m, P.control_layers, control=True, progress=progress)
        a, n = steer_model(P, CONTROL, m, own, questions, control=True, progress=progress)
        frames.append(a)
        norms.append(n)
        del m
    return pd.concat(frames, ignore_index=True), pd.concat(norms, ignore_index=True)


def judge_answers(judge: Judge, answers: pd.DataFrame, trait: str, reading: str = "absolute",
                  progress: bool = True) -> pd.DataFrame:
    """Add every answer's ``trait`` reading (0–100, by ``reading``: ``steered_eval.judge_answers``)."""
    return steered_eval.judge_answers(judge, answers, ("trait",), trait=trait, reading=reading, progress=progress)


def judge_scale(judge: Judge, trait: str, reading: str = "absolute", progress: bool = True) -> dict[str, Any]:
    """The reading's slope on the trait's gold set (reading points per gold-label point, least
    squares over the labelled answers) with its 95% bootstrap CI over answers, and Pearson r: how
    many of our points one point of the seed's 0–100 scale is worth. A judge's readings use every
    gold answer; a probe's only the held-out part (it was fitted on the tune part), so the slope
    is out of sample, and ``reader`` says which probe (layer, penalty, cross-validated r).

    Example (a reading that halves the gold labels' spread has slope 0.5; ``_slope`` is the fit):
        >>> round(_slope(np.array([0.0, 50, 100]), np.array([25.0, 50, 75]))["slope"], 3)
        0.5
    """
    gold = judge_power.load_gold(trait, "heldout" if reading == "probe" else None, judge.config.gold_dir)
    gold = gold.rename(columns={"response": "answer"})
    if reading == "probe":  # the probe ``judge_answers`` reads with (the same fit: the features are cached)
        probe = steered_eval.judge_probes(judge, [trait], coherence=False, progress=progress)[trait]
        items = list(zip(gold.question, gold.answer, strict=True))
        y, reader = probe_reader.read(probe, judge.backend.model, items, progress=progress), probe.text()
    else:
        y = judge_answers(judge, gold[["question", "answer"]], trait, reading, progress=progress).trait.to_numpy(float)
        reader = f"the judge's {reading} reading"
    return {**_slope(gold.label.to_numpy(float), y), "reader": reader}


def _slope(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least-squares slope of ``y`` on ``x`` (finite pairs), its bootstrap CI over pairs, r and n."""
    ok = np.isfinite(y) & np.isfinite(x)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": np.nan, "lo": np.nan, "hi": np.nan, "r": np.nan, "n": int(len(x))}

    def slope(idx: dict) -> float:
        i = idx[None]
        xi, yi = x[i], y[i]
        return float(np.polyfit(xi, yi, 1)[0]) if np.ptp(xi) > 0 else np.nan

    b = unc.bootstrap(slope, len(x), n_boot=1000, seed=0)
    return {"slope": float(np.polyfit(x, y, 1)[0]), "lo": b.ci[0], "hi": b.ci[1], "r": unc.pearson(x, y),
            "n": int(len(x))}


def coherence(P: Params, answers: pd.DataFrame, progress: bool = True
              ) -> tuple[pd.DataFrame, textstats.Floors, judge_power.FloorRefits]:
    """``answers`` with ``distinct2``, ``log_ppl`` (under ``reference_model``, after the question)
    and ``coherent``; the floors fitted on the gold sets under the same model; and their refits
    on resampled gold questions (``judge_power.FloorRefits``), for intervals that cover where the
    floors fall."""
    ref = load_model(P.reference_model, quiet=True)
    floors, gold = judge_power.calibrate_floors(ref, P.gold_traits, batch_size=P.batch_size, folder=P.gold_dir,
                                                progress=progress)
    out = answers.join(textstats.coherence_measures(ref, answers, batch_size=P.batch_size, progress=progress))
    out["coherent"] = floors.coherent(out)
    return out, floors, judge_power.FloorRefits(gold)


_KEYS = ["model", "kind", "layer", "ratio", "seed"]


def summary(scored: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per model × condition: mean trait, its paired difference from the same model's unsteered
    answers (``delta`` with a t-interval over questions), the coherent share with its Wilson
    interval, and ``broken`` (coherent share below ``P.coherent_share``)."""
    base = scored.kind == "baseline"
    eff = paired_effects(scored, by=_KEYS, baseline=base, unit="question_id", within=["model"], value="trait")
    coh = unc.wilson_rates(scored.assign(coherent=scored.coherent.astype(bool)), _KEYS, "coherent", sort=False)
    coh = coh.set_index(_KEYS).rename(columns={"rate": "coherent", "lo": "coherent_lo", "hi": "coherent_hi"})
    coef = scored.groupby(_KEYS, sort=False).coef.first()
    b = scored[base].groupby(_KEYS, sort=False).agg(trait=("trait", "mean"), n=("trait", "count"))
    b = b.assign(delta=0.0, ci_lo=np.nan, ci_hi=np.nan)
    steered = eff.rename(columns={"steered": "trait"})[["trait", "delta", "ci_lo", "ci_hi", "n"]]
    out = pd.concat([b, steered]).join(coh[["coherent", "coherent_lo", "coherent_hi"]]).join(coef)
    out["broken"] = out.coherent < P.coherent_share
    order = {m: i for i, m in enumerate(dict.fromkeys(scored.model))}
    return (out.reset_index().sort_values("model", key=lambda s: s.map(order), kind="stable")
            .reset_index(drop=True))


def best_per_layer(summ: pd.DataFrame) -> pd.DataFrame:
    """For each model and layer, the unbroken learned-vector ratio with the largest trait delta."""
    s = summ[(summ.kind == "single") & ~summ.broken]
    idx = s.groupby(["model", "layer"], sort=False).delta.idxmax()
    return s.loc[idx, ["model", "layer", "ratio", "coef", "trait", "delta", "ci_lo", "ci_hi", "coherent"]
                 ].reset_index(drop=True)


def by_ratio(summ: pd.DataFrame) -> pd.DataFrame:
    """Trait delta and coherent share against the ratio, per model and kind (learned averaged
    over layers, random over seeds and layers)."""
    s = summ[summ.kind.isin(["single", "random"])]
    return (s.groupby(["model", "kind", "ratio"], sort=False)
            .agg(delta=("delta", "mean"), coherent=("coherent", "mean")).reset_index())


def _cell(scored: pd.DataFrame, model: str, kind: str, layer: int | None = None,
          ratio: float | None = None, col: str = "trait") -> pd.Series:
    """One condition's per-question values (random: the mean over the seeds that answered the
    question, one when rotated), indexed by question."""
    m = (scored.model == model) & (scored.kind == kind)
    if layer is not None:
        m &= scored.layer == layer
    if ratio is not None:
        m &= np.isclose(scored.ratio, ratio)
    return scored[m].groupby("question_id", sort=False)[col].mean()


def _delta(scored: pd.DataFrame, model: str, kind: str, layer: int | None = None,
           ratio: float | None = None) -> pd.Series:
    """Per question: the condition's trait minus the same model's unsteered trait."""
    return (_cell(scored, model, kind, layer, ratio) - _cell(scored, model, "baseline")).dropna()


def _random_grid(P: Params) -> tuple[list[int], list[float]]:
    """The (layers, ratios) where the random control ran."""
    return (P.layers if P.random_layers is None else P.random_layers,
            P.ratios if P.random_ratios is None else P.random_ratios)


def _learned_and_random(scored: pd.DataFrame, model: str, layer: int, ratio: float) -> tuple[pd.Series, pd.Series]:
    """Per question at ``layer`` and ``ratio``: the learned vector's trait delta and the random
    directions' (``_cell``: one seed per question when rotated, the mean over seeds when crossed)."""
    return _delta(scored, model, "single", layer, ratio), _delta(scored, model, "random", layer, ratio)


LVR_COLUMNS = ["model", "layer", "ratio", "learned", "random", "difference", "ci_lo", "ci_hi", "n",
               "learned_coherent", "random_coherent"]


def learned_vs_random(scored: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per chain model, layer and ratio where the random control ran: the learned vector's trait
    delta and the random directions' (``_cell``), and their per-question difference with
    a t-interval; beside them the share of each side's answers that are coherent (where
    ``scored`` has ``coherent``), since a difference between two broken conditions compares
    loops with loops. One row per cell, so no layer is picked after the fact: with
    ``random_layers`` null (the default) the control runs at every steered layer."""
    rows: list[dict] = []
    layers, ratios = _random_grid(P)
    for m in [x for x in dict.fromkeys(scored.model) if x != CONTROL] if P.random_seeds else []:
        for x in layers:
            for r in ratios:
                learned, rand = _learned_and_random(scored, m, x, r)
                d = (learned - rand).dropna().to_numpy(float)
                mean, se, n = unc.mean_se(d)
                lo, hi = unc.t_interval(mean, se, n)
                share = {kind: (float(_cell(scored, m, kind, x, r, col="coherent").mean())
                                if "coherent" in scored.columns else np.nan) for kind in ("single", "random")}
                rows.append({"model": m, "layer": x, "ratio": r, "learned": float(learned.mean()),
                             "random": float(rand.mean()), "difference": mean, "ci_lo": lo, "ci_hi": hi, "n": n,
                             "learned_coherent": share["single"], "random_coherent": share["random"]})
    return pd.DataFrame(rows, columns=LVR_COLUMNS)


def _best(summ: pd.DataFrame, model: str, kind: str, layer: int | None = None) -> pd.Series | None:
    ok = summ[(summ.model == model) & (summ.kind == kind) & ~summ.broken]
    if layer is not None:
        ok = ok[ok.layer == layer]
    return ok.loc[ok.delta.idxmax()] if len(ok) else None


@dataclass(frozen=True)
class LayerAgreement:
    """Over ``n`` bootstrap replicates: the share where the SFT and the DPO model's best unbroken
    layers agree, the share where they differ, and the share that left a model with no unbroken
    condition (no best layer)."""

    agree: float
    differ: float
    undecided: float
    n: int


def best_layer_agreement(scored: pd.DataFrame, P: Params, refits: judge_power.FloorRefits | None = None
                         ) -> LayerAgreement:
    """How often the SFT and the DPO model's best unbroken single-layer conditions (the largest
    mean trait delta among conditions at least ``P.coherent_share`` coherent, as ``_best``) sit at
    the same layer, over ``P.n_boot`` bootstrap resamples of the questions. Both models answer
    the same questions, so one draw resamples both. Each replicate decides anew which conditions
    are broken, on its own questions and, with ``refits`` (``judge_power.FloorRefits`` of the
    gold rows the floors were fitted on), by floors refitted on its own resample of the gold
    questions. A best layer is an argmax over noisy cells, and which cells are unbroken rests on
    a fitted floor: this says how often both stay in place.

    >>> sc = pd.DataFrame({"model": ["sft"] * 6 + ["dpo"] * 6, "kind": (["baseline"] * 2 + ["single"] * 4) * 2,
    ...                    "layer": ([-1, -1, 3, 3, 12, 12]) * 2, "ratio": [0, 0, 1, 1, 1, 1] * 2,
    ...                    "question_id": [0, 1] * 6, "trait": [50, 50, 51, 52, 80, 90] * 2, "coherent": True})
    >>> best_layer_agreement(sc, Params(n_boot=50))
    LayerAgreement(agree=1.0, differ=0.0, undecided=0.0, n=50)
    """
    answers = {m: scored[(scored.model == m) & (scored.kind == "single")] for m in ("sft", "dpo")}
    tables = {m: _condition_matrices(scored, a, m) for m, a in answers.items()}
    qs = pd.Index(sorted(set().union(*(t[0].index for t in tables.values()))))
    if not len(qs):
        return LayerAgreement(np.nan, np.nan, np.nan, 0)
    row_of = {m: t[0].index.get_indexer(qs) for m, t in tables.items()}  # a question's row in each model's matrix
    D = {m: t[0].to_numpy(float) for m, t in tables.items()}
    counts_of: dict[bytes, dict[str, tuple[np.ndarray, np.ndarray]] | None] = {}
    agree = differ = n = 0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a condition none of the drawn questions scored
        for draw, gold in judge_power.question_and_gold_draws(len(qs), refits, P.n_boot, P.seed):
            key = b"" if gold is None else gold.tobytes()
            if key not in counts_of:
                counts_of[key] = _coherent_counts(answers, tables, refits, gold)
            counts = counts_of[key]
            if counts is None:  # this gold resample fits no floor
                continue
            best = {}
            for m, (_, _, layers) in tables.items():
                rows = row_of[m][draw]
                rows = rows[rows >= 0]  # the drawn questions this model answered, repeats kept
                hits, count = counts[m]
                mean = np.nanmean(D[m][rows], axis=0)
                mean[~(hits[rows].sum(axis=0) / count[rows].sum(axis=0) >= P.coherent_share)] = np.nan
                best[m] = layers[np.nanargmax(mean)] if np.isfinite(mean).any() else None
            n += 1
            if None not in best.values():
                agree += int(best["sft"] == best["dpo"])
                differ += int(best["sft"] != best["dpo"])
    if not n:
        return LayerAgreement(np.nan, np.nan, np.nan, 0)
    return LayerAgreement(agree / n, differ / n, (n - agree - differ) / n, n)


def _coherent_counts(answers: dict[str, pd.DataFrame], tables: dict, refits: judge_power.FloorRefits | None,
                     gold: np.ndarray | None) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Per model, its question × condition counts of coherent answers and of answers (``answers``:
    each model's single-layer answers, in ``tables``' code order), the flags as measured (``gold``
    None) or by floors refitted on the gold questions ``gold`` (None when that resample fits no
    floor)."""
    out = {}
    for m, (deltas, code, _) in tables.items():
        flags = answers[m].coherent.to_numpy(bool) if gold is None else refits.coherent(gold, answers[m])
        if flags is None:
            return None
        size = deltas.shape[0] * deltas.shape[1]
        out[m] = tuple(np.bincount(code, weights=w, minlength=size).reshape(deltas.shape)
                       for w in (flags.astype(float), None))
    return out


def _condition_matrices(scored: pd.DataFrame, s: pd.DataFrame, model: str
                        ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One model's single-layer conditions (``s``, its single-layer rows of ``scored``) as matrices
    over its questions: (the question × condition trait deltas from its unsteered answers, each
    answer of ``s``'s flat cell code in that matrix (row-major, in ``s``'s order), each
    condition's layer)."""
    conds = pd.MultiIndex.from_frame(s[["layer", "ratio"]].drop_duplicates())
    qs = pd.Index(list(dict.fromkeys(s.question_id)))
    deltas = (pd.concat([_delta(scored, model, "single", x, r) for x, r in conds], axis=1).reindex(qs)
              if len(conds) else pd.DataFrame(index=qs))
    code = qs.get_indexer(s.question_id) * len(conds) + conds.get_indexer(pd.MultiIndex.from_frame(s[["layer", "ratio"]]))
    return deltas, code, conds.get_level_values("layer").to_numpy(int)


BEST_LAYER_SURE = 0.95
"""``optimal_layer_preserved`` holds when the two best layers agree in at least this share of
question resamples, and is not held when they differ in at least this share."""


def multi_vs_single(scored: pd.DataFrame, summ: pd.DataFrame) -> pd.DataFrame:
    """Per chain model with a multi-layer condition: its best unbroken multi-layer condition vs
    its best unbroken single layer, and their per-question difference with a t-interval."""
    rows = []
    for m in [x for x in dict.fromkeys(summ.model) if x != CONTROL]:
        bm, bs = _best(summ, m, "multi"), _best(summ, m, "single")
        row = {"model": m, "multi_at": "none unbroken" if bm is None else f"r={bm.ratio:g}",
               "multi_delta": np.nan if bm is None else bm.delta,
               "single_at": "none unbroken" if bs is None else f"L{bs.layer} r={bs.ratio:g}",
               "single_delta": np.nan if bs is None else bs.delta,
               "difference": np.nan, "ci_lo": np.nan, "ci_hi": np.nan}
        if bm is not None and bs is not None:
            d = _multi_minus_single(scored, m, bm, bs)
            mean, se, n = unc.mean_se(d.to_numpy(float))
            lo, hi = unc.t_interval(mean, se, n)
            row.update(difference=mean, ci_lo=lo, ci_hi=hi)
        rows.append(row)
    return pd.DataFrame(rows)


def _multi_minus_single(scored: pd.DataFrame, model: str, bm: pd.Series, bs: pd.Series) -> pd.Series:
    """Per question: the multi-layer condition's trait minus the single-layer condition's."""
    return (_cell(scored, model, "multi", ratio=bm.ratio) - _cell(scored, model, "single", bs.layer, bs.ratio)).dropna()


def _selected(delta: pd.Series, n_candidates: int) -> tuple[float, float, float]:
    """Mean of a selected condition's per-question deltas with a Bonferroni t-interval over the
    ``n_candidates`` it was picked from (the best of many cells is biased upward)."""
    mean, se, n = unc.mean_se(delta.to_numpy(float))
    lo, hi = unc.t_interval(mean, se, n, level=1 - 0.05 / max(n_candidates, 1))
    return mean, lo, hi


def _best_effect(scored: pd.DataFrame, summ: pd.DataFrame, model: str) -> tuple[pd.Series, float, float, float]:
    """The model's best unbroken single-layer condition (``_best``): its per-question trait deltas
    and their (mean, lo, hi), the interval Bonferroni-adjusted over every single-layer condition
    it was picked from (empty and NaN when none is unbroken)."""
    top = _best(summ, model, "single")
    if top is None:
        return pd.Series(dtype=float), np.nan, np.nan, np.nan
    d = _delta(scored, model, "single", top.layer, top.ratio)
    return (d, *_selected(d, int(((summ.model == model) & (summ.kind == "single")).sum())))


def _early_gap(scored: pd.DataFrame, summ: pd.DataFrame, P: Params) -> pd.Series:
    """Per question at the earliest steered layer: the SFT model's trait delta minus the DPO
    model's, averaged over the ratios where both are unbroken (empty when there is none)."""
    early = min(P.layers)
    parts = [(_delta(scored, "sft", "single", early, r) - _delta(scored, "dpo", "single", early, r))
             for r in P.ratios if _unbroken(summ, "sft", early, r) and _unbroken(summ, "dpo", early, r)]
    return pd.concat(parts, axis=1).mean(axis=1).dropna() if parts else pd.Series(dtype=float)


def _refit_broken(scored: pd.DataFrame, summ: pd.DataFrame, P: Params,
                  refits: judge_power.FloorRefits | None) -> list[np.ndarray]:
    """``summ``'s ``broken`` column as the floors refitted on each gold resample would set it (on
    every question): one array per resample that fits a floor, none without ``refits``. The gold
    draws are those of ``best_layer_agreement``'s bootstrap (same seed and strata), so one memo of
    refits serves both."""
    if refits is None:
        return []
    row = summ.set_index(_KEYS).index.get_indexer(pd.MultiIndex.from_frame(scored[_KEYS]))
    if (row < 0).any():
        raise ValueError("scored has conditions the summary lacks: summarise the same frame")
    count = np.bincount(row, minlength=len(summ))
    out = []
    for _, gold in judge_power.question_and_gold_draws(scored.question_id.nunique(), refits, P.n_boot, P.seed):
        flags = refits.coherent(gold, scored)
        if flags is not None:
            out.append(np.bincount(row, weights=flags.astype(float), minlength=len(summ)) / count < P.coherent_share)
    return out


@dataclass(frozen=True)
class FloorWidened:
    """An interval as measured, widened to cover where it lands under the floors refitted on
    resampled gold questions: ``lo`` and ``hi`` span the central 95% of the refits' intervals
    (and the measured one); ``lost`` is the share of refits under which there is no interval
    (nothing unbroken to measure). With ``lost`` above the 2.5% tail the interval is unbounded
    and ``ci`` is None.

    >>> FloorWidened(1.0, 3.0, 0.0).ci, FloorWidened(1.0, 3.0, 0.2).ci
    ((1.0, 3.0), None)
    """

    lo: float
    hi: float
    lost: float

    @property
    def ci(self) -> tuple[float, float] | None:
        ok = np.isfinite(self.lo) and np.isfinite(self.hi) and self.lost <= FLOOR_TAIL
        return (float(self.lo), float(self.hi)) if ok else None


FLOOR_TAIL = 0.025
"""Each tail of the floor refits left out of ``FloorWidened``: its interval spans the central 95%."""


def floor_widened(ci: tuple[float, float], interval: Callable[[np.ndarray], tuple[float, float]],
                  refit_broken: list[np.ndarray], rows: np.ndarray) -> FloorWidened:
    """``ci`` widened by ``interval(broken)`` (an interval, NaN when nothing is unbroken) under each
    of ``refit_broken`` (``_refit_broken``), computed once per distinct flags on ``rows`` (the
    summary rows the interval depends on: positions or a boolean mask).

    >>> flags = [np.array([False, True]), np.array([False, False])] * 10
    >>> floor_widened((1.0, 2.0), lambda b: (0.5, 2.0) if b[1] else (1.0, 2.5), flags, np.array([0, 1]))
    FloorWidened(lo=0.5, hi=2.5, lost=0.0)
    """
    if not refit_broken or not np.isfinite(ci).all():
        return FloorWidened(*ci, lost=0.0)
    memo: dict[bytes, tuple[float, float]] = {}
    for b in refit_broken:
        key = b[rows].tobytes()
        if key not in memo:
            memo[key] = interval(b)
    per = np.array([memo[b[rows].tobytes()] for b in refit_broken], dtype=float)
    los, his = np.where(np.isnan(per[:, 0]), -np.inf, per[:, 0]), np.where(np.isnan(per[:, 1]), np.inf, per[:, 1])
    lo = min(ci[0], float(np.quantile(los, FLOOR_TAIL, method="lower")))
    hi = max(ci[1], float(np.quantile(his, 1 - FLOOR_TAIL, method="higher")))
    return FloorWidened(lo, hi, float(np.isnan(per[:, 0]).mean()))


def conclusions(summ: pd.DataFrame, best: pd.DataFrame, multi: pd.DataFrame, lvr: pd.DataFrame,
                record: records.ResultRecord) -> list[str]:
    """Plain-language findings, verdicts first, each number from the tables and the record."""
    out = [f"{c.verdict.upper()}: {c.statement} — ours: {c.ours}; seed: {c.seed}. ({c.reason})"
           for c in record.claims]
    for model in dict.fromkeys(summ.model):
        b = best[best.model == model]
        base = summ[(summ.model == model) & (summ.kind == "baseline")].iloc[0]
        if len(b):
            top = b.loc[b.delta.idxmax()]
            out.append(f"{model}: unsteered trait {base.trait:.1f}; largest unbroken learned effect L{top.layer} "
                       f"at ratio {top.ratio:g}: Δ {top.delta:+.1f} [{top.ci_lo:+.1f}, {top.ci_hi:+.1f}] "
                       f"({100 * top.coherent:.0f}% coherent).")
        else:
            out.append(f"{model}: every learned condition is broken.")
    for (m, x), g in lvr.groupby(["model", "layer"], sort=False):
        cells = [f"{r.ratio:g}: {r.difference:+.1f} [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}]"
                 + (f" ({100 * r.learned_coherent:.0f}% / {100 * r.random_coherent:.0f}% coherent)"
                    if np.isfinite(r.learned_coherent) else "") for r in g.itertuples()]
        out.append(f"{m} L{x}: learned minus random trait delta by ratio (learned / random coherent): "
                   + "; ".join(cells) + ".")
    for r in multi.itertuples():
        if np.isfinite(r.difference):
            out.append(f"{r.model}: multi-layer best Δ {r.multi_delta:+.1f} ({r.multi_at}) vs best single layer "
                       f"Δ {r.single_delta:+.1f} ({r.single_at}); difference {r.difference:+.1f} "
                       f"[{r.ci_lo:+.1f}, {r.ci_hi:+.1f}].")
        else:
            out.append(f"{r.model}: multi-layer {r.multi_at}, single layer {r.single_at}: nothing to compare.")
    return out


def questions(P: Params) -> pd.DataFrame:
    return opinion_questions("test", P.n_questions, P.questions_file)


def record(P: Params, scored: pd.DataFrame, summ: pd.DataFrame, best: pd.DataFrame,
           multi: pd.DataFrame, lvr: pd.DataFrame, scale: dict[str, Any] | None,
           floors: textstats.Floors | None = None, norms: pd.DataFrame | None = None,
           refits: judge_power.FloorRefits | None = None) -> records.ResultRecord:
    """The transfer report's result record: per model the unsteered trait and the best unbroken
    steering effect (a Bonferroni t-interval over the conditions it was picked from), the
    positive control, learned minus random, the SFT − DPO gap at the earliest layer, multi vs
    single layer, the DPO model's coherence when pushed hardest, and the seed's claims.

    ``refits`` (``coherence``'s third value) carries the floors' error into every verdict that
    rests on which conditions are unbroken: the best-layer agreement (per bootstrap replicate),
    and the best effects' and the early gap's intervals, widened to where they land under the
    floors refitted on resampled gold questions (``FloorWidened``). Judge quantities use ``k = 3`` SEs over questions (``records.score_mean``); coherent shares
    are rates over questions. The seed's effects are stated on our reading's scale through
    ``scale`` (the reading's slope on the gold set) before they are compared with an MDE; with no
    scale they are compared as given.
    """
    models = list(dict.fromkeys(scored.model))
    chain_models = [m for m in models if m != CONTROL]
    qs: list[records.Quantity] = [
        records.exact("n_questions", scored.question_id.nunique(), unit="questions"),
        records.exact("n_conditions", len(conditions(P)), unit="conditions"),
        records.exact("n_models", len(models), unit="models")]
    steers: dict[str, bool] = {}
    refit_broken = _refit_broken(scored, summ, P, refits)
    lost: list[str] = []  # models whose best effect some floors leave unmeasured
    for m in models:
        qs.append(records.score_mean(f"{m}_baseline_trait", _cell(scored, m, "baseline"), k=3))
        d, _, lo, hi = _best_effect(scored, summ, m)
        w = floor_widened((lo, hi), lambda b, m=m: _best_effect(scored, summ.assign(broken=b), m)[2:],
                          refit_broken, ((summ.model == m) & (summ.kind == "single")).to_numpy())
        if w.ci is None and np.isfinite(lo):  # measured, but some floors leave nothing unbroken
            lost.append(f"{m}: {w.lost:.0%} of the refitted floors leave no unbroken condition")
        q = records.score_mean(f"{m}_best_delta", d, k=3) if len(d) else records.exact(f"{m}_best_delta", np.nan)
        qs.append(records.Quantity(q.name, q.value, q.unit, q.n, w.ci, q.tolerance, q.tolerance_rule))
        steers[m] = bool(w.ci is not None and w.ci[0] > 0)
        worst = summ[(summ.model == m) & (summ.kind == "single")].coherent.min()
        qs.append(records.rate(f"{m}_min_coherent_share", float(worst), n=P.n_questions))
    layers, ratios = _random_grid(P)
    for m in chain_models:
        if len(lvr) and m in set(lvr.model):  # every cell of the random grid, pooled per question
            per_q = pd.concat([a - b for a, b in (_learned_and_random(scored, m, x, r) for x in layers for r in ratios)],
                              axis=1).mean(axis=1)
            qs.append(records.score_mean(f"{m}_learned_minus_random", per_q.dropna(), k=3))
    early = min(P.layers)
    gap = _early_gap(scored, summ, P)
    gap_q = records.score_mean("sft_minus_dpo_early", gap, k=3)
    gap_w = floor_widened(gap_q.ci or (np.nan, np.nan),
                          lambda b: records.score_mean("gap", _early_gap(scored, summ.assign(broken=b), P), k=3).ci
                          or (np.nan, np.nan), refit_broken,
                          (summ.model.isin(["sft", "dpo"]) & (summ.kind == "single") & (summ.layer == early)).to_numpy())
    qs.append(records.Quantity(gap_q.name, gap_q.value, gap_q.unit, gap_q.n, gap_w.ci,
                               gap_q.tolerance, gap_q.tolerance_rule))
    mv = multi[multi.model == "dpo"]
    mvs = pd.Series(dtype=float)
    if len(mv) and np.isfinite(mv.difference.iloc[0]):
        mvs = _multi_minus_single(scored, "dpo", _best(summ, "dpo", "multi"), _best(summ, "dpo", "single"))
    qs.append(records.score_mean("dpo_multi_minus_single", mvs, k=3))
    push = _cell(scored, "dpo", "single", max(P.layers), max(P.ratios), col="coherent")
    qs.append(records.rate("dpo_coherent_max_push", float(push.mean()) if len(push) else np.nan,
                           n=max(len(push), 1)))
    if scale is not None and all(np.isfinite([scale["slope"], scale["lo"], scale["hi"]])):
        qs.append(records.Quantity("reading_slope", scale["slope"], "reading points per gold point", scale["n"],
                                   (scale["lo"], scale["hi"]), *records.se_tolerance(
                                       max((scale["hi"] - scale["lo"]) / 3.92, 1e-3), k=3)))
    if floors is not None:
        qs.append(records.rate("floors_balanced_accuracy", floors.balanced_accuracy, n=floors.n))
    by = {q.name: q for q in qs}
    slope = scale["slope"] if scale is not None else 1.0  # NaN (no usable gold scores): no MDE verdicts

    def ours(s: float) -> float:
        """A seed effect (its judge's points) in our reading's points."""
        return s * slope

    fmt = records.format_quantity
    # the positive control: the control model with its own vectors; without one, the base model
    # steered by its own vectors (a weaker control: it shares the chain's judge but not its model)
    control = steers.get(CONTROL, steers.get("base"))
    control_name = P.control_model if CONTROL in models else "the base model"
    claims = []
    both = steers.get("sft", False) and steers.get("dpo", False)
    mde = max((unc.score_mde(_delta(scored, m, "single", *_at(summ, m))) if _at(summ, m)[0] is not None
               else np.inf) for m in ("sft", "dpo"))
    # the seed's best push into each fine-tune (its L12 rows), on our reading's scale
    seed_best = SEED[SEED.layer == 12]
    seed_push = {m.lower(): ours(t - SEED_BASELINE) for m, t in zip(seed_best.model, seed_best.trait, strict=True)}
    v, why = records.decide(holds=both, positive_control=control, seed_effect=min(seed_push.values()), mde=mde)
    if v == "not held" and control:
        ctl = CONTROL if CONTROL in models else "base"
        seen = [m.upper() for m in ("sft", "dpo") if steers.get(m, False)]
        unseen = [m for m in ("sft", "dpo") if not steers.get(m, False)]
        why = (f"the same pipeline steers the positive control ({control_name}, its own vectors: "
               f"Δ {fmt(by[f'{ctl}_best_delta'])})" + (f" and the {seen[0]} model" if seen else "")
               + " but not " + " or ".join(f"the {m.upper()} model (Δ {fmt(by[f'{m}_best_delta'])})" for m in unseen))
        # a control shows the pipeline can see a push; an interval that still holds the seed's push
        # has neither seen the effect nor ruled it out
        open_ = [m for m in unseen if (ci := by[f"{m}_best_delta"].ci) is not None and ci[1] >= seed_push[m]]
        if open_:
            pushes = ", ".join(f"{seed_push[m]:.1f} points for {m.upper()}" for m in open_)
            v, why = "inconclusive", (f"{why}, whose interval still holds the seed's push ({pushes} "
                                      "on this reading's scale): it is neither seen nor ruled out")
    elif v != "holds" and control is False:  # a blind pipeline: no MDE can stand in for the control
        v, why = "inconclusive", (f"the positive control ({control_name}, its own vectors) was not seen to "
                                  "steer either: this pipeline's power to see steering is not shown")
    if lost:  # some floors leave a model nothing unbroken: its effect is unmeasured there, not absent
        v = "inconclusive" if v == "not held" else v
        why = f"{why}; " + "; ".join(lost)
    claims.append(records.Claim(
        "transfer_works", "Base-model vectors steer the SFT and the DPO model (best unbroken Δ trait > 0, "
        "selection-adjusted interval)", seed="trait 84 (SFT), 83 (DPO) at L12 vs baseline 61.3",
        ours=f"Δ SFT {fmt(by['sft_best_delta'])}; Δ DPO {fmt(by['dpo_best_delta'])}", verdict=v, reason=why,
        quantity="dpo_best_delta"))
    gq = by["sft_minus_dpo_early"]
    v, why = records.decide(holds=gq.ci is not None and gq.ci[0] > 0, seed_effect=ours(82.5 - 65.8),
                            mde=unc.score_mde(gap) if len(gap) else None,
                            comparable=len(gap) > 0,
                            comparable_reason=f"no ratio at L{early} leaves both fine-tunes unbroken")
    sft_early = _best(summ, "sft", "single", early)
    if gap_q.ci is not None and gap_w.ci is None:  # measured, but some floors leave no ratio to compare
        v, why = "inconclusive", (f"{gap_w.lost:.0%} of the floors refitted on resampled gold questions leave "
                                  f"no ratio at L{early} where both fine-tunes are unbroken")
    elif v == "not held" and not (sft_early is not None and sft_early.ci_lo > 0):
        # the seed's gap is DPO resisting a push that moves SFT: with SFT unmoved there is nothing to resist
        v, why = "inconclusive", (f"base vectors do not move the SFT model at L{early} either (best unbroken Δ "
                                  + ("none" if sft_early is None else f"{sft_early.delta:+.1f} [{sft_early.ci_lo:+.1f}, "
                                     f"{sft_early.ci_hi:+.1f}]") + "), so there is no push for DPO to resist")
    claims.append(records.Claim(
        "dpo_resists_early", f"At an early layer (ours: L{early}, the earliest steered) base vectors move the "
        "DPO model less than the SFT model (per-question Δ SFT − Δ DPO over the ratios where both are unbroken)",
        seed=f"L8 of 32: SFT 82.5 vs DPO 65.8 (16.7 points; {ours(16.7):.1f} on our reading's scale)",
        ours=fmt(gq), verdict=v, reason=why, quantity="sft_minus_dpo_early"))
    s_top, d_top = _best(summ, "sft", "single"), _best(summ, "dpo", "single")
    agree = best_layer_agreement(scored, P, refits)
    if agree.n:
        qs.append(records.rate("best_layer_agreement", agree.agree, n=P.n_questions, items=2))
    sure = f"a best layer is an argmax over noisy cells: a verdict needs ≥ {BEST_LAYER_SURE:.0%} of resamples"
    over = "question and gold-set resamples" if refits is not None else "question resamples"
    if len(P.layers) < 2:
        v, why = "not comparable", f"one steered layer ({P.layers}): no best layer to compare"
    elif s_top is None or d_top is None or not agree.n:
        v, why = "inconclusive", "a model has no unbroken condition: no best layer"
    elif agree.agree >= BEST_LAYER_SURE:
        v, why = "holds", f"the best layers agree in {agree.agree:.0%} of {over}"
    elif agree.differ >= BEST_LAYER_SURE:
        v, why = "not held", f"the best layers differ in {agree.differ:.0%} of {over}"
    else:
        none = f" ({agree.undecided:.0%} leave a model no unbroken condition)" if agree.undecided > 0 else ""
        v, why = "inconclusive", (f"the best layers agree in {agree.agree:.0%} and differ in {agree.differ:.0%} "
                                  f"of {over}{none}; {sure}")
    where = (f"SFT L{int(s_top.layer)}, DPO L{int(d_top.layer)}" if s_top is not None and d_top is not None
             else "no unbroken condition in one model")
    claims.append(records.Claim("optimal_layer_preserved", "SFT and DPO share their best steering layer",
                                seed="L12 for both", ours=where, verdict=v, reason=why,
                                quantity="best_layer_agreement" if agree.n else None))
    mq = by["dpo_multi_minus_single"]
    v, why = records.decide(holds=mq.ci is not None and mq.ci[0] > 0,
                            seed_effect=ours(SEED_MULTI["multi (layers 6–10)"] - SEED_MULTI["best single layer"]),
                            mde=unc.score_mde(mvs) if len(mvs) else None,
                            comparable=bool(P.multi_layers and P.multi_ratios) and len(mvs) > 0,
                            comparable_reason="no unbroken multi-layer and single-layer condition to compare")
    claims.append(records.Claim(
        "multi_beats_single", "Multi-layer steering beats the best single layer (DPO model, both unbroken)",
        seed="90.8 vs 89.3 (baseline 61.3)", ours=fmt(mq), verdict=v, reason=why, quantity="dpo_multi_minus_single"))
    pq = by["dpo_coherent_max_push"]
    lo_hi = unc.wilson(int(round(pq.value * len(push))), len(push)) if len(push) else (np.nan, np.nan)
    v, why = records.decide(holds=bool(lo_hi[1] < P.coherent_share), comparable=max(P.ratios) > BROKEN_FROM,
                            comparable_reason=f"our largest ratio {max(P.ratios)} does not reach the "
                                              f"seed's broken region (> {BROKEN_FROM})")
    if v == "inconclusive":
        why = (f"{100 * pq.value:.0f}% [{100 * lo_hi[0]:.0f}, {100 * lo_hi[1]:.0f}] of the answers stay coherent: "
               "the cliff is not shown; with text-coherence floors there is no MDE on the seed's scale")
    claims.append(records.Claim(
        "dpo_cliff", f"Pushed hardest (L{max(P.layers)}, ratio {max(P.ratios):g}) the DPO model collapses "
        f"(fewer than {100 * P.coherent_share:.0f}% coherent answers)", seed="L24, coef 6: trait 1.1, coherence 6.3",
        ours=f"{100 * pq.value:.0f}% coherent", verdict=v, reason=why, quantity="dpo_coherent_max_push"))
    tables = {"summary": summ, "best_per_layer": best, "multi_vs_single": multi, "learned_vs_random": lvr}
    if norms is not None:
        tables["norms"] = norms
    chain_name = f"chain:{P.chain_profile}" if P.models is None else "→".join(P.models.values())
    return records.ResultRecord("sft_dpo_transfer", model=chain_name, quantities=tuple(qs),
                                claims=tuple(claims), tables=tables, params=asdict(P))


def _unbroken(summ: pd.DataFrame, model: str, layer: int, ratio: float) -> bool:
    row = summ[(summ.model == model) & (summ.kind == "single") & (summ.layer == layer)
               & np.isclose(summ.ratio, ratio)]
    return bool(len(row)) and not bool(row.broken.iloc[0])


def _at(summ: pd.DataFrame, model: str) -> tuple[int | None, float | None]:
    """(layer, ratio) of the model's best unbroken learned condition (None, None: none)."""
    top = _best(summ, model, "single")
    return (None, None) if top is None else (int(top.layer), float(top.ratio))
