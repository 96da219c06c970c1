"""Generalization of trait vectors across groups: languages, topics, distributions.

A *group* is a set of contrastive pairs named by a spec (``traitlab.data.load_group``):
``"uncertainty_es"`` (a whole trait file) or ``"optimism:tech,economics"`` (the pairs of
those domains). For every layer and method a direction is fitted on the **train split of
group g** and evaluated on **every group h**: on h's val split when h = g (same-group,
held out), on all of h otherwise (cross-group; nothing of h was seen in training).

Each (layer, method, train g, test h) cell reports:

- ``acc``: the seed's accuracy (``traitlab.metrics``): cosine score, threshold at the
  midpoint of the *evaluated* set's two class means. It asks whether the direction still
  separates the classes in h; the threshold is not transferred.
- ``acc_transfer``: the threshold fixed at the midpoint of the *training* set's class
  means, so the direction and the decision rule both transfer. A direction that separates
  h but whose scores shift between groups (a language offset) loses accuracy here only.
- ``auroc``: threshold-free.

Uncertainty is measured two ways:

- **Null.** The same fit after shuffling the labels of g's training examples
  (``n_shuffle`` seeds): the accuracy expected from fitting noise on these very
  activations (the midpoint rule on held-out data sits above 50% by chance).
- **Bootstrap.** Evaluated pairs are resampled with replacement (a pair's positive and
  negative together), ``n_boot`` times, with the same draws for every method and layer, so
  the averages over cells and the probe − mean_diff difference get paired intervals.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = lambda shift: (torch.randn(20, 8, generator=g) + shift, torch.randn(20, 8, generator=g))
    >>> groups = {"a": GroupActs(*x(2), is_val=torch.arange(20) % 5 == 4),
    ...           "b": GroupActs(*x(2), is_val=torch.arange(20) % 5 == 4)}
    >>> cells, _ = transfer({0: groups}, ["mean_diff"], seed=0)
    >>> sorted(cells.columns)[:4], len(cells)
    (['acc', 'acc_transfer', 'auroc', 'layer'], 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .. import records
from .. import uncertainty as unc
from ..activations import POSITIONS, extract
from ..data import TraitDataset, load_group
from ..directions import METHODS, fit_direction
from ..metrics import auroc, cosine_scores, resampled_metrics
from ..models import LoadedModel, describe
from ..params import ParamError, check_max_pairs, traits_folder
from ..progress import tqdm
from ..sites import SITE_NAMES, Site, check_sites
from ..surface import fit_bag_of_words, pair_texts

Finding = Literal["cross_language", "cross_topic", "cross_distribution"]

# ---- the seed's numbers ---------------------------------------------------------------

_LANG = ["English", "Spanish", "French", "Chinese"]
_TOPIC = ["Science", "Coding", "History", "Creative"]
SEED: dict[str, dict] = {
    "cross_language": {
        "where": "Gemma-2-2B-IT, probe at layer 16 of 26",
        "matrix": {"probe": pd.DataFrame([[100.0, 99.0, 99.0, 100.0], [99.1, 100.0, 100.0, 100.0],
                                          [98.7, 100.0, 100.0, 100.0], [99.6, 100.0, 100.0, 100.0]],
                                         index=_LANG, columns=_LANG)},
        "summary": {"probe": (100.0, 99.6), "mean_diff": (None, 50.0)},
    },
    "cross_topic": {
        "where": "Gemma-2-2B-IT, probe at layer 16 of 26",
        "matrix": {"probe": pd.DataFrame([[100.0, 90.0, 96.0, 96.0], [90.0, 100.0, 91.0, 96.0],
                                          [89.6, 74.5, 100.0, 98.5], [91.0, 87.0, 97.0, 100.0]],
                                         index=_TOPIC, columns=_TOPIC)},
        "summary": {"probe": (100.0, 91.4)},
    },
    "cross_distribution": {
        "where": "Gemma-2-2B base, layer 13 of 26",
        "matrix": {"probe": pd.DataFrame([[100.0, 100.0], [95.0, 100.0]], index=["A", "B"], columns=["A", "B"]),
                   "mean_diff": pd.DataFrame([[90.0, 90.0], [55.0, 70.0]], index=["A", "B"], columns=["A", "B"])},
        "summary": {"probe": (100.0, 97.5), "mean_diff": (80.0, 72.5)},
    },
}
"""Published numbers (accuracy %, rows = train group, columns = test group); ``summary`` is
(same-group mean, cross-group mean) where the seed states or implies them."""


# ---- parameters -----------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    groups: dict[str, str] = field(default_factory=dict)
    layers: list[int] | None = None
    matrix_layers: list[int] = field(default_factory=lambda: [6, 12, 15, 18])
    site: str = "resid_post"
    position: str = "mean"
    methods: list[str] = field(default_factory=lambda: ["probe", "mean_diff", "gradient", "pca_diff",
                                                        "random"])
    max_pairs_per_split: int | None = None
    n_shuffle: int = 20
    n_boot: int = 1000
    batch_size: int = 16
    probe_C: float = 1.0
    gradient_shrinkage: float = 0.1
    gradient_steps: int = 500
    ica_components: int = 10
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""

    def __post_init__(self) -> None:
        if len(self.groups) < 2:
            raise ParamError(f"groups needs at least two entries (name: trait spec), got {self.groups!r}")
        if self.site not in SITE_NAMES:
            raise ParamError(f"site {self.site!r} unknown; choose one of {', '.join(SITE_NAMES)}")
        if self.position not in ("last", "mean"):
            raise ParamError(f"position {self.position!r} unknown; choose 'last' or 'mean' "
                             f"(extraction also knows {', '.join(POSITIONS)})")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ParamError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
        for name in ("n_shuffle", "n_boot", "batch_size", "gradient_steps", "ica_components"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.matrix_layers:
            raise ParamError("matrix_layers is empty; name the layers to show as train × test matrices")
        if self.layers is not None and not set(self.matrix_layers) <= set(self.layers):
            raise ParamError(f"matrix_layers {self.matrix_layers} must be among layers {self.layers}")
        check_max_pairs(self.max_pairs_per_split)
        if self.probe_C <= 0 or self.gradient_shrinkage < 0:
            raise ParamError("probe_C must be > 0 and gradient_shrinkage >= 0")

    def check(self) -> list[Site]:
        """Checks that need the model's shape (its config only) and the data; the sites."""
        info = describe(self.model, self.revision)
        layers = list(range(info.n_layers)) if self.layers is None else sorted(set(self.layers))
        sites = [Site(self.site, layer) for layer in layers]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        bad = [layer for layer in self.matrix_layers if layer not in layers]
        if bad:
            raise ParamError(f"matrix_layers {bad} out of range for {self.model} ({info.n_layers} layers)")
        self.datasets()
        return sites

    def datasets(self) -> dict[str, TraitDataset]:
        return {name: load_group(spec, max_pairs_per_split=self.max_pairs_per_split, folder=traits_folder(self.traits_dir))
                for name, spec in self.groups.items()}

    def method_options(self) -> dict[str, dict]:
        return {"probe": {"C": self.probe_C},
                "gradient": {"shrinkage": self.gradient_shrinkage, "steps": self.gradient_steps},
                "ica": {"n_components": self.ica_components}}


def _groups(**kw: str):
    return field(default_factory=lambda: dict(kw))


@dataclass(frozen=True)
class CrossLanguage(Params):
    groups: dict[str, str] = _groups(English="uncertainty", Spanish="uncertainty_es",
                                     French="uncertainty_fr", Chinese="uncertainty_zh")


@dataclass(frozen=True)
class CrossTopic(Params):
    groups: dict[str, str] = _groups(Science="uncertainty_science", Coding="uncertainty_coding",
                                     History="uncertainty_history", Creative="uncertainty_creative")


@dataclass(frozen=True)
class CrossDistribution(Params):
    groups: dict[str, str] = _groups(A="optimism:tech,economics,healthcare,education,science",
                                     B="optimism:environment,career,relationships,civic,global")


# ---- measurement ----------------------------------------------------------------------

@dataclass(frozen=True)
class GroupActs:
    """One group's activations at one site: pos/neg [n, d] (row i = pair i) and its val mask."""

    pos: torch.Tensor
    neg: torch.Tensor
    is_val: torch.Tensor

    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pos[~self.is_val], self.neg[~self.is_val]

    def evaluation(self, same_group: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The val split when testing on the training group, every pair otherwise."""
        if same_group:
            return self.pos[self.is_val], self.neg[self.is_val]
        return self.pos, self.neg


def extract_groups(p: Params, model: LoadedModel, sites: Sequence[Site], *,
                   progress: bool = True) -> dict[int, dict[str, GroupActs]]:
    """{layer: {group: GroupActs}}, one cached extraction per group."""
    out: dict[int, dict[str, GroupActs]] = {s.layer: {} for s in sites}
    for name, ds in p.datasets().items():
        pos, neg = ds.encode(model.chat)
        acts = extract(model, pos + neg, sites, position=p.position,  # type: ignore[arg-type]
                       batch_size=p.batch_size, progress=progress)
        n = len(ds.pairs)
        is_val = torch.tensor([pair.split == "val" for pair in ds.pairs])
        for s in sites:
            out[s.layer][name] = GroupActs(acts[s][:n], acts[s][n:], is_val)
    return out


def _midpoint(ps: np.ndarray, ns: np.ndarray) -> float:
    return float((ps.mean() + ns.mean()) / 2)


def _accuracy(ps: np.ndarray, ns: np.ndarray, thr: float) -> float:
    return float(((ps > thr).sum() + (ns <= thr).sum()) / (len(ps) + len(ns)))


def transfer(acts: dict[int, dict[str, GroupActs]], methods: Sequence[str], *, seed: int = 0,
             options: dict[str, dict] | None = None, shuffle_seed: int | None = None,
             keep_scores: Sequence[int] = (), progress: bool = False, site: str = "resid_post",
             ) -> tuple[pd.DataFrame, dict[tuple, tuple[np.ndarray, np.ndarray]]]:
    """Fit on each group's train split, evaluate on every group; one row per cell.

    ``shuffle_seed`` permutes the training labels first (the null). ``keep_scores`` names
    layers whose per-pair cosine scores are returned, keyed (layer, method, train, test),
    for the bootstrap.
    """
    options = options or {}
    rows, kept = [], {}
    jobs = [(layer, m, g) for layer in acts for m in methods for g in acts[layer]]
    for layer, method, g in tqdm(jobs, desc="fit", disable=not progress):
        tr_pos, tr_neg = acts[layer][g].train()
        if shuffle_seed is not None:
            x = torch.cat([tr_pos, tr_neg])
            rng = np.random.default_rng([shuffle_seed, layer, len(x)])
            perm = torch.from_numpy(rng.permutation(len(x)))
            tr_pos, tr_neg = x[perm[:len(tr_pos)]], x[perm[len(tr_pos):]]
        d = fit_direction(method, tr_pos, tr_neg, seed=seed, site=f"{site}@{layer}", trait=g,
                          log=shuffle_seed is None, **options.get(method, {}))
        thr = _midpoint(cosine_scores(tr_pos, d.vector).numpy(), cosine_scores(tr_neg, d.vector).numpy())
        for h, group in acts[layer].items():
            pos, neg = group.evaluation(same_group=h == g)
            ps, ns = cosine_scores(pos, d.vector).numpy(), cosine_scores(neg, d.vector).numpy()
            rows.append({"layer": layer, "method": method, "train": g, "test": h, "same": h == g,
                         "n_eval": len(ps), "acc": _accuracy(ps, ns, _midpoint(ps, ns)),
                         "acc_transfer": _accuracy(ps, ns, thr), "auroc": auroc(ps, ns)})
            if layer in keep_scores:
                kept[(layer, method, g, h)] = (ps, ns)
    return pd.DataFrame(rows), kept


def run(p: Params, acts: dict[int, dict[str, GroupActs]], *, progress: bool = True,
        ) -> tuple[pd.DataFrame, dict[tuple, tuple[np.ndarray, np.ndarray]]]:
    """Every layer × method × train × test cell, plus the matrix layers' per-pair scores."""
    return transfer(acts, p.methods, seed=p.seed, options=p.method_options(), site=p.site,
                    keep_scores=p.matrix_layers, progress=progress)


def surface_transfer(p: Params) -> pd.DataFrame:
    """The surface baseline as a transfer matrix: a bag-of-words logistic regression
    (``traitlab.surface``) fitted on each group's train texts and scored on every group (its val
    split when the same group, all of it otherwise), with the same columns as ``transfer``'s
    cells (``acc``: evaluated-set midpoint; ``acc_transfer``: the train midpoint). Words that
    carry the trait in one language or topic need not occur in another: where a direction
    transfers and the words do not, the direction reads more than the words."""
    rows = []
    data = p.datasets()
    for g, dg in data.items():
        tp, tn = pair_texts(dg.split("train"), p.position)
        score = fit_bag_of_words(tp, tn)
        thr = _midpoint(score(tp), score(tn))
        for h, dh in data.items():
            pos, neg = pair_texts(dh.split("val") if h == g else dh.pairs, p.position)
            ps, ns = score(pos), score(neg)
            rows.append({"method": "words", "train": g, "test": h, "same": h == g, "n_eval": len(ps),
                         "acc": _accuracy(ps, ns, _midpoint(ps, ns)), "acc_transfer": _accuracy(ps, ns, thr),
                         "auroc": auroc(ps, ns)})
    return pd.DataFrame(rows)


def surface_summary(words: pd.DataFrame) -> pd.DataFrame:
    """Words alone: same- and cross-group mean accuracy (%), transferred-threshold cross mean and
    cross AUROC, one row (the shape of a ``summarize`` row without the bootstrap)."""
    x, s = words[~words.same], words[words.same]
    return pd.DataFrame([{"method": "words", "same_pct": 100 * s.acc.mean(), "cross_pct": 100 * x.acc.mean(),
                          "cross_transfer_pct": 100 * x.acc_transfer.mean(), "cross_auroc": x.auroc.mean(),
                          "worst_pair": f"{x.loc[x.acc.idxmin()].train}→{x.loc[x.acc.idxmin()].test}",
                          "worst_pct": 100 * x.acc.min()}]).set_index("method")


def shuffled_null(p: Params, acts: dict[int, dict[str, GroupActs]], *, progress: bool = True) -> pd.DataFrame:
    """The transfer matrix after label-shuffled training, ``n_shuffle`` seeds, matrix layers only."""
    sub = {layer: acts[layer] for layer in p.matrix_layers}
    frames = []
    for k in tqdm(range(p.n_shuffle), desc="shuffled-label null", disable=not progress):
        df, _ = transfer(sub, p.methods, seed=p.seed + k, options=p.method_options(),
                         shuffle_seed=p.seed + k)
        frames.append(df.assign(shuffle=k))
    return pd.concat(frames, ignore_index=True)


def direction_cosines(p: Params, acts: dict[int, dict[str, GroupActs]], a: str = "probe",
                      b: str = "mean_diff") -> pd.DataFrame:
    """cos(direction of ``a``, direction of ``b``) fitted on the same training group, per matrix
    layer (rows) and group (columns). Near 1 means the two methods found the same axis."""
    opts = p.method_options()
    rows = {}
    for layer in p.matrix_layers:
        rows[layer] = {}
        for g, group in acts[layer].items():
            tr = group.train()
            va = fit_direction(a, *tr, seed=p.seed, log=False, **opts.get(a, {})).vector
            vb = fit_direction(b, *tr, seed=p.seed, log=False, **opts.get(b, {})).vector
            rows[layer][g] = float(va.double() @ vb.double())
    return pd.DataFrame(rows).T.rename_axis("layer")


# ---- uncertainty ----------------------------------------------------------------------

def bootstrap(p: Params, scores: dict[tuple, tuple[np.ndarray, np.ndarray]]) -> dict[tuple, np.ndarray]:
    """Bootstrap accuracies [n_boot] per kept cell; draws shared across methods and layers."""
    names = list(p.groups)
    draws: dict[tuple[str, bool, int], np.ndarray] = {}
    out = {}
    for (layer, method, g, h), (ps, ns) in scores.items():
        key = (h, g == h, len(ps))
        if key not in draws:
            draws[key] = unc.unit_draws(len(ps), p.n_boot, (p.seed, names.index(h), int(g == h)))[None]
        out[(layer, method, g, h)] = resampled_metrics(ps, ns, draws[key], ("accuracy",))["accuracy"]
    return out


def _ci(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(x, [0.025, 0.975])
    return float(lo), float(hi)


def matrix(cells: pd.DataFrame, method: str, layer: int, value: str = "acc") -> pd.DataFrame:
    """Train (rows) × test (columns) accuracy in %, groups in parameter order."""
    d = cells[(cells.method == method) & (cells.layer == layer)]
    order = list(dict.fromkeys(d.train))
    return 100 * d.pivot(index="train", columns="test", values=value).loc[order, order]


def summarize(p: Params, cells: pd.DataFrame, boots: dict[tuple, np.ndarray],
              null: pd.DataFrame) -> pd.DataFrame:
    """Per (method, matrix layer): same- and cross-group means with 95% CIs, the drop, the
    worst cross pair, the transferred-threshold cross mean, and the null's cross mean / 95th pct."""
    rows = []
    for method in p.methods:
        for layer in p.matrix_layers:
            d = cells[(cells.method == method) & (cells.layer == layer)]
            same = np.mean([boots[(layer, method, g, g)] for g in p.groups], axis=0)
            cross = np.mean([boots[(layer, method, g, h)] for g in p.groups for h in p.groups if g != h], axis=0)
            x = d[~d.same]
            worst = x.loc[x.acc.idxmin()]
            nl = null[(null.method == method) & (null.layer == layer) & ~null.same]
            ncross = 100 * nl.groupby("shuffle").acc.mean()
            rows.append({"method": method, "layer": layer,
                         "same_pct": 100 * d[d.same].acc.mean(), "same_ci": _fmt(100 * same),
                         "cross_pct": 100 * x.acc.mean(), "cross_ci": _fmt(100 * cross),
                         "drop_pct": 100 * (d[d.same].acc.mean() - x.acc.mean()), "drop_ci": _fmt(100 * (same - cross)),
                         "worst_pair": f"{worst.train}→{worst.test}", "worst_pct": 100 * worst.acc,
                         "cross_transfer_pct": 100 * x.acc_transfer.mean(), "cross_auroc": x.auroc.mean(),
                         "null_cross_pct": ncross.mean(), "null_cross_p95": float(np.quantile(ncross, 0.95))})
    return pd.DataFrame(rows).set_index(["method", "layer"])


def _fmt(x: np.ndarray) -> str:
    lo, hi = _ci(x)
    return f"[{lo:.1f}, {hi:.1f}]"


def method_difference(p: Params, boots: dict[tuple, np.ndarray], a: str = "probe",
                      b: str = "mean_diff") -> pd.DataFrame:
    """Cross-group mean accuracy of ``a`` minus ``b`` per matrix layer, with a paired bootstrap CI
    and the fraction of bootstrap draws in which ``a`` is ahead."""
    rows = []
    for layer in p.matrix_layers:
        cross = {m: np.mean([boots[(layer, m, g, h)] for g in p.groups for h in p.groups if g != h], axis=0)
                 for m in (a, b)}
        diff = 100 * (cross[a] - cross[b])
        lo, hi = _ci(diff)
        rows.append({"layer": layer, f"{a}_minus_{b}_pct": float(np.mean(diff)), "ci_lo": lo, "ci_hi": hi,
                     f"P({a} ahead)": float((diff > 0).mean())})
    return pd.DataFrame(rows).set_index("layer")


def null_exceedance(p: Params, cells: pd.DataFrame, null: pd.DataFrame) -> pd.DataFrame:
    """Per cell of the matrix layers: observed accuracy, the null's 95th percentile, and whether
    the observed value exceeds every shuffled-label fit."""
    obs = cells[cells.layer.isin(p.matrix_layers)].set_index(["layer", "method", "train", "test"])
    g = null.groupby(["layer", "method", "train", "test"]).acc
    out = obs[["acc"]].join(g.quantile(0.95).rename("null_p95")).join(g.max().rename("null_max"))
    return out.assign(exceeds_null=out.acc > out.null_max)


def by_layer(cells: pd.DataFrame) -> pd.DataFrame:
    """Same- and cross-group mean accuracy (%) per method and layer, long format for plotting."""
    d = cells.assign(kind=np.where(cells.same, "same group", "cross group"))
    return (100 * d.groupby(["method", "layer", "kind"]).acc.mean()).rename("acc_pct").reset_index()


def versus_seed(finding: Finding, cells: pd.DataFrame, layer: int) -> pd.DataFrame:
    """The seed's matrix cells beside ours at ``layer`` (groups matched by name)."""
    rows = []
    for method, ref in SEED[finding]["matrix"].items():
        if method not in set(cells.method):
            continue
        ours = matrix(cells, method, layer)
        for g in ref.index:
            for h in ref.columns:
                if g in ours.index and h in ours.columns:
                    rows.append({"method": method, "train": g, "test": h, "seed_pct": ref.loc[g, h],
                                 "ours_pct": ours.loc[g, h]})
    return pd.DataFrame(rows)


def conclusions(p: Params, finding: Finding, summary: pd.DataFrame, diff: pd.DataFrame,
                exceed: pd.DataFrame, words: pd.DataFrame | None = None) -> list[str]:
    """Plain-language findings computed from this run; ``words``: the ``surface_summary`` row."""
    out = []
    ref = SEED[finding]
    for layer in p.matrix_layers:
        parts = []
        for m in ("probe", "mean_diff"):
            if (m, layer) in summary.index:
                r = summary.loc[(m, layer)]
                parts.append(f"{m} same {r.same_pct:.1f}% / cross {r.cross_pct:.1f}% {r.cross_ci} "
                             f"(transferred threshold {r.cross_transfer_pct:.1f}%, null {r.null_cross_pct:.1f}%)")
        if parts:
            out.append(f"Layer {layer}: " + "; ".join(parts) + ".")
    if words is not None and len(words):
        w = words.iloc[0]
        out.append(f"Words alone (bag-of-words logistic regression on the same texts): same {w.same_pct:.1f}% / "
                   f"cross {w.cross_pct:.1f}% (transferred threshold {w.cross_transfer_pct:.1f}%, worst "
                   f"{w.worst_pair} {w.worst_pct:.1f}%)"
                   + (": the words transfer too, so this set cannot show a direction reading more than the words."
                      if w.cross_pct >= 90 else "."))
    seed_bits = "; ".join(f"{m}: same {s if s is not None else 'n/a'}%, cross {c}%"
                          for m, (s, c) in ref["summary"].items())
    out.append(f"Seed ({ref['where']}): {seed_bits}.")
    if len(diff):
        col = diff.columns[0]
        ahead = [f"L{layer} {r[col]:+.1f} pts [{r.ci_lo:+.1f}, {r.ci_hi:+.1f}]" for layer, r in diff.iterrows()]
        sure = [layer for layer, r in diff.iterrows() if r.ci_lo > 0]
        behind = [layer for layer, r in diff.iterrows() if r.ci_hi < 0]
        verdict = ("probe generalizes better than mean_diff at layers " + ", ".join(map(str, sure))
                   if sure else "probe does not generalize measurably better than mean_diff at any matrix layer")
        if behind:
            verdict += "; mean_diff is ahead at layers " + ", ".join(map(str, behind))
        out.append(f"Probe − mean_diff, cross-group accuracy (95% paired bootstrap CI): {'; '.join(ahead)}. "
                   f"So {verdict}.")
    ex = exceed.reset_index()
    for m in ("probe", "mean_diff"):
        e = ex[(ex.method == m) & (ex.train != ex.test)]
        if len(e):
            out.append(f"{m}: {int(e.exceeds_null.sum())}/{len(e)} cross-group cells beat every "
                       f"shuffled-label fit ({p.n_shuffle} seeds).")
    return out


# ---- result record ----------------------------------------------------------------------

_CHAOTIC = ("gradient", "pca_diff", "ica")
"""Methods whose fit is chaotic across CPUs (iterative optimisation, near-tied eigenvalues,
FastICA): their means get k=3 standard errors instead of 2."""


def _one_item(cells: pd.DataFrame) -> float:
    """Accuracy points one evaluated item moves a mean over ``cells`` (the smallest cell sets it)."""
    return 100 / (2 * int(cells.n_eval.min())) / len(cells)


def _mean_boot(boots: dict[tuple, np.ndarray], keys: list[tuple]) -> np.ndarray:
    return 100 * np.mean([boots[k] for k in keys], axis=0)


def record(p: Params, lm: LoadedModel | None, finding: Finding, cells: pd.DataFrame, summary: pd.DataFrame,
           boots: dict[tuple, np.ndarray], exceed: pd.DataFrame, compare_layer: int,
           words: pd.DataFrame | None = None) -> records.ResultRecord:
    """The report as data: same/cross-group accuracies per method and matrix layer, the
    probe − mean_diff difference, the seed's claims at ``compare_layer`` with verdicts, tables.

    Quantities (tolerance rule in brackets):

    - ``<method>.L<layer>.same_pct`` / ``.cross_pct``: mean accuracy over the diagonal /
      off-diagonal cells [estimate: k SEs of the joint pair bootstrap (k=2; 3 for the methods in
      ``_CHAOTIC``), the SE floored so that k SEs are at least one evaluated item flipping].
    - ``<method>.L<layer>.beats_null_rate``: share of cross cells above every label-shuffled fit
      [rate over cross cells, 2 cells flipping (1 when there are fewer than 8): a cell tied with
      the null's maximum, e.g. both at 100%, can flip on float noise].
    - ``probe_minus_mean_diff.L<layer>_pts``: paired cross-group difference [estimate: 2 SEs of
      the paired bootstrap, floored at one item].
    - ``n_groups``, ``cross_cells``, ``compare_layer``: exact.
    - ``words.same_pct`` / ``words.cross_pct`` (with ``words``, the ``surface_transfer`` cells):
      words alone [rate over the evaluated items, 2 items flipping: a deterministic fit].

    The shuffled-label null's own means are left out of the quantities (they are in the
    ``summary`` table): with ``n_shuffle`` of 5 at ci they are noise around chance.
    """
    groups = list(p.groups)
    g = len(groups)
    same_keys = [(gr, gr) for gr in groups]
    cross_keys = [(a, b) for a in groups for b in groups if a != b]
    qs: list[records.Quantity] = [records.exact("n_groups", g), records.exact("cross_cells", len(cross_keys)),
                                  records.exact("compare_layer", compare_layer)]
    stats: dict[tuple, tuple[float, float, tuple[float, float]]] = {}
    for method in p.methods:
        k = 3 if method in _CHAOTIC else 2
        for layer in p.matrix_layers:
            d = cells[(cells.method == method) & (cells.layer == layer)]
            for kind, keys, sel in (("same", same_keys, d.same), ("cross", cross_keys, ~d.same)):
                draws = _mean_boot(boots, [(layer, method, a, b) for a, b in keys])
                value = float(summary.loc[(method, layer), f"{kind}_pct"])
                se = max(float(draws.std(ddof=1)), _one_item(d[sel]) / k)
                ci = _ci(draws)
                stats[(method, layer, kind)] = (value, se, ci)
                qs.append(records.estimate(f"{method}.L{layer}.{kind}_pct", value, se=se, n=int(d[sel].n_eval.sum()),
                                           unit="%", k=k, ci=ci))
            ex = exceed.reset_index()
            ex = ex[(ex.method == method) & (ex.layer == layer) & (ex.train != ex.test)]
            if len(ex):
                qs.append(records.rate(f"{method}.L{layer}.beats_null_rate", float(ex.exceeds_null.mean()),
                                       n=len(ex), items=2 if len(ex) >= 8 else 1))
    diffs: dict[int, tuple[float, float, tuple[float, float]]] = {}
    if {"probe", "mean_diff"} <= set(p.methods):
        for layer in p.matrix_layers:
            dd = (_mean_boot(boots, [(layer, "probe", a, b) for a, b in cross_keys])
                  - _mean_boot(boots, [(layer, "mean_diff", a, b) for a, b in cross_keys]))
            x = cells[(cells.layer == layer) & ~cells.same]
            value = 100 * float(x[x.method == "probe"].acc.mean() - x[x.method == "mean_diff"].acc.mean())
            se = max(float(dd.std(ddof=1)), _one_item(x[x.method == "probe"]) / 2)
            diffs[layer] = (value, se, _ci(dd))
            qs.append(records.estimate(f"probe_minus_mean_diff.L{layer}_pts", value, se=se,
                                       n=len(cross_keys), unit="pts", k=2, ci=diffs[layer][2]))
    if words is not None and len(words):
        for kind, sel in (("same", words.same), ("cross", ~words.same)):
            w = words[sel]
            n = int(2 * w.n_eval.sum())
            qs.append(records.rate(f"words.{kind}_pct", 100 * float(w.acc.mean()), n=n, unit="%", items=2))
    claims = _claims(finding, compare_layer, stats, diffs)
    tables = {"summary": summary, "versus_seed": versus_seed(finding, cells, compare_layer),
              "null_exceedance": exceed}
    if words is not None:
        tables["words"] = words
    return records.ResultRecord(finding, model=getattr(lm, "spec", None) or p.model, quantities=tuple(qs),
                                claims=tuple(claims), tables=tables, params=asdict(p))


def _not_below(seed: float, ours: float, se: float, ci: tuple[float, float],
               unit: str = "%") -> tuple[records.Verdict, str]:
    """The seed's number holds here unless ours is detectably below it: it holds while our 95% CI
    reaches the seed's value; below it, "not held" needs the gap to exceed the minimum detectable
    difference (``unc.POWER_Z`` SEs), else "inconclusive"."""
    if ci[1] >= seed:
        return records.decide(holds=True)[0], f"the seed's {seed:g}{unit} is within or below our 95% CI"
    gap, mde = seed - ours, unc.POWER_Z * se
    verdict, _ = records.decide(holds=False, seed_effect=gap, mde=mde)
    word = "more" if verdict == "not held" else "not more"
    return verdict, (f"ours {ours:.1f}{unit} is {gap:.1f} pts below the seed's {seed:g}{unit}, {word} than the minimum "
                     f"detectable difference {mde:.1f} pts")


def _claims(finding: Finding, layer: int, stats: dict[tuple, tuple[float, float, tuple[float, float]]],
            diffs: dict[int, tuple[float, float, tuple[float, float]]]) -> list[records.Claim]:
    """The seed's claims at the layer closest to its depth (only for methods that ran)."""
    ref = SEED[finding]["summary"]
    what = {"cross_language": "language", "cross_topic": "topic", "cross_distribution": "domain group"}[finding]
    out = []
    if "probe" in ref and ("probe", layer, "same") in stats:
        seed_same, seed_cross = ref["probe"]
        for kind, seed_value, text in (("same", seed_same, f"a probe classifies held-out pairs of its own {what}"),
                                       ("cross", seed_cross, f"a probe trained on one {what} classifies the others")):
            if seed_value is None:
                continue
            ours, se, ci = stats[("probe", layer, kind)]
            v, why = _not_below(seed_value, ours, se, ci)
            out.append(records.Claim(f"probe_{kind}_group", text, f"{seed_value:g}%", "", v, f"layer {layer}: {why}",
                                     quantity=f"probe.L{layer}.{kind}_pct"))
    if "probe" in ref and "mean_diff" in ref and layer in diffs:
        seed_gap = ref["probe"][1] - ref["mean_diff"][1]
        value, se, ci = diffs[layer]
        # The seed's claim is a large gap (mean_diff near chance), so it is tested like the
        # accuracies: held unless our difference is detectably below the seed's.
        v, why = _not_below(seed_gap, value, se, ci, unit=" pts")
        out.append(records.Claim("probe_beats_mean_diff", f"probe transfers across {what}s better than mean_diff",
                                 f"{ref['probe'][1]:g}% vs {ref['mean_diff'][1]:g}% (+{seed_gap:.1f} pts)", "", v,
                                 f"layer {layer}, paired bootstrap CI [{ci[0]:+.1f}, {ci[1]:+.1f}] pts: {why}",
                                 quantity=f"probe_minus_mean_diff.L{layer}_pts"))
    return out
