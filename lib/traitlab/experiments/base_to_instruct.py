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
from ..directions import METHODS, fit_direction
from ..metrics import auroc, auroc_se, midpoint_accuracy
from ..models import LoadedModel, describe
from ..monitor import TokenTrace, Watch, monitor
from ..params import ParamError, traits_folder
from ..refusal import is_refusal
from ..sites import SITE_NAMES, Site, check_sites
from ..uncertainty import bootstrap_difference

SEED = {"setting": "Gemma-2-2B base → Gemma-2-2B-IT, refusal probe at attn_out L8",
        "separation": 0.5, "accuracy_pct": 90.0}
"""The seed's base → instruct result (≈0.5 separation in response means, ~90% accuracy)."""


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

    def __post_init__(self) -> None:
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
    ds = load_trait(P.trait, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(fmt, "train")
    sites = [Site(P.site, x) for x in layers]  # type: ignore[arg-type]
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    n = len(pos)
    return {s: fit_direction(P.method, acts[s][:n], acts[s][n:], seed=P.seed, site=str(s),
                           model=lm.spec, trait=P.trait).vector for s in sites}


def read(P: Params, lm: LoadedModel, fmt: ChatFormat, vectors: dict[Site, torch.Tensor], req: pd.DataFrame,
         progress: bool = False) -> list[TokenTrace]:
    """Greedy answers in format ``fmt`` with the projection onto each vector at every token."""
    watches = [Watch(P.trait, s, v) for s, v in vectors.items()]
    return monitor(lm, [fmt.encode(p) for p in req.prompt], watches, max_new_tokens=P.max_new_tokens,
                   score="projection", batch_size=P.batch_size, progress=progress)


def per_prompt(model: str, req: pd.DataFrame, traces: list[TokenTrace]) -> pd.DataFrame:
    """One row per (model, prompt, layer): mean projection over the answer; does it refuse."""
    rows = []
    for (_, r), t in zip(req.iterrows(), traces, strict=True):
        for key, s in t.scores.items():
            if len(s):
                rows.append({"model": model, "group": r.group, "prompt": r.prompt,
                             "layer": int(key.rsplit("@", 1)[1]), "mean": float(s.mean()),
                             "refuses": is_refusal(t.text), "answer": t.text})
    return pd.DataFrame(rows)


def trajectories(model: str, req: pd.DataFrame, traces: list[TokenTrace]) -> pd.DataFrame:
    rows = []
    for (_, r), t in zip(req.iterrows(), traces, strict=True):
        for key, s in t.scores.items():
            rows += [{"model": model, "group": r.group, "layer": int(key.rsplit("@", 1)[1]), "step": i,
                      "score": float(x)} for i, x in enumerate(s)]
    return pd.DataFrame(rows)


def detection(pp: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (model, layer): harmful − benign mean projection (bootstrap CI), AUROC, midpoint accuracy,
    and the separation in units of the pooled standard deviation; plus refusal rates."""
    out = []
    for (model, layer), d in pp.groupby(["model", "layer"], sort=False):
        x, y = d[d.group == "harmful"]["mean"].to_numpy(), d[d.group == "benign"]["mean"].to_numpy()
        lo, hi = bootstrap_difference(x, y, n_boot=P.n_boot, seed=P.seed).ci
        sd = np.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2) if len(x) > 1 and len(y) > 1 else np.nan
        out.append({"model": model, "layer": layer, "separation": x.mean() - y.mean(), "ci95": f"[{lo:.2f}, {hi:.2f}]",
                    "separation_sd": (x.mean() - y.mean()) / sd if sd else np.nan, "auroc": auroc(x, y),
                    "accuracy_pct": 100 * midpoint_accuracy(x, y),
                    "harmful_refused_pct": 100 * d[d.group == "harmful"].refuses.mean(),
                    "benign_refused_pct": 100 * d[d.group == "benign"].refuses.mean()})
    return pd.DataFrame(out).set_index(["model", "layer"])


def conclusions(det: pd.DataFrame) -> list[str]:
    """Plain-language findings, each number from the detection table."""
    out = []
    for model, d in det.groupby(level="model", sort=False):
        best = d.auroc.idxmax()
        r = d.loc[best]
        out.append(f"{model}: best layer L{best[1]}: separation {r.separation:+.2f} {r.ci95} "
                   f"({r.separation_sd:+.1f} SD), AUROC {r.auroc:.2f}, midpoint accuracy {r.accuracy_pct:.0f}%; "
                   f"refuses {r.harmful_refused_pct:.0f}% of harmful / {r.benign_refused_pct:.0f}% of benign.")
    out.append(f"Seed: {SEED['setting']}: ≈{SEED['separation']} separation, ~{SEED['accuracy_pct']:.0f}% accuracy "
               "(its projection scale differs from ours; compare AUROC/accuracy, not raw separation).")
    return out


# ---- result record --------------------------------------------------------------------------

def _slug(model: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in model).strip("_")


def record(P: Params, lm: LoadedModel | None, det: pd.DataFrame, pp: pd.DataFrame):
    """The report's result record: per model of the chain (and each template mode), the best AUROC
    over layers, the midpoint accuracy and separation (pooled SDs) at that layer, and the refusal
    rate of harmful requests; one claim per view against the seed.

    Tolerances:

    - ``auroc.<model>``: the maximum over layers of an AUROC; ``estimate`` with the Hanley–McNeil SE
      at the prompt counts (floored at one pair flipping), k = 2. The max is continuous in the
      inputs, so it does not jump when the best layer changes between CPUs.
    - ``accuracy.<model>``: midpoint accuracy at the best-AUROC layer, a rate over the harmful +
      benign prompts, 2 items flipping (the best layer may change under float noise; 2 items
      cover a near-tie at tiny n).
    - ``separation_sd.<model>``: harmful − benign in pooled SDs at that layer: ``estimate`` with the
      SE of a standardised mean difference, sqrt(1/n_h + 1/n_b + d²/(2(n_h + n_b))), k = 2.
    - ``harmful_refused.<model>``: a rate over the harmful prompts (phrase match on greedy
      answers), 1 item flipping.
    - ``n_harmful`` / ``n_benign``: exact.

    Left out: the raw separation (the seed's ≈0.5 is on its own projection scale; kept in the
    ``detection`` table, and the ``raw_separation`` claim is "not comparable").
    """
    from .. import records

    first = pp.drop_duplicates(["model", "prompt", "group"])
    n_h = int((first[first.model == first.model.iloc[0]].group == "harmful").sum())
    n_b = int((first[first.model == first.model.iloc[0]].group == "benign").sum())
    qs = [records.exact("n_harmful", n_h), records.exact("n_benign", n_b)]
    best_rows = []
    for model, d in det.groupby(level="model", sort=False):
        key = d.auroc.idxmax()
        r = d.loc[key]
        s = _slug(model)
        dsd = float(r.separation_sd) if np.isfinite(r.separation_sd) else 0.0
        se_d = float(np.sqrt(1 / n_h + 1 / n_b + dsd * dsd / (2 * (n_h + n_b))))
        qs += [records.estimate(f"auroc.{s}", r.auroc, se=auroc_se(r.auroc, n_h, n_b), n=n_h + n_b, k=2),
               records.rate(f"accuracy.{s}", r.accuracy_pct, n=n_h + n_b, unit="%", items=2),
               records.estimate(f"separation_sd.{s}", r.separation_sd, se=se_d, n=n_h + n_b, unit="SD", k=2),
               records.rate(f"harmful_refused.{s}", r.harmful_refused_pct, n=n_h, unit="%")]
        best_rows.append({"model": model, "best_layer": key[1], "auroc": r.auroc, "accuracy_pct": r.accuracy_pct,
                          "separation_sd": r.separation_sd})
    claims = []
    se0 = auroc_se(0.5, n_h, n_b)
    mde = 2.8 * se0  # AUROC above 0.5 detectable at 5% two-sided with 80% power
    seed_effect = SEED["accuracy_pct"] / 100 - 0.5  # ~90% accuracy: 0.4 above chance
    views = [("chain", [m for m in det.index.get_level_values("model").unique() if not m.startswith("instruct")]),
             ("template", [m for m in det.index.get_level_values("model").unique() if m == "instruct, chat template"])]
    for view, models in views:
        if not models:
            continue
        m = models[-1]  # the most tuned model of the chain; the instruct model with its template
        q = next(x for x in qs if x.name == f"auroc.{_slug(m)}")
        lo = q.value - 1.96 * auroc_se(q.value, n_h, n_b)
        verdict, why = records.decide(holds=lo > 0.5, seed_effect=seed_effect, mde=mde)
        claims.append(records.Claim(
            f"base_vector_detects_{view}",
            f"a vector fitted on the base model separates harmful from benign requests in the tuned model ({m})",
            f"~{SEED['accuracy_pct']:.0f}% accuracy ({SEED['setting']})",
            f"AUROC {q.value:.2f} ± {1.96 * auroc_se(q.value, n_h, n_b):.2f}, midpoint accuracy "
            f"{det.loc[m].accuracy_pct.max():.0f}% (n={n_h}+{n_b})", verdict,
            f"{why} (holds: AUROC 95% lower bound > 0.5; effect scale: accuracy above chance)", quantity=q.name))
    claims.append(records.Claim(
        "raw_separation", "response-mean projection separation between harmful and benign requests",
        f"≈{SEED['separation']}", "see the detection table", "not comparable",
        "the seed's projection scale (its probe's norm, Gemma-2-2B) differs from ours; AUROC and accuracy compare"))
    return records.ResultRecord("base_to_instruct", model=lm.spec if lm is not None else "",
                                quantities=tuple(qs), claims=tuple(claims),
                                tables={"detection": det.reset_index(), "best_layers": pd.DataFrame(best_rows)})
