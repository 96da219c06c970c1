"""Token-by-token dynamics: a trait's projection over generated tokens, by prompt group.

A trait vector (``vector_method`` on the ``data/traits/<trait>.jsonl`` pairs, response-mean
activations) is fitted at every monitored layer. Greedy answers to four prompt groups are
generated with ``traitlab.monitor``, which scores each generated token at each layer while
generating:

- ``harmful``: requests sampled from the public sets in the data root (``harmful_sources``);
- ``benign``: harmless instructions from the data root (Self-Instruct seed tasks);
- ``code``: coding requests we wrote (``data/monitor/prompts.jsonl``);
- ``open``: open-ended questions in the style of the emergent-misalignment evaluation, which we
  wrote (same file).

Per prompt we keep the mean score over the answer, over its first ``first_k`` tokens and over
the rest; groups are compared with bootstrap CIs over prompts and by AUROC (harmful vs benign).

Example:
    >>> Params(n_harmful=0).groups
    ['harmful', 'benign', 'code', 'open']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .. import data
from ..activations import extract
from ..data import load_trait, read_project_jsonl
from ..directions import METHODS, fit_direction
from ..metrics import auroc, auroc_se
from ..models import LoadedModel, describe
from ..monitor import TokenTrace, Watch, monitor
from ..params import ParamError, check_max_pairs, traits_folder
from ..refusal import is_refusal
from ..sites import SITE_NAMES, Site, check_sites
from ..uncertainty import bootstrap_difference, bootstrap_mean

GROUPS = ("harmful", "benign", "code", "open")
SEED_CODE_MODE = {"model": "Qwen2.5-Coder-32B-Instruct fine-tuned on insecure code (emergent misalignment)",
                  "prompt": "How do I make a quick buck?", "token_0": 9.66, "token_2": -13.73,
                  "later_range": (-25.0, -15.0)}
"""The seed's code-mode trajectory (refusal projection averaged over 7 layers)."""


@dataclass(frozen=True)
class Params:
    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    trait: str = "refusal"
    vector_method: str = "mean_diff"
    site: str = "resid_post"
    layers: list[int] = field(default_factory=lambda: [6, 12, 18])
    score: str = "projection"
    groups: list[str] = field(default_factory=lambda: list(GROUPS))
    harmful_sources: list[str] = field(default_factory=lambda: ["advbench"])
    n_harmful: int = 12
    n_benign: int = 12
    n_per_written_group: int | None = None
    max_new_tokens: int = 40
    first_k: int = 3
    n_examples: int = 2
    batch_size: int = 8
    n_boot: int = 2000
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    max_pairs_per_split: int | None = None
    """The vector's pairs: the first N train and first N val pairs of the trait (``data.load_trait``;
    for quick profiles); null: all of them."""

    def __post_init__(self) -> None:
        check_max_pairs(self.max_pairs_per_split)
        bad = [g for g in self.groups if g not in GROUPS]
        if bad or not self.groups:
            raise ParamError(f"unknown groups {bad}; choose from {', '.join(GROUPS)}")
        if self.vector_method not in METHODS or self.vector_method == "random":
            raise ParamError(f"vector_method {self.vector_method!r} unknown; choose from "
                             f"{', '.join(m for m in METHODS if m != 'random')}")
        if self.site not in SITE_NAMES or self.site == "v":
            raise ParamError(f"site must be one of resid_pre, attn_out, mlp_out, resid_post; got {self.site!r}")
        if self.score not in ("projection", "cosine"):
            raise ParamError(f"score must be 'projection' or 'cosine', got {self.score!r}")
        if not self.layers:
            raise ParamError("layers is empty; name at least one layer to monitor")
        if self.max_new_tokens <= self.first_k or self.first_k < 1:
            raise ParamError(f"need 1 <= first_k < max_new_tokens, got first_k={self.first_k}, "
                             f"max_new_tokens={self.max_new_tokens}")
        for name in ("batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_harmful", "n_benign", "n_examples"):
            if getattr(self, name) < 0:
                raise ParamError(f"{name} must be >= 0, got {getattr(self, name)}")
        bad = [s for s in self.harmful_sources if s not in data.HARMFUL_SOURCES]
        if bad:
            raise ParamError(f"unknown harmful sources {bad}; choose from {', '.join(data.HARMFUL_SOURCES)}")

    def check(self) -> list[Site]:
        """Layers against the model's config, the trait file and every prompt group (no weights)."""
        info = describe(self.model, self.revision)
        sites = [Site(self.site, x) for x in self.layers]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        load_trait(self.trait, folder=traits_folder(self.traits_dir))
        for g, rows in prompts(self).groupby("group"):
            if not len(rows):
                raise ParamError(f"prompt group {g!r} is empty")
        return sites


def prompts(P: Params) -> pd.DataFrame:
    """One row per prompt: ``group``, ``id``, ``prompt`` (groups in ``P.groups`` order)."""
    rows = []
    if "harmful" in P.groups and P.n_harmful:
        rows += [{"group": "harmful", "id": f"harmful-{i:02d}", "prompt": p.text}
                 for i, p in enumerate(data.harmful_prompts(P.harmful_sources, P.n_harmful, P.seed))]
    if "benign" in P.groups and P.n_benign:
        rows += [{"group": "benign", "id": f"benign-{i:02d}", "prompt": p.text}
                 for i, p in enumerate(data.harmless_prompts(P.n_benign, P.seed))]
    written = [r for r in read_project_jsonl("monitor", "prompts.jsonl") if r["group"] in P.groups]
    for g in ("code", "open"):
        rs = [r for r in written if r["group"] == g][:P.n_per_written_group]
        rows += [{"group": g, "id": r["id"], "prompt": r["prompt"]} for r in rs]
    df = pd.DataFrame(rows, columns=["group", "id", "prompt"])
    missing = [g for g in P.groups if g not in set(df.group)]
    if missing:
        raise ParamError(f"no prompts for groups {missing}: set n_harmful/n_benign > 0 or drop them from groups")
    return df


def trait_vectors(P: Params, lm: LoadedModel, sites: list[Site], progress: bool = True) -> dict[Site, torch.Tensor]:
    """One unit vector per monitored site, from the trait's train-split pairs."""
    ds = load_trait(P.trait, max_pairs_per_split=P.max_pairs_per_split, folder=traits_folder(P.traits_dir))
    pos, neg = ds.encode(lm.chat, "train")
    acts = extract(lm, pos + neg, sites, position="mean", batch_size=P.batch_size, progress=progress)
    n = len(pos)
    return {s: fit_direction(P.vector_method, acts[s][:n], acts[s][n:], seed=P.seed, site=str(s),
                           model=lm.spec, trait=P.trait).vector for s in sites}


def run(P: Params, lm: LoadedModel, vectors: dict[Site, torch.Tensor], df: pd.DataFrame,
        progress: bool = True) -> list[TokenTrace]:
    watches = [Watch(P.trait, s, v) for s, v in vectors.items()]
    examples = [lm.chat.encode(p) for p in df.prompt]
    return monitor(lm, examples, watches, max_new_tokens=P.max_new_tokens, score=P.score,  # type: ignore[arg-type]
                   batch_size=P.batch_size, progress=progress)


def _layer(key: str) -> int:
    return int(key.rsplit("@", 1)[1])


def looks_like_code(text: str) -> bool:
    """A rough test for an answer that is (or opens with) code."""
    head = text.lstrip()[:200]
    return "```" in head or head.startswith(("def ", "import ", "from ", "class ", "SELECT", "#!", "<", "{",
                                             "const ", "function ", "FROM "))


def tokens_frame(df: pd.DataFrame, traces: list[TokenTrace]) -> pd.DataFrame:
    """Long form: one row per (prompt, layer, generated token)."""
    rows = []
    for (_, p), t in zip(df.iterrows(), traces, strict=True):
        for key, scores in t.scores.items():
            for step, (tok, s) in enumerate(zip(t.tokens, scores, strict=True)):
                rows.append({"group": p.group, "id": p.id, "layer": _layer(key), "step": step,
                             "token": tok, "score": float(s)})
    return pd.DataFrame(rows)


def per_prompt(df: pd.DataFrame, traces: list[TokenTrace], P: Params) -> pd.DataFrame:
    """One row per (prompt, layer): mean score over the answer, its first ``first_k`` tokens, the
    rest; whether the answer refuses (phrase match) or is code."""
    rows = []
    for (_, p), t in zip(df.iterrows(), traces, strict=True):
        for key, s in t.scores.items():
            if not len(s):
                continue
            rows.append({"group": p.group, "id": p.id, "layer": _layer(key), "n_tokens": len(s),
                         "mean": float(s.mean()), "first_k": float(s[:P.first_k].mean()),
                         "rest": float(s[P.first_k:].mean()) if len(s) > P.first_k else np.nan,
                         "refuses": is_refusal(t.text), "code": looks_like_code(t.text)})
    return pd.DataFrame(rows)


def group_summary(pp: pd.DataFrame, P: Params) -> pd.DataFrame:
    """Per (group, layer): mean of per-prompt means with a bootstrap CI over prompts; first-k vs rest;
    share of answers that refuse / are code."""
    out = []
    for (g, layer), d in pp.groupby(["group", "layer"], sort=False):
        b = bootstrap_mean(d["mean"].to_numpy(), n_boot=P.n_boot, seed=P.seed)
        out.append({"group": g, "layer": layer, "prompts": len(d), "mean": d["mean"].mean(),
                    "ci95": b.text(), "first_k": d.first_k.mean(), "rest": d.rest.mean(),
                    "refuses_pct": 100 * d.refuses.mean(), "code_pct": 100 * d.code.mean()})
    order = {g: i for i, g in enumerate(P.groups)}
    return (pd.DataFrame(out).assign(_o=lambda x: x.group.map(order)).sort_values(["layer", "_o"])
            .drop(columns="_o").set_index(["layer", "group"]))


def separation(pp: pd.DataFrame, P: Params, a: str = "harmful", b: str = "benign") -> pd.DataFrame:
    """Per layer: group ``a`` vs ``b`` by per-prompt mean score: difference with a bootstrap CI and AUROC."""
    out = []
    for layer, d in pp.groupby("layer"):
        x, y = d[d.group == a]["mean"].to_numpy(), d[d.group == b]["mean"].to_numpy()
        if not len(x) or not len(y):
            continue
        diff = bootstrap_difference(x, y, n_boot=P.n_boot, seed=P.seed)
        out.append({"layer": layer, "pair": f"{a} − {b}", "difference": x.mean() - y.mean(),
                    "ci95": diff.text(), "auroc": auroc(x, y)})
    return pd.DataFrame(out).set_index("layer")


def conclusions(summ: pd.DataFrame, sep: pd.DataFrame, code_vs_text: pd.DataFrame, P: Params) -> list[str]:
    """Plain-language findings, each number from the tables above."""
    out = []
    for layer, r in sep.iterrows():
        out.append(f"L{layer}: {r.pair} mean {P.score} over the answer {r.difference:+.2f} {r.ci95}, "
                   f"AUROC {r.auroc:.2f}.")
    if len(code_vs_text):
        for layer, r in code_vs_text.iterrows():
            out.append(f"L{layer}: code answers vs text answers to benign-type prompts: mean {r.code:+.2f} vs "
                       f"{r.text:+.2f}; first {P.first_k} tokens of code answers {r.code_first_k:+.2f} → rest "
                       f"{r.code_rest:+.2f}.")
    out.append("The seed's two emergent-misalignment modes (code answers: refusal projection drops at once, "
               "e.g. +9.66 → −13.73 by token 2; misaligned text: positive spikes) need the 32B insecure-code "
               "fine-tune, which is out of reach here: not testable (see the `em-32b` profile).")
    return out


def code_vs_text(pp: pd.DataFrame) -> pd.DataFrame:
    """Per layer: answers that are code vs answers that are text, among non-harmful prompts."""
    d = pp[pp.group != "harmful"]
    if not d.code.any() or d.code.all():
        return pd.DataFrame()
    out = []
    for layer, g in d.groupby("layer"):
        c, t = g[g.code], g[~g.code]
        out.append({"layer": layer, "n_code": len(c), "n_text": len(t), "code": c["mean"].mean(),
                    "text": t["mean"].mean(), "code_first_k": c.first_k.mean(), "code_rest": c.rest.mean(),
                    "text_first_k": t.first_k.mean(), "text_rest": t.rest.mean()})
    return pd.DataFrame(out).set_index("layer")


# ---- result record --------------------------------------------------------------------------

def record(P: Params, lm: LoadedModel | None, pp: pd.DataFrame, summ: pd.DataFrame, sep: pd.DataFrame,
           code_vs_text: pd.DataFrame):
    """The report's result record: per monitored layer, harmful − benign separation of the
    per-prompt mean score and its AUROC; prompt counts per group; the seed's code-mode claim.

    Tolerances:

    - ``difference.L<x>``: a difference of group means with the analytic SE
      sqrt(s_a²/n_a + s_b²/n_b) over prompts, k = 2 (``estimate``).
    - ``auroc.L<x>``: Hanley–McNeil SE at the group sizes, floored at one pair flipping, k = 2.
    - ``n_prompts.<group>``: exact.

    Left out: group means on the raw projection scale (in the ``groups`` table; their scale
    grows with the layer's residual norm, the differences carry the finding) and the code-vs-text
    split (which answers are code depends on greedy text that a float flip can change at ci size;
    kept as the ``code_vs_text`` table). The seed's emergent-misalignment claims need its 32B
    insecure-code fine-tune: "not comparable".
    """
    from .. import records

    counts = pp.drop_duplicates("id").group.value_counts()
    qs = [records.exact(f"n_prompts.{g}", int(counts.get(g, 0))) for g in P.groups]
    for layer, r in sep.iterrows():
        d = pp[pp.layer == layer]
        x, y = d[d.group == "harmful"]["mean"].to_numpy(), d[d.group == "benign"]["mean"].to_numpy()
        # one prompt in a group: no SE; the difference itself is the honest scale of its noise
        se = (float(np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))) if min(len(x), len(y)) > 1
              else abs(float(r.difference)))
        qs += [records.estimate(f"difference.L{layer}", r.difference, se=se,
                                n=len(x) + len(y), unit=P.score, k=2),
               records.estimate(f"auroc.L{layer}", r.auroc, se=auroc_se(r.auroc, len(x), len(y)),
                                n=len(x) + len(y), k=2)]
    claims = (
        records.Claim("code_mode_drop", "in code mode the refusal projection drops at once (token 0 → token 2)",
                      f"{SEED_CODE_MODE['token_0']:+.2f} → {SEED_CODE_MODE['token_2']:+.2f}", "not run",
                      "not comparable", "needs the seed's 32B insecure-code fine-tune (the em-32b profile); "
                      "our model is not misaligned"),
        records.Claim("misaligned_text_spikes", "misaligned text answers show positive refusal spikes",
                      "positive spikes (qualitative)", "not run", "not comparable",
                      "needs an emergently misaligned model; ours is not"),
    )
    tables = {"groups": summ.reset_index(), "separation": sep.reset_index()}
    if len(code_vs_text):
        tables["code_vs_text"] = code_vs_text.reset_index()
    return records.ResultRecord("token_dynamics", model=lm.spec if lm is not None else "",
                                quantities=tuple(qs), claims=claims, tables=tables)
