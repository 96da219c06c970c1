"""Plots the reports share (seaborn/matplotlib); each returns its figure.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"method": ["probe"] * 2, "trait": ["a", "a"], "layer": [0, 1],
    ...                    "val_accuracy": [0.9, 0.8]})
    >>> fig = accuracy_heatmaps(df, ["probe"])
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import matplotlib.ticker

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


def learning_curve(curve: pd.DataFrame) -> plt.Figure:
    """Held-out accuracy against training pairs per trait (log scale), one line per method; the
    band is the 95% CI over traits (each trait's mean over layers and repeats)."""
    per_trait = (curve.groupby(["method", "n_train", "trait"], sort=False).val_accuracy.mean() * 100).reset_index()
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    sns.lineplot(per_trait, x="n_train", y="val_accuracy", hue="method", errorbar=("ci", 95), marker="o", ax=ax)
    ax.set_xscale("log", base=2)
    sizes = sorted(per_trait.n_train.unique())
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set(xlabel="training pairs per trait", ylabel="held-out accuracy (%)")
    ax.axhline(50, ls=":", c="grey", lw=1)
    return fig


def ratio_zones(zones: pd.DataFrame, sweet: tuple[float, float] = (0.5, 0.8),
                breakdown: tuple[float, float] = (1.0, 1.3)) -> plt.Figure:
    """Per method (columns): the trait win rate (top) and the coherent share (bottom) against the
    perturbation ratio (log scale), one line per layer with its 95% CI band; the seed's sweet
    spot is shaded green, its breakdown band red."""
    df = zones.reset_index()
    methods = list(dict.fromkeys(df.method))
    fig, axes = plt.subplots(2, len(methods), figsize=(5.6 * len(methods), 6.2), squeeze=False, sharex=True,
                             sharey="row", constrained_layout=True)
    colors = dict(zip(sorted(df.layer.unique()), sns.color_palette("viridis", df.layer.nunique()), strict=True))
    for j, m in enumerate(methods):
        for i, (y, lo, hi, label) in enumerate((("win_rate", "win_lo", "win_hi", "trait win rate vs unsteered"),
                                                ("coherent", "coh_lo", "coh_hi", "coherent share"))):
            ax = axes[i, j]
            ax.axvspan(*sweet, color="tab:green", alpha=0.12, lw=0)
            ax.axvspan(*breakdown, color="tab:red", alpha=0.10, lw=0)
            for layer, g in df[df.method == m].groupby("layer"):
                ax.plot(g.ratio, g[y], marker="o", ms=3, color=colors[layer], label=f"L{layer}")
                ax.fill_between(g.ratio, g[lo], g[hi], color=colors[layer], alpha=0.12, lw=0)
            ax.axhline(0.5, ls=":", c="grey", lw=1)
            ax.set_xscale("log")
            ax.set(ylim=(-0.02, 1.02), ylabel=label if j == 0 else "")
            if i == 0:
                ax.set_title(m)
            else:
                ax.set_xlabel("perturbation ratio  coef·‖v‖/‖act‖")
        axes[0, j].legend(fontsize=8, loc="upper left")
    return fig


def by_layer(df: pd.DataFrame, value: str, ylabel: str, hue: str = "method") -> plt.Figure:
    """Mean of ``value`` over traits, against layer, one line per ``hue``."""
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    sns.lineplot(df, x="layer", y=value, hue=hue, errorbar=("ci", 95), ax=ax, marker="o", markersize=3)
    ax.set_ylabel(ylabel)
    return fig


def site_by_layer(df: pd.DataFrame, value: str, ylabel: str) -> plt.Figure:
    """One panel per method: mean ``value`` over traits against layer, one line per site."""
    methods = list(dict.fromkeys(df.method))
    fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 3.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, method in zip(axes.flat, methods, strict=True):
        sns.lineplot(df[df.method == method], x="layer", y=value, hue="site", errorbar=None, ax=ax,
                     marker="o", markersize=3)
        ax.set_title(method)
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


def transfer_matrices(cells: pd.DataFrame, methods: list[str], layers: list[int],
                      value: str = "acc") -> plt.Figure:
    """Annotated train (rows) × test (columns) accuracy heatmaps: methods × layers."""
    fig, axes = plt.subplots(len(methods), len(layers), squeeze=False, constrained_layout=True,
                             figsize=(2.9 * len(layers) + 0.6, 2.5 * len(methods)))
    for i, m in enumerate(methods):
        for j, layer in enumerate(layers):
            d = cells[(cells.method == m) & (cells.layer == layer)]
            order = list(dict.fromkeys(d.train))
            grid = 100 * d.pivot(index="train", columns="test", values=value).loc[order, order]
            sns.heatmap(grid, ax=axes[i, j], vmin=40, vmax=100, cmap="viridis", annot=True, fmt=".0f",
                        cbar=j == len(layers) - 1, annot_kws={"fontsize": 7})
            axes[i, j].set_title(f"{m}, layer {layer}", fontsize=9)
            axes[i, j].set_xlabel("test" if i == len(methods) - 1 else "")
            axes[i, j].set_ylabel("train" if j == 0 else "")
    return fig


def same_vs_cross(long: pd.DataFrame, methods: list[str]) -> plt.Figure:
    """Same-group and cross-group mean accuracy against layer, one panel per method."""
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods) + 0.5, 2.8), sharey=True,
                             squeeze=False, constrained_layout=True)
    for ax, m in zip(axes[0], methods, strict=True):
        d = long[long.method == m]
        for k, (kind, g) in enumerate(d.groupby("kind", sort=False)):
            ax.plot(g.layer, g.acc_pct, marker="o", ms=3, color=sns.color_palette()[k], label=kind)
        ax.axhline(50, color="0.7", lw=1, ls="--")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("layer")
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[0, 0].legend(fontsize=7)
    return fig


def cross_vs_null(summary: pd.DataFrame, null: pd.DataFrame, methods: list[str]) -> plt.Figure:
    """Per method and matrix layer: observed cross-group accuracy (dot, 95% CI) against the
    shuffled-label null's distribution of the same average (grey violin)."""
    layers = sorted({layer for _, layer in summary.index})
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), sharey=True,
                             squeeze=False, constrained_layout=True)
    for ax, layer in zip(axes[0], layers, strict=True):
        nl = null[(null.layer == layer) & ~null.same]
        dist = [100 * nl[nl.method == m].groupby("shuffle").acc.mean().to_numpy() for m in methods]
        ax.violinplot(dist, positions=range(len(methods)), showextrema=False)
        for x, m in enumerate(methods):
            r = summary.loc[(m, layer)]
            lo, hi = (float(v) for v in r.cross_ci.strip("[]").split(","))
            ax.errorbar(x, r.cross_pct, yerr=[[r.cross_pct - lo], [hi - r.cross_pct]], fmt="o", color="k", ms=4)
        ax.set_xticks(range(len(methods)), methods, rotation=45, fontsize=8)
        ax.set_title(f"layer {layer}", fontsize=9)
    axes[0, 0].set_ylabel("cross-group accuracy (%)")
    return fig


def judge_vs_gold(df: pd.DataFrame, modes: list[str], trait: str = "optimism") -> plt.Figure:
    """Judge score against our gold label: rows trait / coherence, one column per judge mode."""
    fig, axes = plt.subplots(2, len(modes), figsize=(4.6 * len(modes), 8.4), squeeze=False,
                             constrained_layout=True)
    for r, (metric, gold) in enumerate([("trait", trait), ("coherence", "coherence")]):
        for c, mode in enumerate(modes):
            ax = axes[r, c]
            sns.scatterplot(data=df, x=gold, y=f"{metric}_{mode}", hue="level", style="level",
                            ax=ax, s=40, legend=(r == 0 and c == len(modes) - 1))
            ax.plot([0, 100], [0, 100], ls="--", c="grey", lw=1)
            ax.set(xlim=(-3, 103), ylim=(-3, 103), xlabel=f"gold {gold}", ylabel=f"judge ({mode})",
                   title=f"{metric}: {mode}")
    return fig


def mode_scatter(df: pd.DataFrame) -> plt.Figure:
    """Logprob-weighted score against the text-parsed score of the same responses."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.4), constrained_layout=True)
    for ax, metric in zip(axes, ("trait", "coherence"), strict=True):
        sns.scatterplot(data=df, x=f"{metric}_text", y=f"{metric}_logprob", ax=ax, s=36,
                        hue="level" if "level" in df else None)
        ax.plot([0, 100], [0, 100], ls="--", c="grey", lw=1)
        ax.set(xlim=(-3, 103), ylim=(-3, 103), title=metric, xlabel="text parse", ylabel="logprob mean")
    return fig


def score_distributions(df: pd.DataFrame, modes: list[str]) -> plt.Figure:
    """Histograms of judge scores per metric and mode (e.g. for unsteered baseline answers)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), constrained_layout=True)
    for ax, metric in zip(axes, ("trait", "coherence"), strict=True):
        for mode in modes:
            ax.hist(df[f"{metric}_{mode}"].dropna(), bins=np.linspace(0, 100, 21), alpha=0.55,
                    label=mode)
        ax.set(title=f"{metric} score of unsteered answers", xlabel="score", ylabel="answers")
        ax.legend()
    return fig


def steering_grid(summ: pd.DataFrame, layers: list[int], ratios: list[float]) -> plt.Figure:
    """Heatmaps of the trait effect (top: Δ from the unsteered answers, centred on 0) and the
    coherent share (bottom, %), layer × ratio, one column per model; broken cells hatched."""
    single = summ[summ.kind == "single"]
    models = list(dict.fromkeys(single.model))
    fig, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models) + 1, 6.4), squeeze=False,
                             constrained_layout=True)
    span = max(float(single.delta.abs().max()), 1.0)
    for c, model in enumerate(models):
        g = single[single.model == model].assign(coherent_pct=lambda d: 100 * d.coherent)
        rows = [x for x in layers if x in set(g.layer)]
        for r, (metric, kw) in enumerate((("delta", dict(vmin=-span, vmax=span, cmap="RdBu_r", center=0)),
                                          ("coherent_pct", dict(vmin=0, vmax=100, cmap="magma")))):
            grid = g.pivot_table(index="layer", columns="ratio", values=metric).reindex(index=rows, columns=ratios)
            sns.heatmap(grid, ax=axes[r, c], annot=True, fmt=".0f", cbar=c == len(models) - 1, **kw)
            axes[r, c].set_title(f"{model}: {'Δ trait' if r == 0 else 'coherent %'}")
    return fig


def ratio_curves(ratio_df: pd.DataFrame, sweet: tuple[float, float], broken: float) -> plt.Figure:
    """Trait effect (Δ from unsteered) and coherent share vs perturbation ratio (log axis) per
    model; learned solid, random dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for ax, metric in zip(axes, ("delta", "coherent"), strict=True):
        ax.axvspan(*sweet, color="green", alpha=0.12, label="seed sweet spot")
        ax.axvline(broken, color="red", ls=":", lw=1, label="seed: broken above")
        for (model, kind), g in ratio_df.groupby(["model", "kind"], sort=False):
            ax.plot(g.ratio, g[metric] * (100 if metric == "coherent" else 1), marker="o",
                    ls="-" if kind == "single" else "--", label=f"{model} {'learned' if kind == 'single' else 'random'}")
        ax.set_xscale("log")
        ax.set(xlabel="perturbation ratio  coef·‖v‖/‖activation‖",
               ylabel="Δ trait (judge points)" if metric == "delta" else "coherent answers (%)")
    axes[0].axhline(0, color="0.6", lw=0.8)
    axes[1].set_ylim(0, 100)
    axes[1].legend(fontsize=7, ncol=2)
    return fig


def token_trajectories(frame: pd.DataFrame, ylabel: str) -> plt.Figure:
    """One panel per layer: the mean score at each generated token, one line (95% CI band) per group."""
    layers = sorted(frame.layer.unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(4.6 * len(layers), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, layer in zip(axes.flat, layers, strict=True):
        sns.lineplot(frame[frame.layer == layer], x="step", y="score", hue="group", errorbar=("ci", 95),
                     ax=ax, legend=ax is axes.flat[0])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("generated token")
        ax.set_ylabel(ylabel)
    return fig


def token_text_html(tokens: list[str], scores: np.ndarray, title: str, vmax: float | None = None) -> str:
    """The answer as HTML with each token's background coloured by its score (red > 0 > blue);
    hovering a token shows its score."""
    import html as _html

    vmax = float(vmax if vmax is not None else max(1e-9, np.abs(scores).max() if len(scores) else 1.0))
    spans = []
    for tok, s in zip(tokens, scores, strict=True):
        a = min(1.0, abs(float(s)) / vmax)
        rgb = "220,50,47" if s > 0 else "38,139,210"
        text = _html.escape(tok).replace("\n", "↵<br>")
        spans.append(f'<span title="{float(s):+.3f}" style="background:rgba({rgb},{a:.2f})">{text}</span>')
    return (f'<div style="font-family:monospace;font-size:12px;margin:6px 0"><b>{_html.escape(title)}</b>'
            f' <span style="color:#888">(scale ±{vmax:.2f})</span><br>' + "".join(spans) + "</div>")


def trajectory_grid(frame: pd.DataFrame, ylabel: str) -> plt.Figure:
    """Rows = models, columns = layers: mean score per generated token, one line per group."""
    models = list(dict.fromkeys(frame.model))
    layers = sorted(frame.layer.unique())
    fig, axes = plt.subplots(len(models), len(layers), figsize=(3.8 * len(layers), 2.6 * len(models)),
                             squeeze=False, constrained_layout=True)
    for i, model in enumerate(models):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            d = frame[(frame.model == model) & (frame.layer == layer)]
            if len(d):
                sns.lineplot(d, x="step", y="score", hue="group", errorbar=("ci", 95), ax=ax,
                             legend=(i, j) == (0, 0))
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_title(f"{model} · L{layer}", fontsize=9)
            ax.set_xlabel("generated token" if i == len(models) - 1 else "")
            ax.set_ylabel(ylabel if j == 0 else "")
    return fig


def throughput_bars(df: pd.DataFrame, goal: float) -> plt.Figure:
    """Bare forward vs traitlab extraction throughput per batch size, ratio on top."""
    long = df.melt(id_vars=["batch_size"], value_vars=["bare tok/s", "traitlab tok/s"], var_name="",
                   value_name="tokens / s")
    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    sns.barplot(long, x="batch_size", y="tokens / s", hue="", ax=ax)
    for i, (_, r) in enumerate(df.iterrows()):
        ax.annotate(f"{r['ratio']:.2f}x", (i, max(r["bare tok/s"], r["traitlab tok/s"])), ha="center",
                    va="bottom", fontsize=9, color="green" if r["ratio"] >= goal else "red")
    ax.set(xlabel="batch size", title=f"every layer's resid_post; target ≥ {goal}x the bare forward")
    return fig


def peer_times(df: pd.DataFrame) -> plt.Figure:
    """Median seconds per task, one bar per library."""
    fig, ax = plt.subplots(figsize=(8, 3.4), constrained_layout=True)
    sns.barplot(df, x="task", y="median seconds", hue="library", ax=ax)
    ax.set(xlabel="", ylabel="median seconds (lower is better)")
    ax.legend(fontsize=8)
    return fig


def memory_bars(df: pd.DataFrame, limit: float) -> plt.Figure:
    """Peak RSS per configuration against the weights and ``limit`` × weights."""
    df = df.assign(config=df["position"] + " / " + df["mode"])
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.4), constrained_layout=True,
                             squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        g = df[df["model"] == model]
        ax.bar(g["config"], g["interpreter GiB"], color="0.75", label="interpreter + libraries")
        ax.bar(g["config"], g["peak RSS GiB"] - g["interpreter GiB"], bottom=g["interpreter GiB"],
               color="C0", label="weights + work")
        w = float(g["weights GiB"].iloc[0])
        ax.axhline(w, color="k", ls=":", lw=1, label="weights")
        ax.axhline(limit * w, color="red", ls="--", lw=1, label=f"{limit}x weights")
        ax.set(title=model, ylabel="peak RSS (GiB)")
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].legend(fontsize=7)
    return fig


def scaling_curves(by_count: pd.DataFrame, by_size: pd.DataFrame, slopes: pd.DataFrame) -> plt.Figure:
    """Time and peak memory vs prompt count and vs model size, log-log, slopes in the legend."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for ax, df, x, axis in ((axes[0], by_count, "n_prompts", "prompt count"),
                            (axes[1], by_size, "params (M)", "model size")):
        ax2 = ax.twinx()
        groups = list(df.groupby("model", sort=False)) if axis == "prompt count" else [("", df)]
        for i, (model, g) in enumerate(groups):
            s = slopes[(slopes.axis == axis) & (slopes.quantity == "seconds")]
            if axis == "prompt count":
                s = s[s.model == model]
            a = float(s.slope.iloc[0])
            ax.plot(g[x], g["seconds"], marker="o", color=f"C{i}", label=f"{model} time (slope {a:.2f})".strip())
            lx = np.log10(g[x].to_numpy(float))
            fit = np.polyfit(lx, np.log10(g["seconds"].to_numpy(float)), 1)
            ax.plot(g[x], 10 ** np.polyval(fit, lx), ls=":", color="k", lw=1)
            ax2.plot(g[x], g["peak RSS GiB"], marker="s", color=f"C{i}", ls="--", alpha=0.6)
        ax2.set_ylabel("peak RSS (GiB), dashed")
        ax.set(xscale="log", yscale="log", xlabel=x, ylabel="seconds", title=f"extraction vs {axis}")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8, loc="upper left")
    return fig


def win_vs_gap(pairs: pd.DataFrame, methods: Sequence[str] | None = None) -> plt.Figure:
    """How often each judge method orders two gold answers to one question as the labels do,
    against their gold gap (one panel per trait; points: pairs binned by gap; lines: the fitted
    ``Φ(gap / σ)`` of ``traitlab.judge_power``). A method that can see small steering effects
    rises steeply."""
    from scipy.stats import norm

    from .judge_power import fit_noise

    if methods is None:  # every method with wins, in the table's order
        methods = [c.removeprefix("win_") for c in pairs.columns if c.startswith("win_")]
    traits = list(dict.fromkeys(pairs.trait))
    fig, axes = plt.subplots(1, len(traits), figsize=(4.2 * len(traits), 3.8), squeeze=False,
                             constrained_layout=True)
    bins = np.arange(0, 101, 20)
    grid = np.linspace(0, 100, 101)
    for ax, t in zip(axes[0], traits, strict=True):
        d = pairs[pairs.trait == t]
        for m, colour in zip(methods, sns.color_palette("colorblind", len(methods)), strict=True):
            win = d[f"win_{m}"].to_numpy(float)
            b = pd.cut(d.gap, bins)
            means = pd.Series(win, index=d.index).groupby(b, observed=True).mean()
            ax.plot([iv.mid for iv in means.index], means.to_numpy(), "o", color=colour, label=m)
            sigma = fit_noise(d.gap.to_numpy(float), win)
            if np.isfinite(sigma):
                ax.plot(grid, norm.cdf(grid / sigma), "-", color=colour, lw=1.2)
        ax.axhline(0.5, ls=":", c="grey", lw=1)
        ax.set(xlim=(0, 100), ylim=(0.0, 1.02), xlabel="gold gap (points)", ylabel="share ordered right",
               title=t)
    axes[0, -1].legend(loc="lower right", frameon=False)
    return fig


def steering_strength(summary: pd.DataFrame, trait: str) -> plt.Figure:
    """Refusal log-odds shift against perturbation ratio per model (``steering_summary`` of
    base → instruct), 95% intervals over prompts: left, the direction-specific shift (+v vs −v),
    with each random direction as a × in its model's colour at the ratio it was added; right, the
    shift both signs cause alike."""
    s = summary.reset_index()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True, sharex=True)
    learned = s[s.direction == trait]
    for k, (model, g) in enumerate(learned.groupby("model", sort=False)):
        c = sns.color_palette()[k]
        for ax, col in zip(axes, ("specific", "common"), strict=True):
            ax.errorbar(g.ratio, g[col], yerr=[g[col] - g[f"{col}_lo"], g[f"{col}_hi"] - g[col]], color=c,
                        marker="o", ms=4, capsize=3, label=model)
        rnd = s[(s.model == model) & s.direction.str.startswith("random")]
        axes[0].scatter(rnd.ratio, rnd.specific, color=c, marker="x", alpha=0.6, s=18)
    for ax, title in zip(axes, (f"specific: +v vs −v ({trait}), × random", "common: what both signs do"),
                         strict=True):
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set(xlabel="perturbation ratio", ylabel="Δ refusal log-odds", title=title)
    axes[0].legend(fontsize=8)
    return fig
