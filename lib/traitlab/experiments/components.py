"""Which component carries a trait: residual stream, attention output, MLP output or the V-cache.

The same traits are extracted at several sites (``resid_pre``, ``attn_out``, ``mlp_out``, ``v``,
``resid_post``) of every layer in one forward pass per batch; each (trait, site, layer) cell
fits each method on the train split and is scored on the val split (accuracy, AUROC,
``traitlab.metrics``). ``random`` directions at every cell give the null. Sites are compared
*paired*: for each (trait, layer, method) the difference to ``reference_site`` is taken, and the
mean difference over (trait, layer) cells gets a bootstrap CI that resamples the held-out
pairs within each trait (cells of a trait share its pairs, so they are not independent).

Example:
    >>> p = Params(model="tiny-llama", traits=["refusal"], layers=[0], max_pairs_per_split=4)
    >>> [str(s) for s in p.check()][:2]
    ['resid_pre@0', 'v@0']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from .. import records
from .. import uncertainty as unc
from ..activations import POSITIONS
from ..directions import METHODS, fit_direction, is_degenerate, random_unit
from ..elicit import SourceParams, check_sets, summary_table
from ..elicit import quantities as elicit_quantities
from ..metrics import cell_draws, evaluate, heldout_scores
from ..models import describe
from ..params import ParamError, check_max_pairs
from ..progress import tqdm
from ..sites import SITE_NAMES, Site, check_sites

SEED_CLAIMS = pd.DataFrame(
    [("attn_out beats the residual stream (accuracy)", "attn_out", "resid", "val_accuracy", 0.90, 0.80),
     ("V-cache beats the residual stream (AUROC)", "v", "resid", "auroc", 0.854, 0.687)],
    columns=["claim", "site", "versus", "metric", "seed_site", "seed_resid"]).set_index("claim")
"""The seed's component claims (Gemma-2-2B; which residual site and layer is not stated)."""


@dataclass(frozen=True)
class _Grid:
    """The report's own parameters (``Params`` adds the ``SourceParams`` after them)."""

    model: str = "qwen2.5-coder-0.5b-instruct"
    revision: str | None = None
    dtype: str = "float32"
    traits: list[str] = field(default_factory=lambda: ["refusal", "uncertainty", "formality",
                                                       "optimism", "sycophancy", "humor"])
    layers: list[int] | None = None
    sites: list[str] = field(default_factory=lambda: ["resid_pre", "attn_out", "mlp_out", "v", "resid_post"])
    reference_site: str = "resid_post"
    position: str = "mean"
    methods: list[str] = field(default_factory=lambda: ["probe", "mean_diff"])
    max_pairs_per_split: int | None = None
    n_random_seeds: int = 10
    batch_size: int = 16
    probe_C: float = 1.0
    n_boot: int = 2000
    seed: int = 0
    traits_dir: str | None = None
    """A folder of ``<trait>.jsonl`` prompt sets; null: the shipped ``data/traits``."""
    matched_dim: int | None = None
    """Sites compared at one width too (``match_dimension``): each site's activations projected on
    their first ``matched_dim`` principal components (null: the narrowest site's width, e.g. the
    V-cache's); 0: raw widths only."""


@dataclass(frozen=True)
class Params(SourceParams, _Grid):
    """Every parameter of the report: the grid's, then where the examples come from."""

    def __post_init__(self) -> None:
        if not self.traits:
            raise ParamError("traits is empty; name at least one trait from data/traits/")
        bad = [s for s in self.sites if s not in SITE_NAMES]
        if bad or not self.sites:
            raise ParamError(f"unknown sites {bad}; choose from {', '.join(SITE_NAMES)}")
        if self.reference_site not in self.sites:
            raise ParamError(f"reference_site {self.reference_site!r} must be one of sites {self.sites}")
        if self.position not in POSITIONS:
            raise ParamError(f"position {self.position!r} unknown; choose one of {', '.join(POSITIONS)}")
        bad = [m for m in self.methods if m not in METHODS or m == "random"]
        if bad or not self.methods:
            raise ParamError(f"methods {bad} not allowed; choose from {', '.join(m for m in METHODS if m != 'random')} "
                             "(random always runs as the null)")
        for name in ("n_random_seeds", "batch_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ParamError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_max_pairs(self.max_pairs_per_split)
        if self.probe_C <= 0:
            raise ParamError(f"probe_C must be > 0, got {self.probe_C}")
        if self.matched_dim is not None and self.matched_dim < 0:
            raise ParamError(f"matched_dim must be >= 0 (0: raw widths only) or null, got {self.matched_dim}")
        self.check_source(self.position)

    def check(self) -> list[Site]:
        """Layers and sites against the model's config (no weights read); every site, layer-major."""
        info = describe(self.model, self.revision)
        layers = list(range(info.n_layers)) if self.layers is None else self.layers
        if not layers:
            raise ParamError("layers is empty; use null for every layer")
        order = [s for s in SITE_NAMES if s in self.sites]
        sites = [Site(name, x) for x in layers for name in order]  # type: ignore[arg-type]
        try:
            check_sites(sites, info.arch, info.n_layers)
        except ValueError as err:
            raise ParamError(str(err)) from None
        check_sets(self)
        return sites


def run(p: Params, acts: dict, sites: list[Site], *, progress: bool = True, log: bool = True
        ) -> tuple[pd.DataFrame, dict[tuple, tuple[np.ndarray, np.ndarray]]]:
    """One row per (trait, site, layer, method, seed) with held-out metrics, and each cell's
    held-out pair scores keyed (trait, site, layer, method, seed) for the bootstrap over pairs.
    A cell whose training activations are all one vector (``degenerate``: e.g. the last token of
    a chat template at layer 0) scores chance by construction and is marked, not dropped.

    ``acts`` is ``method_comparison.extract_traits``'s {trait: {split: {site: (pos, neg)}}};
    ``log=False`` keeps the fits out of the published vectors (e.g. fits in a projected space,
    ``match_dimension``, which are not vectors of the model's sites).
    """
    import torch

    rows, scores = [], {}
    methods = list(p.methods) + ["random"]
    jobs = [(t, s, m) for t in p.traits for s in sites for m in methods]
    for trait, site, method in tqdm(jobs, desc="fit", disable=not progress):
        tr_pos, tr_neg = acts[trait]["train"][site]
        va_pos, va_neg = acts[trait]["val"][site]
        degenerate = is_degenerate(torch.cat([tr_pos, tr_neg]))
        seeds = range(p.seed, p.seed + p.n_random_seeds) if method == "random" else [p.seed]
        for seed in seeds:
            opts = {"C": p.probe_C} if method == "probe" else {}
            if degenerate:  # any direction scores chance: the cell is kept, at chance, not dropped
                v = random_unit(int(tr_pos.shape[1]), seed)
            else:
                v = fit_direction(method, tr_pos, tr_neg, seed=seed, site=str(site), trait=trait,
                                  log=log, **opts).vector
            rows.append({"trait": trait, "site": site.name, "layer": site.layer, "method": method,
                         "seed": seed, "dim": int(tr_pos.shape[1]), "degenerate": degenerate,
                         **evaluate(v, va_pos, va_neg).asdict()})
            scores[(trait, site.name, site.layer, method, seed)] = heldout_scores(v, va_pos, va_neg)
    return pd.DataFrame(rows), scores


def matched_width(p: Params, widths: dict[str, int]) -> int:
    """The common width of ``match_dimension``: ``p.matched_dim``, or the narrowest site's width
    (``widths``: site name → width); 0 when matching is off."""
    return min(widths.values()) if p.matched_dim is None else p.matched_dim


def match_dimension(acts: dict, k: int) -> dict:
    """Every site's activations in ``k`` dimensions, so wide and narrow sites compete on equal
    terms: per (trait, site), the top-``k`` principal axes of the train split's pooled activations
    (both classes; centred for the SVD), and every train and val activation written in that basis
    (not centred, so cosine scores keep their meaning; ``k`` is capped at the train rank). A site
    already ``k`` wide is only rotated, and cosines, hence every metric, are unchanged.

    ``acts``: ``method_comparison.extract_traits``'s {trait: {split: {site: (pos, neg)}}}.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = {"t": {s: {"a": (torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g))}
    ...      for s in ("train", "val")}}
    >>> [tuple(t.shape) for t in match_dimension(x, 3)["t"]["val"]["a"]]
    [(6, 3), (6, 3)]
    """
    import torch

    out: dict = {}
    for trait, splits in acts.items():
        out[trait] = {"train": {}, "val": {}}
        for site, (tp, tn) in splits["train"].items():
            x = torch.cat([tp, tn]).double()
            _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
            basis = vh[:min(k, vh.shape[0])].T  # [d, k]
            for split in ("train", "val"):
                pos, neg = splits[split][site]
                out[trait][split][site] = ((pos.double() @ basis).float(), (neg.double() @ basis).float())
    return out


def draws(p: Params, scores: dict) -> dict[tuple, dict[str, np.ndarray]]:
    """Bootstrap draws per cell, keyed like ``scores``: held-out pairs resampled within trait and
    shared by every site, layer and method of that trait, so site differences are paired.
    Accuracy for every cell; AUROC for the learned methods only (rank-based AUROC draws cost
    ~10 ms a cell, and the random null's AUROC level needs no interval)."""
    trait = lambda k: k[0]  # noqa: E731
    out = cell_draws(scores, trait, n_boot=p.n_boot, seed=p.seed, which=("accuracy",))
    auc = cell_draws({k: v for k, v in scores.items() if k[3] != "random"}, trait, n_boot=p.n_boot,
                     seed=p.seed, which=("auroc",))
    return {k: {**v, **auc.get(k, {})} for k, v in out.items()}


def _mean_draws(cells: dict, keep) -> dict[str, np.ndarray]:
    mine = [v for k, v in cells.items() if keep(k)]
    return {m: np.mean([c[m] for c in mine], axis=0) for m in ("accuracy", "auroc") if all(m in c for c in mine)}


def _ci_text(x: np.ndarray | None, fmt: str) -> str:
    if x is None:
        return "n/a"
    lo, hi = np.quantile(x, [0.025, 0.975])
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def summarize(df: pd.DataFrame, p: Params, boot: dict) -> pd.DataFrame:
    """Mean accuracy and AUROC per (method, site) over (trait, layer) cells, with 95% CIs from
    resampling held-out pairs within trait (``boot``: ``draws``). ``random`` is averaged over all
    its seeds (the null level of each site)."""
    out = []
    for (method, site), d in df.groupby(["method", "site"], sort=False):
        b = _mean_draws(boot, lambda k, m=method, s=site: k[3] == m and k[1] == s)
        out.append({"method": method, "site": site, "dim": int(d.dim.iloc[0]), "cells": len(d),
                    "accuracy_pct": 100 * d.val_accuracy.mean(), "acc_ci95": _ci_text(100 * b["accuracy"], ".1f"),
                    "auroc": d.auroc.mean(), "auroc_ci95": _ci_text(b.get("auroc"), ".3f"),
                    "polarity_failures": int((~d.polarity_correct).sum())})
    order = {s: i for i, s in enumerate(SITE_NAMES)}
    return (pd.DataFrame(out).assign(_o=lambda x: x.site.map(order))
            .sort_values(["method", "_o"]).drop(columns="_o").set_index(["method", "site"]))


def site_differences(p: Params, boot: dict) -> dict[tuple[str, str, str], unc.Bootstrap]:
    """Per (method, site ≠ reference): bootstrap of the mean paired difference (site − reference)
    over (trait, layer) cells, for accuracy (points, key ``(method, site, "val_accuracy")``) and
    AUROC (``"auroc"``); held-out pairs resampled within trait (``boot``: ``draws``). The value
    is the draws' mean (the observed difference lives in the results table)."""
    out = {}
    for method in p.methods:
        for site in p.sites:
            if site == p.reference_site:
                continue
            pairs = [(k, (k[0], p.reference_site, *k[2:])) for k in boot
                     if k[3] == method and k[1] == site and (k[0], p.reference_site, *k[2:]) in boot]
            for col, metric, scale in (("val_accuracy", "accuracy", 100), ("auroc", "auroc", 1)):
                dd = np.mean([scale * (boot[a][metric] - boot[b][metric]) for a, b in pairs], axis=0)
                out[(method, site, col)] = unc.Bootstrap(float(dd.mean()), dd)
    return out


def paired_vs_reference(df: pd.DataFrame, p: Params, boot: dict) -> pd.DataFrame:
    """Per (method, site): mean (site − reference) over (trait, layer) cells, with 95% CIs from
    resampling held-out pairs within trait, for accuracy (points) and AUROC."""
    d = df[df.method != "random"]
    wide = d.pivot_table(index=["method", "trait", "layer"], columns="site", values=["val_accuracy", "auroc"])
    diffs = site_differences(p, boot)
    out = []
    for method in p.methods:
        w = wide.loc[method]
        for site in p.sites:
            if site == p.reference_site:
                continue
            da = 100 * (w["val_accuracy"][site] - w["val_accuracy"][p.reference_site]).to_numpy()
            du = (w["auroc"][site] - w["auroc"][p.reference_site]).to_numpy()
            ba, bu = diffs[(method, site, "val_accuracy")], diffs[(method, site, "auroc")]
            out.append({"method": method, "site": site, "versus": p.reference_site, "cells": len(da),
                        "d_accuracy_pts": da.mean(), "d_acc_ci95": ba.text("+.1f"),
                        "d_auroc": du.mean(), "d_auroc_ci95": bu.text("+.3f"),
                        "site_wins_pct": 100 * float((da > 0).mean())})
    return pd.DataFrame(out).set_index(["method", "site"])


def best_layers(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, site): the layer with the best mean accuracy over traits, and that accuracy."""
    d = df[df.method != "random"].groupby(["method", "site", "layer"]).agg(
        accuracy=("val_accuracy", "mean"), auroc=("auroc", "mean")).reset_index()
    best = d.loc[d.groupby(["method", "site"]).accuracy.idxmax()]
    return best.assign(accuracy_pct=lambda x: 100 * x.accuracy).drop(columns="accuracy") \
        .set_index(["method", "site"]).round(3)


def versus_seed(summary: pd.DataFrame, p: Params, method: str = "probe") -> pd.DataFrame:
    """The seed's two claims beside ours: the claimed site vs the reference residual site."""
    method = method if method in p.methods else p.methods[0]
    rows = []
    for claim, c in SEED_CLAIMS.iterrows():
        if c.site not in p.sites:
            continue
        col = "accuracy_pct" if c.metric == "val_accuracy" else "auroc"
        scale = 100 if c.metric == "val_accuracy" else 1
        ours_site, ours_ref = summary.loc[(method, c.site), col], summary.loc[(method, p.reference_site), col]
        rows.append({"claim": claim, "method": method, "seed": f"{c.seed_site * scale:g} vs {c.seed_resid * scale:g}",
                     "ours": f"{ours_site:.3g} vs {ours_ref:.3g} ({p.reference_site})",
                     "holds": bool(ours_site > ours_ref)})
    return pd.DataFrame(rows).set_index("claim")


def conclusions(summary: pd.DataFrame, paired: pd.DataFrame, p: Params) -> list[str]:
    """Plain-language findings, each number from the tables above."""
    out = []
    for method in p.methods:
        s = records.ranked(summary.loc[method], "accuracy_pct")
        out.append(f"{method}: sites by mean held-out accuracy: " + " > ".join(
            f"{site} {r.accuracy_pct:.1f}%" for site, r in s.iterrows()) + "; random null "
            + ", ".join(f"{site} {summary.loc[('random', site), 'accuracy_pct']:.1f}%" for site in s.index) + ".")
        for site, r in paired.loc[method].iterrows():
            lo, hi = (float(x) for x in r.d_acc_ci95.strip("[]").split(","))
            verdict = "better than" if lo > 0 else "worse than" if hi < 0 else "not distinguishable from"
            out.append(f"  {site} is {verdict} {p.reference_site}: {r.d_accuracy_pts:+.1f} pts {r.d_acc_ci95}, "
                       f"AUROC {r.d_auroc:+.3f} {r.d_auroc_ci95}, wins {r.site_wins_pct:.0f}% of cells.")
    return out


# ---- result record ----------------------------------------------------------------------

SE_FLOOR = {"pct": 0.05, "auroc": 0.0005}
"""Smallest SE used for a tolerance (accuracy points, AUROC), so that cells all at 100% (SE 0)
still allow float noise."""

_CLAIM_IDS = {"attn_out": "attn_out_beats_resid", "v": "v_beats_resid"}


@dataclass(frozen=True)
class Space:
    """One comparison of the sites: raw widths (``name`` "") or after ``match_dimension`` to
    ``width`` ("matched"); its results, summary and bootstrap draws."""

    name: str
    results: pd.DataFrame
    summary: pd.DataFrame
    boot: dict
    width: int | None = None


def record(p: Params, lm: object | None, results: pd.DataFrame, summary: pd.DataFrame,
           boot: dict, matched: Space | None = None, elicited: dict | None = None) -> records.ResultRecord:
    """The report as data: accuracy and AUROC per (method, site), paired differences with the
    reference site, the seed's two component claims with verdicts, tables.

    Quantities (tolerance rule in brackets; cells are (trait, layer), and share traits, so
    SEs over cells are optimistic and the tolerances strict):

    - ``<method>.<site>.accuracy_pct`` / ``.auroc``: mean over cells [estimate: 2 SEs over cells,
      floored at ``SE_FLOOR``]; ``random`` rows average every seed, SE over all its rows.
    - ``<method>.<site>_minus_<reference>.accuracy_pts`` / ``.auroc``: paired mean difference
      over cells [estimate: 2 bootstrap SEs, held-out pairs resampled within trait, floored; the
      verdict uses the same SE].
    - ``n_traits``, ``n_layers``, ``n_sites``: exact.
    - with ``matched`` (every site at one width, ``match_dimension``): the same quantities
      prefixed ``matched.``, ``matched.width`` (exact), and the seed's claims again with ids
      suffixed ``.matched``.
    - with ``elicited`` (``source: generated``): ``elicit.<trait>.kept_rate``.
    """
    qs: list[records.Quantity] = [records.exact("n_traits", len(p.traits)),
                                  records.exact("n_layers", int(results.layer.nunique())),
                                  records.exact("n_sites", len(p.sites))]
    spaces = [Space("", results, summary, boot)] + ([matched] if matched is not None else [])
    claims: list[records.Claim] = []
    tables = {}
    for sp in spaces:
        pre = f"{sp.name}." if sp.name else ""
        if sp.width is not None:
            qs.append(records.exact(f"{pre}width", sp.width))
        space_qs, paired = _space_quantities(p, sp)
        qs += [replace(q, name=pre + q.name) for q in space_qs]
        claims += [replace(c, id=c.id + (f".{sp.name}" if sp.name else ""), quantity=pre + (c.quantity or ""),
                           statement=c.statement + (f" (every site at {sp.width} dimensions)" if sp.name else ""))
                   for c in _claims(p, paired)]
        tables.update({f"{pre}summary": sp.summary, f"{pre}paired": paired_vs_reference(sp.results, p, sp.boot),
                       f"{pre}best_layers": best_layers(sp.results)})
    if elicited:
        qs += elicit_quantities(elicited)
        tables["elicited"] = summary_table(elicited)
    return records.ResultRecord("components", model=getattr(lm, "spec", None) or p.model, quantities=tuple(qs),
                                claims=tuple(claims), tables=tables, params=asdict(p))


def _space_quantities(p: Params, sp: Space
                      ) -> tuple[list[records.Quantity], dict[tuple[str, str, str], tuple[float, float]]]:
    """One space's per-site means and paired differences (names without the space's prefix),
    and the paired (value, SE) the claims read."""
    qs: list[records.Quantity] = []
    results, boot = sp.results, sp.boot
    for (method, site), row in sp.summary.iterrows():
        d = results[(results.method == method) & (results.site == site)]
        acc, au = 100 * d.val_accuracy.to_numpy(), d.auroc.to_numpy()
        qs.append(records.estimate(f"{method}.{site}.accuracy_pct", row.accuracy_pct, se=unc.se_of_mean(acc, SE_FLOOR["pct"]),
                                   n=len(d), unit="%", k=2, ci=_parse_ci(row.acc_ci95)))
        qs.append(records.estimate(f"{method}.{site}.auroc", row.auroc, se=unc.se_of_mean(au, SE_FLOOR["auroc"]), n=len(d),
                                   k=2, ci=_parse_ci(row.auroc_ci95)))
    d = results[results.method != "random"]
    wide = d.pivot_table(index=["method", "trait", "layer"], columns="site", values=["val_accuracy", "auroc"])
    paired: dict[tuple[str, str, str], tuple[float, float]] = {}
    diffs = site_differences(p, boot)
    for method in p.methods:
        w = wide.loc[method]
        for site in p.sites:
            if site == p.reference_site:
                continue
            for metric, col, scale, unit, floor in (("accuracy_pts", "val_accuracy", 100, "pts", SE_FLOOR["pct"]),
                                                    ("auroc", "auroc", 1, "", SE_FLOOR["auroc"])):
                dx = scale * (w[col][site] - w[col][p.reference_site]).to_numpy()
                b = diffs[(method, site, col)]
                se = max(b.se, floor)
                paired[(method, site, col)] = (float(dx.mean()), se)
                qs.append(records.estimate(f"{method}.{site}_minus_{p.reference_site}.{metric}", dx.mean(), se=se,
                                           n=len(dx), unit=unit, k=2,
                                           ci=b.ci if np.isfinite(b.ci).all() else None))
    return qs, paired


def _parse_ci(text: str) -> tuple[float, float] | None:
    ci = unc.parse_ci(text)
    return ci if np.isfinite(ci).all() else None


def _claims(p: Params, paired: dict[tuple[str, str, str], tuple[float, float]]) -> list[records.Claim]:
    """The seed's claims (``SEED_CLAIMS``) for the probe (else the first method), paired with the
    reference site: holds when the paired 95% CI lies above 0; not held when it does not and the
    minimum detectable difference is below the seed's."""
    method = "probe" if "probe" in p.methods else p.methods[0]
    out = []
    for claim, c in SEED_CLAIMS.iterrows():
        if c.site not in p.sites or c.site == p.reference_site:
            continue
        value, se = paired[(method, c.site, c.metric)]
        scale = 100 if c.metric == "val_accuracy" else 1
        seed_effect = scale * (c.seed_site - c.seed_resid)
        lo = value - 1.96 * se
        if lo > 0:
            v, why = records.decide(holds=True)
        else:
            v, why = records.decide(holds=False, seed_effect=seed_effect, mde=unc.POWER_Z * se)
        metric = "accuracy_pts" if c.metric == "val_accuracy" else "auroc"
        out.append(records.Claim(
            _CLAIM_IDS.get(c.site, f"{c.site}_beats_resid"), claim,
            f"{c.seed_site * scale:g} vs {c.seed_resid * scale:g}", "", v,
            f"{method}, {c.site} − {p.reference_site} paired over cells: {value:+.3g} (95% CI lower end {lo:+.3g}); "
            f"{why}", quantity=f"{method}.{c.site}_minus_{p.reference_site}.{metric}"))
    return out
