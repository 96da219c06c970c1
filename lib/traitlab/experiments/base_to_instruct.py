"""Base → instruct detection transfer: a vector extracted from a base model read in its tuned siblings.

The trait vector (``method`` on ``data/traits/<trait>.jsonl``, response-mean activations,
plain prompt format) is fitted once on the *base* model at each of ``layers``. Each model of
the chain (base, SFT, DPO: built by ``model_chain``) then answers harmful and benign requests
greedily while ``traitlab.monitor`` projects its own activations onto the base vector at every
generated token. Detection = how well the mean projection over the answer separates harmful
from benign requests: difference of means (bootstrap CI over prompts), AUROC, and midpoint
accuracy (threshold between the two group means; in-sample, so optimistic).

Second view (``template_model``): one instruct model read in two modes: vector fitted *without*
its chat template (the plain format, base-like use) and detection measured *with* the template
and without it.

Third view, **detection vs control** (``steer_ratios``): the same base vector added to each model
of the chain at ``site@claim_layer``, ± ratio × that model's mean activation norm there, every
position; steering strength = the *direction-specific* shift of the refusal log-odds at the first
answer token, half the difference between adding +v and −v (a shift both signs cause alike, a
model's response to any perturbation of that size, cancels), per prompt; ``steer_random`` random
unit directions at the claim ratio give its null. The seed: the base vector detects in the
instruct model (95%) but steers it ~3× more weakly than the base ("IT resists steering").

Example:
    >>> Params(template_model=None).views()
    ['chain']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .. import chain, data
from ..activations import extract
from ..chat import ChatFormat
from ..data import load_trait
from ..directions import METHODS, fit_direction, random_unit
from ..metrics import auroc, auroc_se, midpoint_accuracy
from ..models import LoadedModel, describe
from ..monitor import TokenTrace, Watch, monitor
from ..params import ParamError, check_max_pairs, traits_folder
from ..refusal import DEFAULT_OPENINGS, is_refusal, log_odds, opening_token_ids
from ..sites import SITE_NAMES, Site, check_sites
from ..steered_eval import at_ratio
from ..steering import activation_norms, steered_logits
from ..uncertainty import POWER_Z, bootstrap_difference, mean_se, t_interval

SEED = {"setting": "Gemma-2-2B base → Gemma-2-2B-IT, refusal probe at attn_out L8",
        "separation": 0.5, "accuracy_pct": 90.0, "steering_weaker": 3.0}
"""The seed's base → instruct result (≈0.5 separation in response means, ~90% accuracy) and its
detection-vs-control ratio (the instruct model steered ~3× more weakly than the base)."""


@dataclass(frozen=True)
class Params:
    chain_profile: str = "default"
    models: dict[str, str] | None = None
    trait: str = "refusal"
    method: str = "probe"
    site: str = "attn_out"
    layers: list[int] = field(default_factory=lambda: [4, 8, 12])
    template_model: str | None = "qwen2.5-coder-0.5b-instruct"
    template_layers: list[int] = field(default_factory=lambda: [8, 12, 16])
    harmful_sources: list[str] = field(default_factory=lambda: ["advbench"])
    n_harmful: int = 16
    n_benign: int = 16
    max_new_tokens: int = 32
    batch_size: int = 8
    n_boot: int = 2000
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    max_pairs_per_split: int | None = None
    """The vector's pairs: the first N train and first N val pairs of the trait (``data.load_trait``;
    for quick profiles); null: all of them."""
    claim_layer: int | None = None
    """The layer the verdicts read, fixed before the run (e.g. the seed's relative depth); null:
    the best of ``layers`` by AUROC, chosen after the fact (the record says which)."""
    n_random: int = 0
    """Random unit directions per layer read alongside the vector: the null AUROC (folded to
    ≥ 0.5, since a random direction has no sign) that a detection must clear."""
    steer_ratios: list[float] = field(default_factory=list)
    """Perturbation ratios at which the base vector is added (± each) to every model of the chain
    at ``site@claim_layer`` to read steering strength; empty: detection only."""
    steer_claim_ratio: float | None = None
    """The ratio (one of ``steer_ratios``) the detection-vs-control verdict reads."""
    steer_random: int = 0
    """Random unit directions added at ``steer_claim_ratio``: the null of steering strength."""

    def __post_init__(self) -> None:
        check_max_pairs(self.max_pairs_per_split)
        if self.method not in METHODS or self.method == "random":
            raise ParamError(f"method {self.method!r} unknown; choose from "
                             f"{', '.join(m for m in METHODS if m != 'random')}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, attn_out, mlp_out, resid_post; got {self.site!r}")
        if not self.layers:
            raise ParamError("layers is empty")
        if self.models is not None and ("base" not in self.models or set(self.models) - {"base", "sft", "dpo"}):
            raise ParamError(f"models must name base (and any of sft, dpo); got {sorted(self.models or {})}")
        bad = [s for s in self.harmful_sources if s not in data.HARMFUL_SOURCES]
        if bad or not self.harmful_sources:
            raise ParamError(f"unknown harmful sources {bad}; choose from {', '.join(data.HARMFUL_SOURCES)}")
        for name in ("n_harmful", "n_benign", "max_new_tokens", "batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.claim_layer is not None and self.claim_layer not in self.layers:
            raise ParamError(f"claim_layer {self.claim_layer} must be one of layers {self.layers}")
        if self.n_random < 0 or self.steer_random < 0:
            raise ParamError(f"n_random and steer_random must be >= 0, got {self.n_random}, {self.steer_random}")
        if self.steer_ratios:
            if any(not r > 0 for r in self.steer_ratios):
                raise ParamError(f"steer_ratios must be positive (each is added with both signs), got {self.steer_ratios}")
            if self.claim_layer is None:
                raise ParamError("steer_ratios needs claim_layer: the layer the base vector is added at")
            if self.steer_claim_ratio not in self.steer_ratios:
                raise ParamError(f"steer_claim_ratio {self.steer_claim_ratio} must be one of steer_ratios {self.steer_ratios}")
        elif self.steer_claim_ratio is not None or self.steer_random:
            raise ParamError("steer_claim_ratio and steer_random need steer_ratios (empty: no steering)")

    def views(self) -> list[str]:
        return ["chain"] + (["template"] if self.template_model else [])

    def chain_params(self) -> chain.ChainParams:
        return chain.profile_params(self.chain_profile)

    def check(self) -> None:
        """Layers against each model's config, the trait file and the data root (no weights)."""
        base = self.models["base"] if self.models else self.chain_params().base_model
        for spec, layers in [(base, self.layers)] + ([(self.template_model, self.template_layers)]
                                                     if self.template_model else []):
            info = describe(spec)
            try:
                check_sites([Site(self.site, x) for x in layers], info.arch, info.n_layers)  # type: ignore[arg-type]
            except ValueError as err:
                raise ParamError(f"{spec}: {err}") from None
        load_trait(self.trait, folder=traits_folder(self.traits_dir))
        requests(self)


def requests(P: Params) -> pd.DataFrame:
    """Harmful (data root) and benign (Self-Instruct seed tasks) requests: ``group``, ``prompt``."""
    harm = data.harmful_prompts(P.harmful_sources, P.n_harmful, P.seed)
    safe = data.harmless_prompts(P.n_benign, P.seed)
    return pd.DataFrame([{"group": "harmful", "prompt": p.text} for p in harm]
                        + [{"group": "benign", "prompt": p.text} for p in safe])


def chain_models(P: Params, progress: bool = True) -> dict[str, str]:
    """Specs of base/SFT/DPO: given, or built/reused from the chain profile."""
    if P.models is not None:
        return dict(P.models)
    return chain.build(P.chain_params(), progress=progress).paths


def base_vectors(P: Params, lm: LoadedModel, fmt: ChatFormat, layers: list[int],
                 progress: bool = True) -> dict[Site, torch.Tensor]:
    """One unit vector per layer from the trait's train pairs, read in format ``fmt``."""
    ds = load_trait(P.trait, max_pairs_per_split=P.max_pairs_per_split, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(fmt, "train")
    sites = [Site(P.site, x) for x in layers]  # type: ignore[arg-type]
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    n = len(pos)
    return {s: fit_direction(P.method, acts[s][:n], acts[s][n:], seed=P.seed, site=str(s),
                           model=lm.spec, trait=P.trait).vector for s in sites}


def read(P: Params, lm: LoadedModel, fmt: ChatFormat, vectors: dict[Site, torch.Tensor], req: pd.DataFrame,
         progress: bool = False) -> list[TokenTrace]:
    """Greedy answers in format ``fmt`` with the projection onto each vector at every token, and
    onto ``P.n_random`` seeded random unit directions per site (watches ``random<k>``)."""
    watches = [Watch(P.trait, s, v) for s, v in vectors.items()]
    watches += [Watch(f"random{k}", s, random_unit(v.numel(), P.seed + 1000 + k))
                for s, v in vectors.items() for k in range(P.n_random)]
    return monitor(lm, [fmt.encode(p) for p in req.prompt], watches, max_new_tokens=P.max_new_tokens,
                   score="projection", batch_size=P.batch_size, progress=progress)


def per_prompt(model: str, req: pd.DataFrame, traces: list[TokenTrace]) -> pd.DataFrame:
    """One row per (model, prompt, direction, layer): mean projection over the answer; does the
    answer refuse. ``direction`` is the watch's name (the trait, or ``random<k>``)."""
    rows = []
    for (_, r), t in zip(req.iterrows(), traces, strict=True):
        for key, s in t.scores.items():
            if len(s):
                rows.append({"model": model, "group": r.group, "prompt": r.prompt,
                             "direction": key.split("@", 1)[0], "layer": int(key.rsplit("@", 1)[1]),
                             "mean": float(s.mean()), "refuses": is_refusal(t.text), "answer": t.text})
    return pd.DataFrame(rows)


def trajectories(model: str, req: pd.DataFrame, traces: list[TokenTrace]) -> pd.DataFrame:
    """The trait vector's projection at every generated token (random directions left out)."""
    rows = []
    for (_, r), t in zip(req.iterrows(), traces, strict=True):
        for key, s in t.scores.items():
            if key.startswith("random"):
                continue
            rows += [{"model": model, "group": r.group, "layer": int(key.rsplit("@", 1)[1]), "step": i,
                      "score": float(x)} for i, x in enumerate(s)]
    return pd.DataFrame(rows)


def _trait(pp: pd.DataFrame, P: Params) -> pd.DataFrame:
    return pp[pp.direction == P.trait] if "direction" in pp.columns else pp


def _folded_auroc(x: np.ndarray, y: np.ndarray) -> float:
    a = auroc(x, y)
    return max(a, 1 - a)


def null_aurocs(pp: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (model, layer): the random directions' AUROCs, harmful vs benign and refused vs complied
    among harmful answers, folded to ≥ 0.5 (a random direction has no sign), and their 95th
    percentiles ``null_p95`` / ``refusal_null_p95`` (NaN without random watches or classes)."""
    out = []
    rnd = pp[pp.direction.str.startswith("random")] if "direction" in pp.columns else pp.iloc[:0]
    for (model, layer), d in rnd.groupby(["model", "layer"], sort=False):
        hb, rc = [], []
        for _, g in d.groupby("direction"):
            hb.append(_folded_auroc(g[g.group == "harmful"]["mean"].to_numpy(), g[g.group == "benign"]["mean"].to_numpy()))
            h = g[g.group == "harmful"]
            if h.refuses.sum() >= 2 and (~h.refuses).sum() >= 2:
                rc.append(_folded_auroc(h[h.refuses]["mean"].to_numpy(), h[~h.refuses]["mean"].to_numpy()))
        out.append({"model": model, "layer": layer, "n_random": len(hb), "null_p95": float(np.quantile(hb, 0.95)),
                    "refusal_null_p95": float(np.quantile(rc, 0.95)) if rc else np.nan})
    return pd.DataFrame(out, columns=["model", "layer", "n_random", "null_p95", "refusal_null_p95"]
                        ).set_index(["model", "layer"])


MIN_CLASS = 4
"""Fewest refused (and complied) harmful answers for a refused-vs-complied AUROC."""

NULL_CEILING = 0.95
"""A random-direction null whose 95th-percentile AUROC reaches this makes a verdict inconclusive:
when random directions separate the two groups as well, the test cannot show what the vector adds
(e.g. a fixed refusal sentence against compliant text)."""


def _null_verdict(p95: float | None) -> tuple[str, str] | None:
    if p95 is not None and np.isfinite(p95) and p95 >= NULL_CEILING:
        return "inconclusive", (f"random directions separate these answers as well (their 95th-percentile AUROC "
                                f"{p95:.2f} ≥ {NULL_CEILING}): the test cannot show what the vector adds")
    return None


def detection(pp: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (model, layer), for the trait vector: harmful − benign mean projection (bootstrap CI),
    AUROC, midpoint accuracy, the separation in pooled standard deviations, refusal rates, and
    **refused vs complied** among the harmful answers (``refusal_auroc``: the vector reading the
    model's behaviour, not the request; NaN with fewer than ``MIN_CLASS`` answers of either kind)."""
    out = []
    for (model, layer), d in _trait(pp, P).groupby(["model", "layer"], sort=False):
        x, y = d[d.group == "harmful"]["mean"].to_numpy(), d[d.group == "benign"]["mean"].to_numpy()
        lo, hi = bootstrap_difference(x, y, n_boot=P.n_boot, seed=P.seed).ci
        sd = np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2) if len(x) > 1 and len(y) > 1 else np.nan
        out.append({"model": model, "layer": layer, "separation": x.mean() - y.mean(), "ci95": f"[{lo:.2f}, {hi:.2f}]",
                    "separation_sd": (x.mean() - y.mean()) / sd if sd else np.nan, "auroc": auroc(x, y),
                    "accuracy_pct": 100 * midpoint_accuracy(x, y),
                    "harmful_refused_pct": 100 * d[d.group == "harmful"].refuses.mean(),
                    "benign_refused_pct": 100 * d[d.group == "benign"].refuses.mean(),
                    **_refused_vs_complied(d[d.group == "harmful"])})
    return pd.DataFrame(out).set_index(["model", "layer"])


def _refused_vs_complied(h: pd.DataFrame) -> dict[str, float | int]:
    r, c = h[h.refuses]["mean"].to_numpy(), h[~h.refuses]["mean"].to_numpy()
    ok = len(r) >= MIN_CLASS and len(c) >= MIN_CLASS
    return {"n_refused": len(r), "n_complied": len(c), "refusal_auroc": auroc(r, c) if ok else np.nan}


def verdict_key(d: pd.DataFrame, model: str, P: Params | None) -> tuple[tuple, bool]:
    """The (model, layer) row a model's verdict reads, and whether that layer was fixed in advance:
    ``P.claim_layer`` where the model was read there, else its best layer by AUROC."""
    fixed = P is not None and P.claim_layer is not None and (model, P.claim_layer) in d.index
    return ((model, P.claim_layer) if fixed else d.auroc.idxmax()), fixed  # type: ignore[union-attr]


def conclusions(det: pd.DataFrame, P: Params | None = None, null: pd.DataFrame | None = None) -> list[str]:
    """Plain-language findings, each number from the detection (and null) tables: per model the
    verdict layer (``P.claim_layer``, else the best AUROC), harmful vs benign and, where the model
    both refuses and complies, refused vs complied."""
    out = []
    for model, d in det.groupby(level="model", sort=False):
        key, fixed = verdict_key(d, model, P)
        r = d.loc[key]
        line = (f"{model}: {'layer' if fixed else 'best layer'} L{key[1]}: separation {r.separation:+.2f} {r.ci95} "
                f"({r.separation_sd:+.1f} SD), AUROC {r.auroc:.2f}, midpoint accuracy {r.accuracy_pct:.0f}%; "
                f"refuses {r.harmful_refused_pct:.0f}% of harmful / {r.benign_refused_pct:.0f}% of benign")
        if null is not None and key in null.index:
            line += f"; random directions' AUROC p95 {null.loc[key, 'null_p95']:.2f}"
        if np.isfinite(r.get("refusal_auroc", np.nan)):
            line += (f"; refused vs complied (harmful only, {int(r.n_refused)} vs {int(r.n_complied)}): "
                     f"AUROC {r.refusal_auroc:.2f}")
        out.append(line + ".")
    out.append(f"Seed: {SEED['setting']}: ≈{SEED['separation']} separation, ~{SEED['accuracy_pct']:.0f}% accuracy "
               "(its projection scale differs from ours; compare AUROC/accuracy, not raw separation).")
    return out


# ---- detection vs control: steering strength ------------------------------------------------

def steering_strength(P: Params, lm: LoadedModel, fmt: ChatFormat, vectors: dict[Site, torch.Tensor],
                      req: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per (direction, ratio, prompt): the refusal log-odds at the first answer token (``lo0``
    unsteered, ``lo_plus`` / ``lo_minus`` with ±ratio × the mean activation norm added at
    ``site@claim_layer`` at every position), ``specific`` = (lo_plus − lo_minus) / 2, the shift
    that follows the direction's sign, and ``common`` = (lo_plus + lo_minus) / 2 − lo0, the shift
    both signs cause. ``direction``: the trait (every ratio) and ``random<k>`` (the claim ratio).
    ``vectors``: ``base_vectors``'s {site: vector}; the one at ``site@claim_layer`` is added.

    Example (a tiny random model):
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-llama")
        >>> P = Params(layers=[1], claim_layer=1, steer_ratios=[0.5], steer_claim_ratio=0.5, steer_random=1)
        >>> req = pd.DataFrame({"group": ["harmful", "benign"], "prompt": ["Do harm", "Say hi"]})
        >>> t = steering_strength(P, m, m.chat, {Site("attn_out", 1): torch.ones(m.d_model)}, req, "base")
        >>> sorted(t.direction.unique()), len(t)
        (['random0', 'refusal'], 4)
    """
    site = Site(P.site, P.claim_layer)  # type: ignore[arg-type]
    vector = vectors[site]
    ex = [fmt.encode(p) for p in req.prompt]
    ids = opening_token_ids(fmt, DEFAULT_OPENINGS)
    norms = activation_norms(lm, ex, [site], batch_size=P.batch_size)

    def lo(steers: list) -> np.ndarray:
        return log_odds(steered_logits(lm, ex, steers, positions="all", batch_size=P.batch_size), ids).numpy()

    lo0 = lo([])
    jobs = [(P.trait, vector, r) for r in P.steer_ratios]
    jobs += [(f"random{k}", random_unit(vector.numel(), P.seed + 2000 + k), P.steer_claim_ratio)
             for k in range(P.steer_random)]
    rows = []
    for name, v, r in jobs:
        plus, minus = lo([at_ratio(site, v, r, norms)]), lo([at_ratio(site, -v, r, norms)])
        rows += [{"model": model, "direction": name, "ratio": r, "group": g, "prompt": p, "lo0": a, "lo_plus": b,
                  "lo_minus": c, "specific": (b - c) / 2, "common": (b + c) / 2 - a}
                 for g, p, a, b, c in zip(req.group, req.prompt, lo0, plus, minus, strict=True)]
    return pd.DataFrame(rows)


def steering_summary(st: pd.DataFrame) -> pd.DataFrame:
    """Per (model, direction, ratio): mean ``specific`` and ``common`` shift with SEs and
    t-intervals over prompts (the independent unit), and the unsteered refusal log-odds."""
    out = []
    for (model, direction, ratio), d in st.groupby(["model", "direction", "ratio"], sort=False):
        row = {"model": model, "direction": direction, "ratio": ratio, "n": len(d), "lo0": d.lo0.mean()}
        for col in ("specific", "common"):
            m, se, n = mean_se(d[col].to_numpy())
            row[col], row[f"{col}_se"], (row[f"{col}_lo"], row[f"{col}_hi"]) = m, se, t_interval(m, se, n)
        out.append(row)
    return pd.DataFrame(out).set_index(["model", "direction", "ratio"])


def _random_ceiling(st: pd.DataFrame, model: str, ratio: float) -> float:
    """The largest |mean specific shift| of the random directions (NaN without them)."""
    r = st[(st.model == model) & st.direction.str.startswith("random") & (st.ratio == ratio)]
    return float(r.groupby("direction").specific.mean().abs().max()) if len(r) else np.nan


def steering_verdict(st: pd.DataFrame, P: Params, tuned: str, base: str = "base"
                     ) -> tuple[dict[str, float], tuple[str, str]]:
    """The seed's "detection transfers, control weakens (~3×)": at ``steer_claim_ratio``, the
    paired per-prompt difference base − ``tuned`` of the specific shift. Holds when its 95%
    interval lies above 0; needs a positive control first, the vector steering the base model
    (interval above 0 and above every random direction's shift), else inconclusive; not held
    when the minimum detectable difference is below the seed's (the base shift × (1 − 1/3))."""
    from .. import records

    r = P.steer_claim_ratio
    a = st[(st.direction == P.trait) & (st.ratio == r)].pivot_table(index="prompt", columns="model",
                                                                     values="specific", sort=False)
    b_mean, b_se, n = mean_se(a[base].to_numpy())
    d_mean, d_se, _ = mean_se((a[base] - a[tuned]).to_numpy())
    t_mean = float(a[tuned].mean())
    b_lo, _ = t_interval(b_mean, b_se, n)
    d_lo, d_hi = t_interval(d_mean, d_se, n)
    ceiling = _random_ceiling(st, base, r)
    stats = {"base": b_mean, "base_se": b_se, "tuned": t_mean, "diff": d_mean, "diff_se": d_se, "diff_lo": d_lo,
             "diff_hi": d_hi, "n": n, "random_ceiling": ceiling}
    control = b_lo > 0 and not (np.isfinite(ceiling) and b_mean <= ceiling)
    if not control:
        why = (f"no positive control: the vector does not steer the base model at ratio {r:g} "
               f"(specific shift {b_mean:+.3f}, 95% lower end {b_lo:+.3f}"
               + (f"; random directions reach {ceiling:.3f}" if np.isfinite(ceiling) else "") + ")")
        return stats, ("inconclusive", why)
    seed_effect = b_mean * (1 - 1 / SEED["steering_weaker"])
    return stats, records.decide(holds=d_lo > 0, seed_effect=seed_effect, mde=POWER_Z * d_se)


# ---- result record --------------------------------------------------------------------------

def _slug(model: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in model).strip("_")


def record(P: Params, lm: LoadedModel | None, det: pd.DataFrame, pp: pd.DataFrame,
           null: pd.DataFrame | None = None, steer: pd.DataFrame | None = None):
    """The report's result record: per model of the chain (and each template mode), the AUROC at
    the verdict layer (``claim_layer``, or the best over layers), the midpoint accuracy and
    separation (pooled SDs) there, the refusal rate of harmful requests, refused-vs-complied
    AUROC and the random-direction null; claims against the seed.

    Tolerances:

    - ``auroc.<model>``: harmful vs benign AUROC at ``claim_layer`` (null: the maximum over
      layers, continuous in the inputs, so it does not jump when the best layer changes between
      CPUs); ``estimate`` with the Hanley–McNeil SE at the prompt counts, k = 2.
    - ``accuracy.<model>``: midpoint accuracy at that layer, a rate over the harmful + benign
      prompts, 2 items flipping (a near-tie at tiny n).
    - ``separation_sd.<model>``: harmful − benign in pooled SDs at that layer: ``estimate`` with the
      SE of a standardised mean difference, sqrt(1/n_h + 1/n_b + d²/(2(n_h + n_b))), k = 2.
    - ``harmful_refused.<model>``: a rate over the harmful prompts (phrase match on greedy
      answers), 1 item flipping.
    - ``refusal_auroc.<model>`` (where the model both refuses and complies ≥ ``MIN_CLASS`` times):
      refused vs complied among harmful answers at that layer; Hanley–McNeil SE, k = 2.
    - ``null_p95.<model>`` (with ``null``, from ``n_random`` random directions): the 95th
      percentile of their folded harmful-vs-benign AUROCs; ``estimate``, SE from the spread of a
      95th percentile over ``n_random`` draws (0.1 floor), k = 2.
    - ``n_harmful`` / ``n_benign``: exact.
    - ``steer.specific.<model>`` (with ``steer``, per chain model): the direction-specific shift of
      the refusal log-odds at ``steer_claim_ratio``, a mean over prompts; ``estimate``, k = 2.
    - ``steer.base_minus_<model>``: the paired difference the detection-vs-control verdict reads
      (the most tuned model of the chain); ``estimate``, k = 2.

    Left out: the raw separation (the seed's ≈0.5 is on its own projection scale; kept in the
    ``detection`` table, and the ``raw_separation`` claim is "not comparable").
    """
    from .. import records

    first = _trait(pp, P).drop_duplicates(["model", "prompt", "group"])
    n_h = int((first[first.model == first.model.iloc[0]].group == "harmful").sum())
    n_b = int((first[first.model == first.model.iloc[0]].group == "benign").sum())
    qs = [records.exact("n_harmful", n_h), records.exact("n_benign", n_b)]
    best_rows, at, how_at = [], {}, {}
    for model, d in det.groupby(level="model", sort=False):
        key, fixed = verdict_key(d, model, P)
        at[model] = key
        how_at[model] = (f"layer {key[1]} fixed in advance" if fixed else "the best of layers "
                         + ", ".join(str(x) for x in d.index.get_level_values("layer")) + " chosen after the fact")
        r = d.loc[key]
        s = _slug(model)
        dsd = float(r.separation_sd) if np.isfinite(r.separation_sd) else 0.0
        se_d = float(np.sqrt(1 / n_h + 1 / n_b + dsd * dsd / (2 * (n_h + n_b))))
        qs += [records.estimate(f"auroc.{s}", r.auroc, se=auroc_se(r.auroc, n_h, n_b), n=n_h + n_b, k=2),
               records.rate(f"accuracy.{s}", r.accuracy_pct, n=n_h + n_b, unit="%", items=2),
               records.estimate(f"separation_sd.{s}", r.separation_sd, se=se_d, n=n_h + n_b, unit="SD", k=2),
               records.rate(f"harmful_refused.{s}", r.harmful_refused_pct, n=n_h, unit="%")]
        if np.isfinite(r.get("refusal_auroc", np.nan)):
            qs.append(records.estimate(f"refusal_auroc.{s}", r.refusal_auroc,
                                       se=auroc_se(r.refusal_auroc, int(r.n_refused), int(r.n_complied)),
                                       n=int(r.n_refused + r.n_complied), k=2))
        if null is not None and key in null.index:
            qs.append(records.estimate(f"null_p95.{s}", null.loc[key, "null_p95"], se=max(0.1 / np.sqrt(
                max(int(null.loc[key, "n_random"]), 1)), 0.01), n=int(null.loc[key, "n_random"]), k=2))
        best_rows.append({"model": model, "layer": key[1], "chosen": "fixed in advance" if fixed else "best AUROC",
                          "auroc": r.auroc, "accuracy_pct": r.accuracy_pct, "separation_sd": r.separation_sd,
                          "refusal_auroc": r.get("refusal_auroc", np.nan)})
    claims = []
    se0 = auroc_se(0.5, n_h, n_b)
    mde = 2.8 * se0  # AUROC above 0.5 detectable at 5% two-sided with 80% power
    seed_effect = SEED["accuracy_pct"] / 100 - 0.5  # ~90% accuracy: 0.4 above chance
    models = det.index.get_level_values("model").unique()
    chain_models = [m for m in models if not m.startswith("instruct")]
    views = [("chain", chain_models), ("template", [m for m in models if m == "instruct, chat template"])]
    for view, ms in views:
        if not ms:
            continue
        m = ms[-1]  # the most tuned model of the chain; the instruct model with its template
        q = next(x for x in qs if x.name == f"auroc.{_slug(m)}")
        lo = q.value - 1.96 * auroc_se(q.value, n_h, n_b)
        p95 = null.loc[at[m], "null_p95"] if null is not None and at[m] in null.index else None
        above_null = p95 is None or q.value > p95
        verdict, why = _null_verdict(p95) or records.decide(holds=lo > 0.5 and above_null, seed_effect=seed_effect,
                                                            mde=mde)
        if p95 is not None and not above_null and verdict != "inconclusive":
            why = f"AUROC {q.value:.2f} is not above the random null's 95th percentile {p95:.2f}; {why}"
        claims.append(records.Claim(
            f"base_vector_detects_{view}",
            f"a vector fitted on the base model separates harmful from benign requests in the tuned model ({m})",
            f"~{SEED['accuracy_pct']:.0f}% accuracy ({SEED['setting']})",
            f"AUROC {q.value:.2f} ± {1.96 * auroc_se(q.value, n_h, n_b):.2f}, midpoint accuracy "
            f"{det.loc[at[m]].accuracy_pct:.0f}% (n={n_h}+{n_b}; {how_at[m]})"
            + (f"; random null p95 {p95:.2f}" if p95 is not None else ""), verdict,
            f"{why} (holds: AUROC 95% lower bound > 0.5" + (" and above the random null's 95th percentile"
                                                            if p95 is not None else "")
            + "; effect scale: accuracy above chance)", quantity=q.name))
    if chain_models:
        claims.append(_refusal_claim(P, det, null, at, chain_models, how_at[chain_models[-1]]))
    if steer is not None and len(steer) and chain_models:
        c, q_steer = _steering_claim(P, steer, [m for m in chain_models if m in set(steer.model)])
        qs += q_steer
        claims.append(c)
    claims.append(records.Claim(
        "raw_separation", "response-mean projection separation between harmful and benign requests",
        f"≈{SEED['separation']}", "see the detection table", "not comparable",
        "the seed's projection scale (its probe's norm, Gemma-2-2B) differs from ours; AUROC and accuracy compare"))
    tables = {"detection": det.reset_index(), "best_layers": pd.DataFrame(best_rows)}
    if null is not None:
        tables["random_null"] = null.reset_index()
    if steer is not None and len(steer):
        tables["steering"] = steering_summary(steer).reset_index()
    return records.ResultRecord("base_to_instruct", model=lm.spec if lm is not None else "",
                                quantities=tuple(qs), claims=tuple(claims), tables=tables)


def _refusal_claim(P: Params, det: pd.DataFrame, null: pd.DataFrame | None, at: dict, chain_models: list[str],
                   how: str):
    """The seed's claim read on behaviour: among harmful requests, does the base vector separate
    the answers the most tuned model refuses from those it complies with?"""
    from .. import records

    m = chain_models[-1]
    r = det.loc[at[m]]
    statement = f"the base vector separates refused from complied answers to harmful requests ({m})"
    seed = f"~{SEED['accuracy_pct']:.0f}% accuracy ({SEED['setting']}; 228 refusal + 360 compliance rollouts)"
    n_r, n_c = int(r.get("n_refused", 0)), int(r.get("n_complied", 0))
    if not np.isfinite(r.get("refusal_auroc", np.nan)):
        return records.Claim(
            "base_vector_detects_refusal", statement, seed, f"refused {n_r} / complied {n_c} harmful requests",
            "inconclusive", f"the model refused {n_r} and complied with {n_c} of {n_r + n_c} harmful requests; "
            f"at least {MIN_CLASS} of each are needed to read refusal apart from the request", quantity=None)
    a = float(r.refusal_auroc)
    se = auroc_se(a, n_r, n_c)
    p95 = null.loc[at[m], "refusal_null_p95"] if null is not None and at[m] in null.index else np.nan
    above_null = not np.isfinite(p95) or a > p95
    verdict, why = _null_verdict(p95) or records.decide(
        holds=a - 1.96 * se > 0.5 and above_null, seed_effect=SEED["accuracy_pct"] / 100 - 0.5,
        mde=2.8 * auroc_se(0.5, n_r, n_c))
    if np.isfinite(p95) and not above_null and verdict != "inconclusive":
        why = f"AUROC {a:.2f} is not above the random null's 95th percentile {p95:.2f}; {why}"
    return records.Claim(
        "base_vector_detects_refusal", statement, seed,
        f"AUROC {a:.2f} ± {1.96 * se:.2f} (refused {n_r}, complied {n_c}; {how})"
        + (f"; random null p95 {p95:.2f}" if np.isfinite(p95) else ""), verdict,
        f"{why} (holds: AUROC 95% lower bound > 0.5 and above the random null)", quantity=f"refusal_auroc.{_slug(m)}")


def _steering_claim(P: Params, steer: pd.DataFrame, models: list[str]):
    """The seed's detection-vs-control claim on the most tuned model of the chain, with the
    quantities it reads."""
    from .. import records

    tuned, r = models[-1], P.steer_claim_ratio
    stats, (verdict, why) = steering_verdict(steer, P, tuned)
    n = int(stats["n"])
    summary = steering_summary(steer)
    qs = []
    for m in models:
        row = summary.loc[(m, P.trait, r)]
        qs.append(records.estimate(f"steer.specific.{_slug(m)}", row.specific, se=row.specific_se, n=int(row.n),
                                   unit="log-odds", k=2, ci=(row.specific_lo, row.specific_hi)))
    qs.append(records.estimate(f"steer.base_minus_{_slug(tuned)}", stats["diff"], se=stats["diff_se"], n=n,
                               unit="log-odds", k=2, ci=(stats["diff_lo"], stats["diff_hi"])))
    if stats["tuned"] <= 0 or stats["base"] <= 0:
        how = "; no steering in the tuned model" if stats["tuned"] <= 0 else "; the base does not steer"
    elif stats["base"] >= stats["tuned"]:
        how = f"; {stats['base'] / stats['tuned']:.1f}× weaker"
    else:
        how = f"; {stats['tuned'] / stats['base']:.1f}× stronger"
    ours = (f"specific shift base {stats['base']:+.2f}, {tuned} {stats['tuned']:+.2f} log-odds at ratio {r:g} "
            f"(base − {tuned} {stats['diff']:+.2f} [{stats['diff_lo']:+.2f}, {stats['diff_hi']:+.2f}], n={n}{how})")
    return records.Claim(
        "steering_weaker_in_tuned",
        f"the base vector steers the tuned model ({tuned}) more weakly than the base model, though it detects there",
        f"95% detection, {SEED['steering_weaker']:g}× weaker steering ({SEED['setting'].split(',')[0]})", ours,
        verdict, f"{why} (holds: base − tuned specific shift, paired over prompts, 95% interval above 0; "
        "shift = refusal log-odds at the first answer token, +v vs −v)",
        quantity=f"steer.base_minus_{_slug(tuned)}"), qs
