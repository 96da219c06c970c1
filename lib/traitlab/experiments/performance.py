"""Performance report: reads the benchmark results under ``reports/benchmarks/``.

The benchmarks (``benchmarks/*.py``, ``make bench``) run the compared things side by side
and write one JSON file each: figures, every ratio next to its target, and the machine,
versions and commit they ran on. This module turns them into tables and figures; it does
no timing itself, so the report re-renders identically from the committed results.

Example:
    >>> from traitlab.experiments.performance import loglog_slope
    >>> round(loglog_slope([100, 1000, 10000], [1.0, 10.0, 100.0])[0], 6)
    1.0
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import read_json
from ..params import ParamError
from ..paths import PROJECT_ROOT

COMMANDS = {
    "extraction_throughput": "python benchmarks/extraction_throughput.py",
    "peers": "python benchmarks/peers.py",
    "refusal_sweep": "python benchmarks/refusal_sweep.py",
    "memory": "python benchmarks/memory.py",
    "scaling": "python benchmarks/scaling.py",
    "steered_eval": "python benchmarks/steered_eval.py",
    "decode_floor": "python benchmarks/decode_floor.py",
    "prefill_groups": "python benchmarks/prefill_groups.py",
}
"""How to (re)produce each result file (all of them: ``make bench``)."""
BENCHMARKS = tuple(COMMANDS)


@dataclass(frozen=True)
class Params:
    results_dir: str = "reports/benchmarks"
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))

    def __post_init__(self) -> None:
        bad = [b for b in self.benchmarks if b not in BENCHMARKS]
        if bad or not self.benchmarks:
            raise ParamError(f"unknown benchmarks {bad}; choose from {', '.join(BENCHMARKS)}")

    @property
    def folder(self) -> Path:
        p = Path(self.results_dir)
        return p if p.is_absolute() else PROJECT_ROOT / p

    def check(self) -> None:
        """Every requested result file exists (else: which command makes it)."""
        missing = [b for b in self.benchmarks if not (self.folder / f"{b}.json").exists()]
        if missing:
            how = "; ".join(f"{b}: `{COMMANDS[b]}`" for b in missing)
            raise ParamError(f"no results for {', '.join(missing)} in {self.folder}. Run {how} "
                             f"(or `make bench` for all), or point results_dir at a folder that has them")


def load(p: Params) -> dict[str, dict[str, Any]]:
    """The result files, by benchmark name."""
    p.check()
    return {b: read_json(p.folder / f"{b}.json") for b in p.benchmarks}


def runs(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per result file: when, on what, at which commit."""
    rows = [{"benchmark": b, "date": r["date"], "git_commit": r["git_commit"][:12],
             "cpu": r["machine"]["cpu"], "torch_threads": r["machine"]["torch_threads"],
             "torch": r["versions"].get("torch"), "transformers": r["versions"].get("transformers"),
             "nnsight": r["versions"].get("nnsight")} for b, r in results.items()]
    return pd.DataFrame(rows)


def _targets(obj: Any, path: str) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        if {"value", "target", "met"} <= obj.keys():
            yield {"figure": path, "value": obj["value"], "target": obj["target"], "met": obj["met"]}
            return
        for k, v in obj.items():
            yield from _targets(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            label = None
            if isinstance(v, dict):
                keys = [k for k in ("model", "batch_size", "position", "stream") if k in v]
                label = ",".join(f"{k}={v[k]}" for k in keys) or None
            yield from _targets(v, f"{path}[{label or i}]")


def targets(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Every measured ratio with a target: benchmark, figure, value, target, met."""
    rows = [{"benchmark": b, **t} for b, r in results.items() for t in _targets(r["figures"], "")]
    return pd.DataFrame(rows, columns=["benchmark", "figure", "value", "target", "met"])


def loglog_slope(x: Any, y: Any) -> tuple[float, float]:
    """Least-squares slope and intercept of log10(y) on log10(x): y ≈ 10^b · x^a."""
    lx, ly = np.log10(np.asarray(x, float)), np.log10(np.asarray(y, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise ValueError("a slope needs at least two distinct x values")
    a, b = np.polyfit(lx, ly, 1)
    return float(a), float(b)


def extraction_frame(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = results["extraction_throughput"]["figures"]["runs"]
    return pd.DataFrame([{"batch_size": r["batch_size"], "bare tok/s": r["bare_tokens_per_s"],
                          "traitlab tok/s": r["traitlab_tokens_per_s"], "ratio": r["ratio"]["value"],
                          "target": r["ratio"]["target"], "met": r["ratio"]["met"]} for r in rows])


def peers_frame(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Median seconds per task and library."""
    med = results["peers"]["figures"]["median_seconds"]
    rows = [("train vector", "traitlab", "train_traitlab"),
            ("train vector", "steering-vectors", "train_steering_vectors"),
            ("train vector", "repeng", "train_repeng"),
            ("generate, unsteered", "traitlab", "generate_plain_traitlab"),
            ("generate, unsteered", "peers (transformers 4)", "generate_plain"),
            ("generate, steered", "traitlab", "generate_traitlab"),
            ("generate, steered", "steering-vectors", "generate_steering_vectors"),
            ("generate, steered", "repeng", "generate_repeng")]
    return pd.DataFrame([{"task": t, "library": lib, "median seconds": med[k]} for t, lib, k in rows])


def memory_frame(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    gib = 2 ** 30
    rows = results["memory"]["figures"]["runs"]
    return pd.DataFrame([{
        "model": r["model"], "position": r["position"], "mode": "stream" if r["stream"] else "memory",
        "seconds": r["seconds"], "weights GiB": r["weight_bytes"] / gib,
        "activations GiB": r["activation_bytes"] / gib, "peak RSS GiB": r["peak_rss_bytes"] / gib,
        "interpreter GiB": r["baseline_rss_bytes"] / gib, "peak / weights": r["peak_over_weights"],
        "(peak - interpreter) / weights": r["peak_above_baseline_over_weights"],
        "met (<= 1.5x)": r["target"]["met"]} for r in rows])


def scaling_frames(results: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(by prompt count, by model size, fitted slopes)."""
    f = results["scaling"]["figures"]
    gib = 2 ** 30

    def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
        return pd.DataFrame([{"model": r["model"], "params (M)": r["params"] / 1e6, "n_prompts": r["n_prompts"],
                              "tokens": r["tokens"], "seconds": r["seconds"], "tokens/s": r["tokens_per_s"],
                              "peak RSS GiB": r["peak_rss_bytes"] / gib,
                              "activations GiB": r["activation_bytes"] / gib} for r in rows])

    by_count, by_size = frame(f["by_count"]), frame(f["by_size"])
    slopes = []
    for model, g in by_count.groupby("model"):
        for y in ("seconds", "peak RSS GiB"):
            a, _ = loglog_slope(g["n_prompts"], g[y])
            slopes.append({"axis": "prompt count", "model": model, "quantity": y, "slope": a,
                           "points": len(g)})
    for y in ("seconds", "peak RSS GiB"):
        a, _ = loglog_slope(by_size["params (M)"], by_size[y])
        slopes.append({"axis": "model size", "model": f"n={f['size_n']}", "quantity": y, "slope": a,
                       "points": len(by_size)})
    return by_count, by_size, pd.DataFrame(slopes)


# ---- result record --------------------------------------------------------------------------

NO_REPEAT_REL = 0.10
"""Relative tolerance of a ratio measured once (no repeats in its result file): 10%, the order of
the run-to-run spread of the repeated timings in ``extraction_throughput`` and ``peers``."""

_PEER_RATIOS = {"train_speedup_vs_repeng": ("train_repeng", "train_traitlab"),
                "train_speedup_vs_steering_vectors": ("train_steering_vectors", "train_traitlab"),
                "steered_over_unsteered_traitlab": ("generate_traitlab", "generate_plain_traitlab")}


def rows_line(head: str, fig: dict[str, Any], tokens: str, same: str) -> str:
    """One line for a rows-per-step figure (``benchmarks/common.rows_speedup``): ``head``, then the
    large-rows side's speed-up over the small one, the throughput of each (``tokens`` tokens/s) and
    the share of identical ``same``.

    >>> fig = {"large_rows": 256, "small_rows": 64, "speedup": {"value": 1.39, "target": ">= 1.2"},
    ...        "tokens_per_second": {"old": 50.0, "new": 69.5}, "identical_share": {"value": 1.0}}
    >>> rows_line("rows decoded together", fig, "steered", "texts")
    'rows decoded together: 256 rows 1.39x faster than 64 (target >= 1.2; 50.0 -> 69.5 steered tokens/s), identical texts 100%'
    """
    return (f"{head}: {fig['large_rows']} rows {fig['speedup']['value']:.2f}x faster than {fig['small_rows']} "
            f"(target {fig['speedup']['target']}; {fig['tokens_per_second']['old']:.1f} -> "
            f"{fig['tokens_per_second']['new']:.1f} {tokens} tokens/s), identical {same} "
            f"{fig['identical_share']['value']:.0%}")


def _timings(benchmark: str, figure: str, name: str, fig: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """The repeated timings behind a ratio figure (numerator seconds, denominator seconds), or
    None for a figure that is not such a ratio."""
    if benchmark == "extraction_throughput":
        # ratio = traitlab tok/s / bare tok/s = bare seconds / traitlab seconds
        run = next(r for r in fig["runs"] if r["batch_size"] == int(name.rsplit("bs", 1)[1]))
        return run["bare_seconds"], run["traitlab_seconds"]
    if benchmark == "peers" and figure in _PEER_RATIOS:
        num, den = _PEER_RATIOS[figure]
        return fig["seconds"][num], fig["seconds"][den]
    if benchmark == "decode_floor" and figure == "overhead":  # traitlab over bare transformers
        return fig["seconds"]["traitlab"], fig["seconds"]["bare"]
    if benchmark == "decode_floor" and figure == "row_dropping_speedup":  # every row to the end / dropped
        return fig["seconds"]["traitlab"], fig["seconds"]["row_dropping"]
    if figure.endswith(".speedup"):  # a part's old path over its new one (steered_eval, decode_floor rows)
        sec = fig[figure.split(".")[0]]["seconds"]
        return sec["old"], sec["new"]
    return None


def _log_median_se(xs: list[float]) -> float:
    """SE of log(median) of repeated timings: 1.2533 · (1.4826 · MAD) / (√n · median) (robust to one
    slow outlier run)."""
    x = np.asarray(xs, float)
    med = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    return 1.2533 * mad / (np.sqrt(len(x)) * med)


def _ratio_se(value: float, num: list[float], den: list[float]) -> float:
    return float(value * np.hypot(_log_median_se(num), _log_median_se(den)))


def _bound(target: str) -> float:
    return float(target.split()[-1])


def _name(benchmark: str, figure: str) -> str:
    if benchmark == "extraction_throughput":
        return "extraction.ratio.bs" + figure.split("batch_size=")[1].split("]")[0]
    if benchmark == "memory":
        kv = dict(x.split("=") for x in figure[figure.index("[") + 1:figure.index("]")].split(","))
        model = "".join(c if c.isalnum() else "_" for c in kv["model"])
        return f"memory.{model}.{kv['position']}.{'stream' if kv['stream'] == 'True' else 'in_memory'}"
    return f"{benchmark}.{figure}"


def record(P: Params, results: dict[str, dict[str, Any]]):
    """The report's result record: every benchmark ratio with a target, and one claim per target.

    The record is exact given the committed result files; its tolerances say how far a *re-run*
    benchmark may move before the golden check calls it a change:

    - timing ratios with repeats (``extraction.ratio.bs<b>``, ``peers.train_speedup_*``,
      ``peers.steered_over_unsteered_traitlab``, ``steered_eval.judge.speedup``,
      ``steered_eval.grid.speedup``, ``steered_eval.grid_rows.speedup``, ``decode_floor.overhead``,
      ``decode_floor.row_dropping_speedup``, ``decode_floor.batch_rows.speedup``,
      ``prefill_groups.prefill.speedup``, ``prefill_groups.generation.speedup``;
      ``_timings``): a ratio of medians, SE from the repeats' spread
      (robust SE of each log median, combined), k = 2 (``estimate``);
    - ratios measured once (``refusal_sweep.speedup``, ``memory.*`` peak RSS / weights): no spread
      recorded, so ``NO_REPEAT_REL`` (10%) of the value, stated as such;
    - parity errors (``peers.logit_parity``, ``refusal_sweep.max_abs_score_diff``): float noise up
      to the target itself (a change that stays under the target is not a regression).

    A target met: "holds". Missed: "not held" when the miss is larger than the tolerance (the
    benchmark could have seen a pass), else "inconclusive".
    """
    from .. import records

    qs, claims = [], []
    for t in targets(results).itertuples():
        name = _name(t.benchmark, t.figure)
        fig = results[t.benchmark]["figures"]
        bound = _bound(t.target)
        timed = _timings(t.benchmark, t.figure, name, fig)
        if timed is not None:  # a ratio of medians of alternating rounds: SE from their spread
            num, den = timed
            q = records.estimate(name, t.value, se=_ratio_se(t.value, num, den), n=len(num), k=2)
        elif "parity" in t.figure or "diff" in t.figure:
            q = records.Quantity(name, t.value, "max |Δ|", None, None, bound,
                                 f"up to its target ({t.target}): float noise under the target is no change")
        else:
            q = records.Quantity(name, t.value, "ratio", 1, None, NO_REPEAT_REL * abs(t.value),
                                 f"{NO_REPEAT_REL:.0%} of the value (measured once, no repeat spread recorded)")
        qs.append(q)
        verdict, why = records.decide(holds=bool(t.met), seed_effect=abs(t.value - bound), mde=q.tolerance)
        claims.append(records.Claim(name.replace(".", "_"), f"{t.benchmark}: {t.figure} {t.target}", t.target,
                                    "", verdict, why, quantity=name))
    return records.ResultRecord("performance", quantities=tuple(qs), claims=tuple(claims),
                                tables={"targets": targets(results)})
