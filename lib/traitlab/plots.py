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
