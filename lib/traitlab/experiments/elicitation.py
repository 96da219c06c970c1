"""Natural vs instruction-based elicitation of a trait vector.

- **Natural** vector: ``method`` on our contrastive scenario pairs (``data/traits/<trait>.jsonl``,
  train split): written responses that show the trait or not, read by the model.
- **Instruction** vector: the model answers neutral questions under system prompts that ask for
  the trait and under ones that ask for its opposite (``n_system_prompts`` paraphrases per
  polarity, ``data/elicitation/instructions.jsonl``); ``method`` on the response-mean activations
  of its *own* answers (system prompt included in the context), train questions only, every
  question under every paraphrase.

First, a check that the instructions work at all: the judge scores the instructed answers to the
test questions (question i under paraphrase i mod ``n_system_prompts``, once per polarity), and
the positive-minus-negative difference, paired by question, must be above 0 (``instructed_effect``).
This is also the positive control of the judge for the trait: the size of difference it can see.

Compared per layer: cosine similarity, with a bootstrap interval over the units each vector is
fitted from (natural pairs, instruction questions); cross-projection (each vector classifying the
other source's held-out examples: natural val pairs, instruction answers to test questions), with
Wilson intervals; and steering: each vector added at ``steer_layers`` (response positions,
coefficient = ``ratio`` × the site's mean activation norm) on the test questions, *without* any
system prompt, trait scored by the judge, delta vs unsteered with a t-interval over questions.

Example:
    >>> sorted(instructions())
    ['formality', 'humor', 'optimism', 'sycophancy']
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
from ..data import load_trait, opinion_questions, read_project_jsonl, system_prompts
from ..directions import METHODS, fit_direction
from ..judge import Judge, judge_from_params, unjudgeable
from ..metrics import evaluate
from ..models import LoadedModel, describe
from ..params import ParamError, check_max_pairs, traits_folder
from ..sites import SITE_NAMES, Site, check_sites
from ..steered_eval import (
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
)
from ..steering import activation_norms

SEED = pd.DataFrame([("optimism", 0.63, np.nan, 97.0, True, True), ("sycophancy", 0.20, 84.0, 50.0, False, True)],
                    columns=["trait", "cosine", "natural_detect_pct", "cross_pct", "natural_steers",
                             "instruction_steers"]).set_index("trait")
"""The seed's elicitation comparison (Qwen2.5-7B-Instruct): cosine natural vs instruction (at L20),
cross-projection accuracy (optimism 97–100%, sycophancy ~50%), whether each vector steers."""


def instructions(path: str | None = None) -> dict[str, dict[str, list[str]]]:
    """trait → {positive: [system prompts], negative: [system prompts]} (``data.system_prompts``;
    ``path``: a report's ``instructions_file``, null for the shipped ones)."""
    return system_prompts(path)


def questions(trait: str, split: str, n: int | None, path: str | None = None) -> pd.DataFrame:
    """Neutral questions for a trait: sycophancy has its own set; others use the opinion questions
    (``path``: a report's ``questions_file``, null for the shipped ones)."""
    if trait == "sycophancy":
        df = pd.DataFrame(read_project_jsonl("elicitation", "sycophancy_questions.jsonl"))
        df = df[df.split == split].reset_index(drop=True)
    else:
        df = opinion_questions(split, path=path)
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
    n_system_prompts: int = 5
    """Paraphrased system prompts per polarity (the first n in instructions.jsonl)."""
    n_instruction_questions: int = 10
    n_test_questions: int = 20
    max_new_tokens: int = 40
    reading: Literal["absolute", "yesno", "opposite", "probe"] = "probe"
    """How each answer's trait is read (``steered_eval.JUDGE_READINGS``): ``probe`` (the default)
    reads the local judge model's activations with a probe fitted on the trait's gold answers (the
    judge-calibration report: for the 0.5B judge it sees the smallest effects on sycophancy and
    ties the judge's score on optimism); ``absolute`` is the judge's logprob score, as the seed."""
    judge_backend: Literal["local", "openai"] = "local"
    judge_model: str = "qwen2.5-coder-0.5b-instruct"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_offline: bool = False
    judge_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    min_mass: float = 0.25
    gold_dir: str | None = None
    """A folder of one's own ``gold_<trait>.jsonl`` gold sets, read in place of ours (``data/judge``)
    for the traits it holds (``judge_power.gold_path``); null: ours only."""
    trait_descriptions: dict[str, str] = field(default_factory=dict)
    """One-line judge definitions of traits ``traitlab.judge.TRAIT_DESCRIPTIONS`` lacks (or to
    replace one there), e.g. ``{candour: "saying plainly what one thinks."}``."""
    trait_opposites: dict[str, list[str]] = field(default_factory=dict)
    """Opposites to read traits through (the ``opposite`` reading) beyond ``judge.TRAIT_OPPOSITES``,
    trait → [name, one-line definition], e.g. ``{cheer: [gloom, "a bleak, downcast tone."]}``."""
    batch_size: int = 16
    n_boot: int = 1000
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    max_pairs_per_split: int | None = None
    """The natural vector's pairs: the first N train and first N val pairs of each trait
    (``data.load_trait``; for quick profiles); null: all of them."""
    questions_file: str | None = None
    """A JSONL file of ``{"id", "question", "split"}`` questions the steered answers respond to
    (``data.opinion_questions``); null: the shipped ``data/steering/optimism_questions.jsonl``."""
    instructions_file: str | None = None
    """A JSONL file of ``{"trait", "positive": [...], "negative": [...]}`` system prompts per trait
    (``data.system_prompts``); null: the shipped ``data/elicitation/instructions.jsonl``."""

    def __post_init__(self) -> None:
        if not self.traits:
            raise ParamError("traits is empty")
        if (why := unjudgeable(self.traits, self.trait_descriptions, self.trait_opposites)) is not None:
            raise ParamError(why)
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
        check_max_pairs(self.max_pairs_per_split)
        for name in ("max_new_tokens", "batch_size", "n_system_prompts", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_reading(self.reading, self.judge_backend)

    def check(self) -> list[Site]:
        check_reading(self.reading, self.judge_backend, self.traits, gold_dir=self.gold_dir,
                      trait_opposites=self.trait_opposites)
        info = describe(self.model, self.revision)
        sites = [Site(self.site, x) for x in self.layers]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        known = instructions(self.instructions_file)
        where = self.instructions_file or "data/elicitation/instructions.jsonl"
        for t in self.traits:
            load_trait(t, folder=traits_folder(self.traits_dir))
            if t not in known:
                raise ParamError(f"no system prompts for {t!r} in {where} (have {', '.join(known)}); give "
                                 f"your own with instructions_file: a JSONL file of "
                                 f'{{"trait": "{t}", "positive": [...], "negative": [...]}} lines')
            for pol, ps in known[t].items():
                if len(ps) < self.n_system_prompts:
                    raise ParamError(f"{t}: {where} has {len(ps)} {pol} system "
                                     f"prompts, n_system_prompts asks for {self.n_system_prompts}")
            for split, n in (("train", self.n_instruction_questions), ("test", self.n_test_questions)):
                if (have := len(questions(t, split, None, self.questions_file))) < n:
                    raise ParamError(f"{t}: only {have} {split} questions, asked for {n}")
        if self.judge_backend == "local":
            describe(self.judge_model)
        return sites

    def judge(self) -> Judge:
        return judge_from_params(self, gold_dir=self.gold_dir, trait_opposites=self.trait_opposites)


@dataclass(frozen=True)
class TraitVectors:
    """Both vectors per layer, the training activations they were fitted on (for the cosine's
    bootstrap) and each source's held-out activations (for cross-projection)."""

    natural: dict[int, torch.Tensor]
    instruction: dict[int, torch.Tensor]
    natural_val: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer → (pos, neg) val activations
    instruction_val: dict[int, tuple[torch.Tensor, torch.Tensor]]
    instruction_answers: pd.DataFrame  # split, question, polarity, prompt (paraphrase index), answer
    natural_train: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # row i: pair i
    instruction_train: dict[int, torch.Tensor] = field(default_factory=dict)  # train answers' activations
    instruction_train_question: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # unit of each row
    instruction_train_positive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def _instructed_answers(P: Params, lm: LoadedModel, trait: str, progress: bool = False) -> pd.DataFrame:
    """The model's own answers under the system prompts: every train question under each of the
    first ``n_system_prompts`` paraphrases per polarity; test question i under paraphrase
    i mod ``n_system_prompts`` (once per polarity). Cached like every generation."""
    sysp = {pol: ps[:P.n_system_prompts] for pol, ps in instructions(P.instructions_file)[trait].items()}
    parts = [instructed_answers(lm, questions(trait, split, n, P.questions_file)[["question"]].assign(split=split), sysp,
                                every=split == "train", max_new_tokens=P.max_new_tokens, batch_size=P.batch_size,
                                progress=progress, desc=f"instructed {trait} ({split})")
             for split, n in (("train", P.n_instruction_questions), ("test", P.n_test_questions))]
    return pd.concat(parts, ignore_index=True)[["split", "question", "polarity", "prompt", "answer"]]


def trait_vectors(P: Params, lm: LoadedModel, trait: str, sites: list[Site], progress: bool = True) -> TraitVectors:
    """Both vectors per layer, and each source's held-out activations for cross-projection."""
    ds = load_trait(trait, max_pairs_per_split=P.max_pairs_per_split, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(lm.chat)
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    split = np.array([p.split for p in ds.pairs])
    n = len(ds.pairs)
    tr, va = torch.from_numpy(np.flatnonzero(split == "train")), torch.from_numpy(np.flatnonzero(split == "val"))
    ans = _instructed_answers(P, lm, trait, progress)
    sysp = instructions(P.instructions_file)[trait]
    enc: list[Encoded] = [lm.chat.encode(r.question, r.answer or " ", system=sysp[r.polarity][r.prompt])
                          for r in ans.itertuples()]
    iacts = extract(lm, enc, sites, position="mean", batch_size=P.batch_size, progress=progress)
    itr = torch.tensor(np.flatnonzero(ans.split == "train"))
    ite = torch.tensor(np.flatnonzero(ans.split == "test"))
    ipos = torch.tensor((ans.polarity == "positive").to_numpy())
    train_q = pd.factorize(ans.question[ans.split == "train"])[0]
    nat, ins, nval, ival, ntrain, itrain = {}, {}, {}, {}, {}, {}
    for s in sites:
        nat[s.layer] = fit_direction(P.method, acts[s][tr], acts[s][n + tr], seed=P.seed, site=str(s),
                                     trait=f"{trait}/natural").vector
        a = iacts[s]
        tp, tn = a[itr][ipos[itr]], a[itr][~ipos[itr]]
        ins[s.layer] = fit_direction(P.method, tp, tn, seed=P.seed, site=str(s), trait=f"{trait}/instructed").vector
        nval[s.layer] = (acts[s][va], acts[s][n + va])
        ival[s.layer] = (a[ite][ipos[ite]], a[ite][~ipos[ite]])
        ntrain[s.layer] = (acts[s][tr], acts[s][n + tr])
        itrain[s.layer] = a[itr]
    return TraitVectors(nat, ins, nval, ival, ans, ntrain, itrain, train_q, ipos[itr].numpy())


def cosine_bootstrap(P: Params, tv: TraitVectors) -> dict[int | str, unc.Bootstrap]:
    """cosine(natural, instruction) per layer and its mean over layers (key ``"mean"``), each with
    a bootstrap over the units the vectors are fitted from: natural train pairs and instruction
    train questions (a question brings all its answers), resampled independently, both vectors
    refitted by ``P.method`` on every draw (cheap for mean_diff; use a small ``n_boot`` for probe).

    The interval says how much the cosine depends on which examples were drawn; it does not cover
    other prompt sets or instructions."""
    layers = list(tv.natural)
    units = [np.flatnonzero(tv.instruction_train_question == q) for q in range(tv.instruction_train_question.max() + 1)]
    n_pairs = len(next(iter(tv.natural_train.values()))[0])
    draws = unc.unit_draws({"natural": n_pairs, "instruction": len(units)}, P.n_boot, P.seed)
    cos = torch.nn.functional.cosine_similarity

    def one(nat_idx: np.ndarray, q_idx: np.ndarray) -> np.ndarray:
        rows = np.concatenate([units[q] for q in q_idx])
        is_pos = torch.from_numpy(tv.instruction_train_positive[rows])
        out = []
        for layer in layers:
            p, q = tv.natural_train[layer]
            a = tv.instruction_train[layer][torch.from_numpy(rows)]
            n = fit_direction(P.method, p[nat_idx], q[nat_idx], seed=P.seed, log=False).vector
            i = fit_direction(P.method, a[is_pos], a[~is_pos], seed=P.seed, log=False).vector
            out.append(float(cos(n, i, dim=0)))
        return np.array(out)

    observed = np.array([float(cos(tv.natural[x], tv.instruction[x], dim=0)) for x in layers])
    vals = np.stack([one(draws["natural"][b], draws["instruction"][b]) for b in range(P.n_boot)])
    out: dict[int | str, unc.Bootstrap] = {x: unc.Bootstrap(float(observed[j]), vals[:, j]) for j, x in enumerate(layers)}
    out["mean"] = unc.Bootstrap(float(observed.mean()), vals.mean(axis=1))
    return out


CROSS = (("natural", "natural"), ("natural", "instruction"), ("instruction", "natural"), ("instruction", "instruction"))
"""(vector, held-out data) cells of the cross-projection table."""


def compare(trait: str, tv: TraitVectors, cosines: dict[int | str, unc.Bootstrap] | None = None) -> pd.DataFrame:
    """Per layer: cosine(natural, instruction) (with its bootstrap interval when ``cosines`` is
    given) and the four detection accuracies (vector × held-out source) with Wilson intervals
    over the held-out examples, and AUROCs."""
    rows = []
    for layer in tv.natural:
        n, i = tv.natural[layer], tv.instruction[layer]
        row = {"trait": trait, "layer": layer, "cosine": float(torch.nn.functional.cosine_similarity(n, i, dim=0))}
        if cosines is not None:
            row["cosine_lo"], row["cosine_hi"] = cosines[layer].ci
        vec = {"natural": n, "instruction": i}
        data = {"natural": tv.natural_val[layer], "instruction": tv.instruction_val[layer]}
        for vname, dname in CROSS:
            p, q = data[dname]
            m = evaluate(vec[vname], p, q)
            k, total = round(m.val_accuracy * (len(p) + len(q))), len(p) + len(q)
            lo, hi = unc.wilson(k, total)
            row[f"{vname}_on_{dname}_acc"] = 100 * m.val_accuracy
            row[f"{vname}_on_{dname}_lo"], row[f"{vname}_on_{dname}_hi"] = 100 * lo, 100 * hi
            row[f"{vname}_on_{dname}_n"] = total
            row[f"{vname}_on_{dname}_auroc"] = m.auroc
        rows.append(row)
    return pd.DataFrame(rows).set_index(["trait", "layer"])


def cross_projection(cmp: pd.DataFrame) -> pd.DataFrame:
    """Per trait, the layer where the weaker of the two cross accuracies (natural vector on
    instruction answers, instruction vector on natural pairs) is highest, with both cross and both
    own-source accuracies there (the own-source ones are the positive control: the read-out can
    see a separation where there is one). The layer is picked after the fact, as the seed reports
    its best."""
    rows = []
    for trait, g in cmp.groupby(level="trait", sort=False):
        cross = g[["natural_on_instruction_acc", "instruction_on_natural_acc"]].min(axis=1)
        layer = int(cross.idxmax()[1])
        r = g.loc[(trait, layer)]
        rows.append({"trait": trait, "layer": layer, "cross_min": float(cross.max()),
                     **{f"{v}_on_{d}_{x}": float(r[f"{v}_on_{d}_{x}"]) for v, d in CROSS for x in ("acc", "lo", "hi")},
                     "n_natural": int(r.natural_on_natural_n), "n_instruction": int(r.instruction_on_instruction_n)})
    return pd.DataFrame(rows).set_index("trait")


def judge_instructed(judge: Judge, tvs: dict[str, TraitVectors], reading: str = "absolute",
                     progress: bool = True) -> pd.DataFrame:
    """The trait reading (``score``, by ``reading``: ``steered_eval.judge_answers``) of every
    instructed answer to a test question."""
    parts = [tv.instruction_answers[tv.instruction_answers.split == "test"].assign(trait=t) for t, tv in tvs.items()]
    return judge_answers(judge, pd.concat(parts, ignore_index=True), {"trait": "score"}, reading=reading,
                         progress=progress)


def instructed_effect(judged: pd.DataFrame) -> pd.DataFrame:
    """Per trait: mean judge score of the answers under the positive and the negative system
    prompts, their difference paired by question with a 95% t-interval and its minimum detectable
    effect; ``differ`` when the interval lies above 0 (``steered_eval.polarity_effects``)."""
    return polarity_effects(judged)


def steer(P: Params, lm: LoadedModel, trait: str, tv: TraitVectors, progress: bool = True) -> pd.DataFrame:
    """Unsteered and steered answers (no system prompt) to the trait's test questions."""
    qs = questions(trait, "test", P.n_test_questions, P.questions_file)[["question"]]
    sites = [Site(P.site, x) for x in P.steer_layers]  # type: ignore[arg-type]
    norms = activation_norms(lm, [lm.chat.encode(q) for q in qs.question], sites, batch_size=P.batch_size)
    conds = [Condition.unsteered(trait=trait, vector="none", layer=-1)]
    conds += [Condition((at_ratio(s, (tv.natural if src == "natural" else tv.instruction)[s.layer], P.ratio, norms),),
                        trait=trait, vector=src, layer=s.layer)
              for s in sites for src in ("natural", "instruction")]
    return generate_answers(lm, qs, conds, max_new_tokens=P.max_new_tokens, batch_size=P.batch_size,
                            progress=progress, desc=f"steer {trait}")


def judge_steered(judge: Judge, answers: pd.DataFrame, reading: str = "absolute", progress: bool = True
                  ) -> pd.DataFrame:
    """Add every answer's trait reading (by ``reading``) as ``score``."""
    return judge_answers(judge, answers, {"trait": "score"}, reading=reading, progress=progress)


def steering_effect(judged: pd.DataFrame) -> pd.DataFrame:
    """Per (trait, vector, layer): mean trait score and delta vs unsteered (paired by question),
    with a 95% t-interval over questions and the minimum detectable effect at this n (80% power);
    ``steers`` when the interval is above 0."""
    e = paired_effects(judged, by=["trait", "vector", "layer"], baseline=judged.vector == "none", within=["trait"])
    ci = [f"[{lo:+.1f}, {hi:+.1f}]" if n > 1 else "n/a" for lo, hi, n in zip(e.ci_lo, e.ci_hi, e.n, strict=True)]
    return pd.DataFrame({"steered": e.steered, "baseline": e.baseline, "delta": e.delta, "delta_ci95": ci,
                         "ci_lo": e.ci_lo, "ci_hi": e.ci_hi,
                         "mde": [unc.mde(se, n) for se, n in zip(e.se, e.n, strict=True)], "n": e.n,
                         "steers": (e.n > 1) & (e.ci_lo > 0)}, index=e.index)


def versus_seed(cmp: pd.DataFrame, eff: pd.DataFrame, instructed: pd.DataFrame | None = None,
                cosines: dict[str, dict[int | str, unc.Bootstrap]] | None = None) -> pd.DataFrame:
    """Per trait: our cosine (mean over layers, with its bootstrap interval when ``cosines`` is
    given), natural detection on natural val, the best-layer cross-projection, whether the
    instructions change the judged answers, which vectors steer; and the seed's values."""
    rows = []
    cross = cross_projection(cmp)
    for trait, g in cmp.groupby(level="trait", sort=False):
        e = eff.loc[trait] if trait in eff.index.get_level_values(0) else None
        cb = cosines[trait]["mean"] if cosines is not None and trait in cosines else None
        ins = instructed.loc[trait] if instructed is not None and trait in instructed.index else None
        rows.append({"trait": trait, "cosine_max": g.cosine.max(), "cosine_mean": g.cosine.mean(),
                     "cosine_lo": cb.ci[0] if cb else np.nan, "cosine_hi": cb.ci[1] if cb else np.nan,
                     "natural_detect_pct": g.natural_on_natural_acc.max(),
                     "cross_layer": cross.loc[trait, "layer"], "cross_min_pct": cross.loc[trait, "cross_min"],
                     "instructed_delta": ins.delta if ins is not None else np.nan,
                     "instructions_differ": bool(ins is not None and ins.differ),
                     **{f"instructed_{k}": ins.get(k, np.nan) if ins is not None else np.nan
                        for k in ("pairs", "same", "similarity")},
                     "natural_steers": bool(e is not None and e.loc["natural"].steers.any()),
                     "instruction_steers": bool(e is not None and e.loc["instruction"].steers.any()),
                     **{f"seed_{c}": SEED.loc[trait, c] if trait in SEED.index else np.nan for c in SEED.columns}})
    return pd.DataFrame(rows).set_index("trait")


def conclusions(vs: pd.DataFrame, eff: pd.DataFrame) -> list[str]:
    out = []
    for trait, r in vs.iterrows():
        best = eff.loc[trait].delta.groupby(level="vector").max()
        ci = f" [{r.cosine_lo:.2f}, {r.cosine_hi:.2f}]" if np.isfinite(r.cosine_lo) else ""
        ins = ("the instructions change the judged answers by "
               f"{r.instructed_delta:+.1f} points" if r.instructions_differ else
               "the reader could not tell the positive- from the negative-instructed answers")
        change = change_text(pd.Series({k: r.get(f"instructed_{k}", np.nan) for k in ("pairs", "same", "similarity")}))
        if change:
            ins += f" ({change})"
        out.append(f"{trait}: {ins}; cosine natural vs instruction {r.cosine_mean:.2f}{ci} (mean over layers; "
                   f"max {r.cosine_max:.2f}); natural vector detects {r.natural_detect_pct:.0f}% of held-out pairs; "
                   f"cross-projection {r.cross_min_pct:.0f}% (weaker direction, best layer {int(r.cross_layer)}); "
                   f"best steering delta natural {best.get('natural', np.nan):+.1f}, instruction "
                   f"{best.get('instruction', np.nan):+.1f} (steers reliably: natural {r.natural_steers}, "
                   f"instruction {r.instruction_steers}). Seed: cosine {r.seed_cosine}, cross-projection "
                   f"{r.seed_cross_pct:.0f}%, natural steers {r.seed_natural_steers}, instruction steers "
                   f"{r.seed_instruction_steers}.")
    return out


@dataclass(frozen=True)
class Results:
    """Everything the record is built from: per-trait vectors and cosine bootstraps, the
    comparison and steering tables, and the judged instructed and steered answers."""

    vectors: dict[str, TraitVectors]
    cosines: dict[str, dict[int | str, unc.Bootstrap]]
    comparison: pd.DataFrame
    instructed: pd.DataFrame  # judged instructed answers (test split)
    steered: pd.DataFrame  # judged steered answers

    @property
    def instructed_effect(self) -> pd.DataFrame:
        return instructed_effect(self.instructed)

    @property
    def steering(self) -> pd.DataFrame:
        return steering_effect(self.steered)

    @property
    def versus_seed(self) -> pd.DataFrame:
        return versus_seed(self.comparison, self.steering, self.instructed_effect, self.cosines)


def _side(ci: tuple[float, float], threshold: float, above: bool) -> tuple[records.Verdict, str]:
    """Verdict for "the value is above (or below) ``threshold``" from its interval."""
    lo, hi = ci
    if (lo > threshold) if above else (hi < threshold):
        return "holds", f"the 95% interval [{lo:.2f}, {hi:.2f}] lies {'above' if above else 'below'} {threshold:g}"
    if (hi < threshold) if above else (lo > threshold):
        return "not held", f"the 95% interval [{lo:.2f}, {hi:.2f}] lies on the other side of {threshold:g}"
    return "inconclusive", f"the 95% interval [{lo:.2f}, {hi:.2f}] contains {threshold:g}"


def record(P: Params, res: Results) -> records.ResultRecord:
    """The report's result record: per trait, the instructed-answer difference (the judge's
    positive control), cosine natural vs instruction, natural detection and cross-projection at
    the best layer, each vector's best steering delta; and the seed's elicitation claims.

    Tolerance rules: counts exact; cosines 3 bootstrap SEs (over natural pairs and instruction
    questions: the instruction vector comes from generated answers); accuracies a rate over
    held-out examples, one flipping; judge deltas 3 cautious SEs over questions, paired (a judge
    reading generated text).
    """
    vs, eff, ins, cross = res.versus_seed, res.steering, res.instructed_effect, cross_projection(res.comparison)
    qs: list[records.Quantity] = [records.exact("n_layers", len(P.layers), unit="layers"),
                                  records.exact("n_test_questions", P.n_test_questions, unit="questions"),
                                  records.exact("n_system_prompts", P.n_system_prompts, unit="per polarity")]
    base = res.steered[res.steered.vector == "none"][["trait", "question", "score"]].rename(columns={"score": "base"})
    paired = res.steered[res.steered.vector != "none"].merge(base, on=["trait", "question"])
    neg = res.instructed[res.instructed.polarity == "negative"][["trait", "question", "score"]]
    ipaired = res.instructed[res.instructed.polarity == "positive"].merge(
        neg.rename(columns={"score": "neg"}), on=["trait", "question"])
    eff_sorted = eff.sort_index()  # a sorted MultiIndex: no lexsort warning on lookups
    best_cell: dict[tuple[str, str], pd.Series] = {}
    for trait in P.traits:
        g = ipaired[ipaired.trait == trait]
        qs.append(records.score_mean(f"{trait}_instructed_delta", (g.score - g.neg).to_numpy(float), k=3))
        if trait in ins.index:
            qs += change_quantities(f"{trait}_instructed", ins.loc[trait])
        cb = res.cosines[trait]["mean"]
        qs.append(records.estimate(f"{trait}_cosine_mean", cb.value, se=max(cb.se, 0.005), n=len(P.layers), k=3,
                                   ci=cb.ci))
        vp, vn = next(iter(res.vectors[trait].natural_val.values()))
        qs.append(records.rate(f"{trait}_natural_detect", float(vs.loc[trait, "natural_detect_pct"]),
                               n=len(vp) + len(vn), unit="%"))
        c = cross.loc[trait]
        for v, d in (("natural", "instruction"), ("instruction", "natural")):
            qs.append(records.rate(f"{trait}_{v}_on_{d}", c[f"{v}_on_{d}_acc"], unit="%",
                                   n=int(c.n_instruction if d == "instruction" else c.n_natural),
                                   ci=(c[f"{v}_on_{d}_lo"], c[f"{v}_on_{d}_hi"])))
        for src in ("natural", "instruction"):
            e = eff_sorted.loc[(trait, src)]
            layer = int(e.delta.idxmax()) if e.delta.notna().any() else int(e.index[0])
            best_cell[(trait, src)] = e.loc[layer]
            g = paired[(paired.trait == trait) & (paired.vector == src) & (paired.layer == layer)]
            qs.append(records.score_mean(f"{trait}_{src}_best_delta", (g.score - g.base).to_numpy(float), k=3))
    by = {q.name: q for q in qs}
    has = set(P.traits)
    claims = []

    def absent(trait: str) -> tuple[records.Verdict, str]:
        return records.decide(holds=False, comparable=False, comparable_reason=f"{trait} not in traits")

    # 1. cosine: cognitive > behavioural, and each side of the seed's quick diagnostic
    if {"optimism", "sycophancy"} <= has:
        a, b = res.cosines["optimism"]["mean"], res.cosines["sycophancy"]["mean"]
        gap = unc.Bootstrap(a.value - b.value, a.draws - b.draws)  # independent bootstraps: draw-wise difference
        v, why = records.decide(holds=gap.ci[0] > 0, seed_effect=0.63 - 0.20, mde=unc.mde(gap.se))
        ours = f"{a.value:.2f} vs {b.value:.2f} (difference {gap.value:+.2f} [{gap.ci[0]:+.2f}, {gap.ci[1]:+.2f}])"
    else:
        v, why = records.decide(holds=False, comparable=False,
                                comparable_reason="needs both optimism and sycophancy in traits")
        ours = "not run"
    claims.append(records.Claim(
        "cosine_cognitive_vs_behavioural", "Natural and instruction vectors agree more for optimism than for "
        "sycophancy (cosine, mean over layers)", seed="0.63 vs 0.20", ours=ours, verdict=v, reason=why))
    for trait, threshold, above, seed in (("optimism", 0.5, True, "0.63 (> 0.5: natural captures the same concept)"),
                                          ("sycophancy", 0.3, False, "0.20 (< 0.3: they capture different things)")):
        if trait in has:
            q = by[f"{trait}_cosine_mean"]
            v, why = _side(q.ci, threshold, above)
        else:
            v, why = absent(trait)
        claims.append(records.Claim(f"{trait}_cosine_{'above' if above else 'below'}_{threshold:g}",
                                    f"The {trait} cosine is {'above' if above else 'below'} {threshold:g}", seed=seed,
                                    ours="", verdict=v, reason=why, quantity=f"{trait}_cosine_mean" if trait in has else None))
    # 2. cross-projection
    if "optimism" in has:
        c = cross.loc["optimism"]
        own = min(c.natural_on_natural_acc, c.instruction_on_instruction_acc)
        if c.cross_min >= 90:
            v, why = "holds", f"both cross accuracies ≥ 90% at layer {int(c.layer)}"
        elif min(c.natural_on_instruction_hi, c.instruction_on_natural_hi) < 90 and own >= 90:
            v, why = "not held", (f"a cross accuracy's 95% interval lies below 90% at the best layer {int(c.layer)}, "
                                  f"while each vector separates its own source's held-out examples ({own:.0f}%: "
                                  "positive control)")
        else:
            v, why = "inconclusive", "the cross accuracies' intervals reach 90%, or the own-source control is below 90%"
        ours = (f"natural on instruction {c.natural_on_instruction_acc:.0f}%, instruction on natural "
                f"{c.instruction_on_natural_acc:.0f}% (layer {int(c.layer)})")
    else:
        (v, why), ours = absent("optimism"), ""
    claims.append(records.Claim("optimism_cross_projection", "Each optimism vector classifies the other source's "
                                "held-out examples", seed="97–100%", ours=ours, verdict=v, reason=why,
                                quantity="optimism_natural_on_instruction" if "optimism" in has else None))
    if "sycophancy" in has:
        c = cross.loc["sycophancy"]
        weak = min(("natural_on_instruction", "instruction_on_natural"), key=lambda k: c[f"{k}_acc"])
        lo, hi = c[f"{weak}_lo"], c[f"{weak}_hi"]
        if lo <= 50 <= hi or hi < 50:
            v, why = "holds", f"even at the best layer {int(c.layer)} the weaker direction ({weak}) is at chance: [{lo:.0f}, {hi:.0f}]%"
        else:
            v, why = "not held", (f"both directions classify above chance at layer {int(c.layer)} (the weaker, "
                                  f"{weak}, [{lo:.0f}, {hi:.0f}]%)")
        ours = (f"natural on instruction {c.natural_on_instruction_acc:.0f}%, instruction on natural "
                f"{c.instruction_on_natural_acc:.0f}% (layer {int(c.layer)})")
    else:
        (v, why), ours = absent("sycophancy"), ""
    claims.append(records.Claim("sycophancy_cross_projection", "The sycophancy vectors do not classify each "
                                "other's examples", seed="~50% (chance)", ours=ours, verdict=v, reason=why,
                                quantity="sycophancy_natural_on_instruction" if "sycophancy" in has else None))

    # 3. steering: a null counts only with a positive control (the other vector steered) or a
    # cell whose minimum detectable effect is below the difference the instructions make
    def steers(trait: str, src: str) -> bool:
        return bool(trait in vs.index and vs.loc[trait, f"{src}_steers"])

    def power(trait: str, src: str) -> tuple[bool, str]:
        other = "instruction" if src == "natural" else "natural"
        if steers(trait, other):
            return True, f"the {other} {trait} vector steered in this run (positive control)"
        cell, d = best_cell[(trait, src)], ins.loc[trait] if trait in ins.index else None
        if d is not None and d.differ and cell.mde < d.delta:
            return True, (f"this cell could detect {cell.mde:.1f} points, below the {d.delta:.1f} the "
                          "instructions make (the judge sees a difference of that size)")
        if d is None or not d.differ:
            change = change_text(d) if d is not None else ""
            return False, ("the reader could not tell the positive- from the negative-instructed answers"
                           f"{f' ({change})' if change else ''}: no power shown")
        return False, (f"this cell could detect only {cell.mde:.1f} points, not below the {d.delta:.1f} the "
                       "instructions make: it could have missed a real effect")

    for trait, src in (("optimism", "natural"), ("optimism", "instruction"), ("sycophancy", "instruction")):
        if trait not in has:
            v, why = absent(trait)
        elif steers(trait, src):
            v, why = records.decide(holds=True)
        else:
            ok, why = power(trait, src)
            v = "not held" if ok else "inconclusive"
            why = ("it did not steer; " if ok else "it did not steer, but ") + why
        claims.append(records.Claim(f"{trait}_{src}_steers", f"The {src} {trait} vector steers", seed="steers",
                                    ours="", verdict=v, reason=why,
                                    quantity=f"{trait}_{src}_best_delta" if trait in has else None))
    if "sycophancy" not in has:
        v, why = absent("sycophancy")
    elif steers("sycophancy", "natural"):
        v, why = "not held", "the natural sycophancy vector steered (95% interval above 0)"
    else:
        ok, why = power("sycophancy", "natural")
        v = "holds" if ok else "inconclusive"
        why = ("it did not steer, and " if ok else "it did not steer, but ") + why
    claims.append(records.Claim("sycophancy_natural_no_steer", "The natural sycophancy vector does not steer",
                                seed="detects 84%, does not steer", ours="", verdict=v, reason=why,
                                quantity="sycophancy_natural_best_delta" if "sycophancy" in has else None))
    return records.ResultRecord("elicitation", model=P.model, quantities=tuple(qs), claims=tuple(claims),
                                tables={"comparison": res.comparison, "steering": eff, "instructed": ins,
                                        "cross_projection": cross, "versus_seed": vs},
                                params=asdict(P))
