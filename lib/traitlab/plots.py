"""Plots the reports share (seaborn/matplotlib); each returns its figure.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"method": ["probe"] * 2, "trait": ["a", "a"], "layer": [0, 1],
    ...                    "val_accuracy": [0.9, 0.8]})
    >>> fig = accuracy_heatmaps(df, ["probe"])
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend() == "" else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def accuracy_heatmaps(df: pd.DataFrame, methods: list[str], value: str = "val_accuracy",
                      vmin: float = 0.0, vmax: float = 1.0) -> plt.Figure:
    """One heatmap per method: traits (rows) × layers (columns), coloured by ``value``."""
    n = len(methods)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.45 * df.trait.nunique() * rows + 1.6 * rows),
                             squeeze=False, constrained_layout=True)
    for ax, method in zip(axes.flat, methods, strict=False):
        grid = df[df.method == method].pivot_table(index="trait", columns="layer", values=value)
        sns.heatmap(grid, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", cbar=True,
                    cbar_kws={"label": value}, xticklabels=max(1, grid.shape[1] // 12))
        ax.set_title(method)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig


def null_histogram(null: pd.Series, observed: dict[str, float], xlabel: str) -> plt.Figure:
    """Histogram of a null statistic (one value per random seed) with observed values marked."""
    fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
    ax.hist(null, bins=20, color="0.7", label=f"random directions (n={len(null)})")
    for i, (name, x) in enumerate(observed.items()):
        ax.axvline(x, color=sns.color_palette()[i % 10], lw=2, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("seeds")
    ax.legend(fontsize=8, loc="best")
    return fig


def by_layer(df: pd.DataFrame, value: str, ylabel: str, hue: str = "method") -> plt.Figure:
    """Mean of ``value`` over traits, against layer, one line per ``hue``."""
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    sns.lineplot(df, x="layer", y=value, hue=hue, errorbar=("ci", 95), ax=ax, marker="o", markersize=3)
    ax.set_ylabel(ylabel)
    return fig


def scorer_agreement(df: pd.DataFrame, threshold: float) -> plt.Figure:
    """Logit score (x) against generation refusal (y, jittered), coloured by prompt set."""
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    rng = np.random.default_rng(0)
    for i, (name, g) in enumerate(df.groupby("set")):
        y = g.refused.astype(float) + rng.uniform(-0.12, 0.12, len(g))
        ax.scatter(g.score, y, s=12, alpha=0.6, color=sns.color_palette()[i], label=name)
    ax.axvline(threshold, color="k", lw=1, ls="--", label="logit threshold")
    ax.set_yticks([0, 1], ["complied", "refused"])
    ax.set_xlabel("logit refusal score (log-odds of a refusal opening)")
    ax.legend(fontsize=8)
    return fig


def patching_heatmaps(patch: pd.DataFrame, k: int) -> plt.Figure:
    """Recovered fraction, sites × layers, one panel per patching direction (at ``k``)."""
    dirs = list(dict.fromkeys(patch.direction))
    fig, axes = plt.subplots(len(dirs), 1, figsize=(11, 1.6 * len(dirs) + 0.9), squeeze=False,
                             constrained_layout=True)
    for ax, d in zip(axes[:, 0], dirs, strict=True):
        g = patch[(patch.direction == d) & (patch.k == k)].pivot_table(index="site", columns="layer",
                                                                      values="recovered", sort=False)
        sns.heatmap(g, ax=ax, cmap="RdBu_r", center=0, vmin=-1, vmax=1, cbar_kws={"label": "recovered"})
        ax.set_title(f"patch {d}, last {k} positions")
    return fig


def alpha_curves(c: pd.DataFrame, band: pd.DataFrame, value: str, ylabel: str) -> plt.Figure:
    """``value`` against alpha per layer (columns) and set (rows): learned, holdout, random band."""
    sets, layers = list(dict.fromkeys(c["set"])), sorted(c.layer.unique())
    fig, axes = plt.subplots(len(sets), len(layers), figsize=(3.6 * len(layers), 2.6 * len(sets)),
                             squeeze=False, sharex=True, constrained_layout=True)
    lo, hi, mid = ("rand_lo", "rand_hi", "rand_mean") if value == "score" else ("rate_lo", "rate_hi", "rate_mean")
    for i, s in enumerate(sets):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            b = band[(band["set"] == s) & (band.layer == layer)].sort_values("alpha")
            ax.fill_between(b.alpha, b[lo], b[hi], color="0.8", label="random 5–95%")
            ax.plot(b.alpha, b[mid], color="0.5", ls="--", label="random mean")
            for k, kind in enumerate(["learned", "holdout"]):
                g = c[(c["set"] == s) & (c.layer == layer) & (c.kind == kind)].sort_values("alpha")
                ax.plot(g.alpha, g[value], marker="o", ms=3, color=sns.color_palette()[k], label=kind)
            ax.set_title(f"{s}, layer {layer}", fontsize=9)
            ax.set_xlabel("alpha")
            ax.set_ylabel(ylabel if j == 0 else "")
    axes[0, 0].legend(fontsize=7)
    return fig


def pareto(points: pd.DataFrame) -> plt.Figure:
    """Harmful refusal rate (y) against benign over-refusal (x), one curve per direction kind."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), constrained_layout=True)
    for i, (kind, g) in enumerate(points.groupby("kind", sort=False)):
        g = g.sort_values("alpha")
        ax.plot(g.benign, g.harmful, marker="o", color=sns.color_palette()[i], label=kind)
        for _, r in g.iterrows():
            ax.annotate(f"{r.alpha:g}", (r.benign, r.harmful), fontsize=6, alpha=0.7)
    ax.set_xlabel("over-refusal of safe XSTest prompts")
    ax.set_ylabel("refusal of unsafe XSTest prompts")
    ax.plot([0, 1], [0, 1], color="0.8", lw=1)
    ax.legend(fontsize=8)
    return fig
