"""Uncertainty of a report's numbers: standard errors, intervals, one bootstrap, power.

Every interval a report prints comes from here, computed over the **independent unit** of the
measurement: the question a steered answer responds to, the held-out pair a direction is
scored on, the gold item a judge is calibrated on. Cells of a grid — (trait, layer) or
(trait, layer, method) — are *not* independent units: cells of one trait share its prompts, so
resampling cells as if they were independent draws makes intervals too narrow. ``bootstrap``
resamples units (with replacement) *within strata* (each trait's own questions or pairs) and
recomputes the whole statistic, so a mean over cells, a paired difference between methods or a
correlation over cells all carry the prompt-level noise they really have. One draw indexes every
condition at once, so differences between conditions are paired.

Closed forms beside it: the mean's standard error (``mean_se``, ``se_of_mean``), its t-interval
(``t_interval``), the Wilson interval of a rate (``wilson``), the SE of a Pearson r
(``correlation_se``) and the minimum detectable effect at 80% power (``mde``). Judge scores
(0–100 from generated text) get a cautious SE (``score_se``: floored, inflated for few items).

Example: the mean accuracy over two traits' cells, resampling each trait's held-out pairs.
    >>> import numpy as np
    >>> correct = {"optimism": np.array([1, 1, 0, 1]), "formality": np.array([1, 0, 1, 1, 1])}
    >>> b = bootstrap(lambda idx: np.mean([correct[t][i].mean() for t, i in idx.items()]),
    ...               {t: len(x) for t, x in correct.items()}, n_boot=500, seed=0)
    >>> round(b.value, 3), b.ci[0] < b.value < b.ci[1], b.se > 0
    (0.775, True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

POWER_Z = 2.8
"""A minimum detectable effect is ``POWER_Z`` standard errors: 80% power for a two-sided 5% test
(1.96 + 0.84)."""

SCORE_SCALE = 100.0
"""Judge scores run 0–100."""
SCORE_SE_FLOOR = 0.5
"""Smallest SE used for a judge-score mean: half a point, far above the float noise of a
logprob-weighted mean (~1e-4) yet far below any effect a report discusses. It keeps a tolerance
above 0 when every answer got the same score."""


# ---- closed forms -----------------------------------------------------------------------------

def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error and count of the finite values (SE NaN below two values).

    >>> mean_se([1.0, 3.0, float("nan")])
    (2.0, 1.0, 2)
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se, int(x.size)


def se_of_mean(values: Any, floor: float = 0.0) -> float:
    """Standard error of a mean over independent units (std, ddof=1, / sqrt n), at least ``floor``.

    The floor keeps a tolerance above zero when every unit agrees (all cells at 100%).

    >>> se_of_mean([1.0, 1.0, 1.0], floor=0.05), round(se_of_mean([0.0, 2.0]), 3)
    (0.05, 1.0)
    """
    x = np.asarray(values, dtype=float)
    se = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0
    return max(se if np.isfinite(se) else 0.0, floor)


def t_interval(mean: float, se: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """t-interval of a mean over ``n`` items (NaN when it cannot be formed).

    >>> [round(x, 2) for x in t_interval(10.0, 1.0, 2)]
    [-2.71, 22.71]
    """
    if n < 2 or not math.isfinite(se):
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return mean - half, mean + half


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials, as fractions (NaN for n = 0).

    >>> [round(x, 3) for x in wilson(0, 10)]
    [0.0, 0.278]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def wilson_rates(df: Any, by: Sequence[str], value: str, *, sort: bool = True) -> Any:
    """Share of True in boolean column ``value`` per group of ``by``, with a Wilson 95% interval
    over the group's rows (each row an independent item): a DataFrame with the ``by`` columns,
    ``n``, ``k``, ``rate``, ``lo`` and ``hi`` (fractions).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"g": ["a", "a", "b"], "hit": [True, False, True]})
    >>> wilson_rates(df, ["g"], "hit")[["g", "n", "k", "rate"]].values.tolist()
    [['a', 2, 1, 0.5], ['b', 1, 1, 1.0]]
    """
    import pandas as pd

    rows = []
    for key, g in df.groupby(list(by), sort=sort):
        k, n = int(g[value].sum()), len(g)
        lo, hi = wilson(k, n)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                     "n": n, "k": k, "rate": k / n, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=[*by, "n", "k", "rate", "lo", "hi"])


def correlation_se(r: float, n: int) -> float:
    """Approximate SE of a Pearson r over ``n`` independent pairs: (1 − r²)/√(n − 3); for a NaN r,
    the SE at r = 0.

    >>> round(correlation_se(0.5, 28), 3)
    0.15
    """
    m = math.sqrt(max(n - 3, 1))
    return (1 - r * r) / m if math.isfinite(r) else 1 / m


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r, NaN when either side is constant (no warning).

    >>> pearson(np.array([1., 2, 3]), np.array([2., 4, 7])) > 0.99, math.isnan(pearson(np.ones(3), np.arange(3.)))
    (True, True)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def mde(se: float, n: int | None = None) -> float:
    """Minimum detectable effect at 80% power, two-sided 5%, for an estimate with SE ``se``
    (a mean over ``n`` items: t quantiles with n − 1 degrees of freedom; else ``POWER_Z`` SEs).

    >>> round(mde(1.0), 2), round(mde(1.0, 10), 2)
    (2.8, 3.15)
    """
    if not math.isfinite(se) or (n is not None and n < 2):
        return math.inf
    if n is None:
        return POWER_Z * se
    return float(stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * se


def r_mde(n: int) -> float:
    """Smallest |r| detectable at 80% power (two-sided 5%) over ``n`` independent pairs, Fisher z
    with t quantiles on n − 3 degrees of freedom (conservative for a handful of pairs).

    >>> round(r_mde(30), 2), r_mde(4)
    (0.51, inf)
    """
    if n < 5:
        return math.inf
    z = (stats.t.ppf(0.975, n - 3) + stats.t.ppf(0.8, n - 3)) / np.sqrt(n - 3)
    return float(np.tanh(z))


def score_se(se: float, n: int) -> float:
    """The SE a judge-score mean's tolerance and power use: under two values, the SD of a uniform
    0–100 score over √n; else the sample SE (at least ``SCORE_SE_FLOOR``) inflated by
    t(0.975, n − 1)/1.96, because an SE from two or three answers is itself a guess (×6.5 at
    n = 2, ×1.4 at n = 5, ×1.03 at n = 40).

    >>> round(score_se(float("nan"), 1), 1), round(score_se(0.1, 40), 3)
    (28.9, 0.516)
    """
    if not math.isfinite(se):
        return SCORE_SCALE / math.sqrt(12) / math.sqrt(max(n, 1))
    return max(se, SCORE_SE_FLOOR) * float(stats.t.ppf(0.975, n - 1)) / 1.96


def score_mde(values: Sequence[float] | np.ndarray) -> float:
    """Minimum detectable effect of a mean judge score (or paired difference) over items, from the
    same cautious SE as its tolerance (``score_se``) with t quantiles: two questions whose
    differences happen to agree do not show power.

    >>> round(score_mde([1.0, 1.0]))   # two agreeing differences: only ~46 points detectable
    46
    """
    _, se, n = mean_se(values)
    return mde(score_se(se, n), n)


# ---- the bootstrap -----------------------------------------------------------------------------

def percentile_interval(draws: Any, level: float = 0.95, axis: int | None = None) -> tuple[Any, Any]:
    """The percentile interval of bootstrap ``draws`` at ``level`` (along ``axis``: one interval
    per column of a [replicates, statistics] array), the one every interval here uses.

    >>> [round(float(x), 6) for x in percentile_interval(np.arange(101.0), 0.9)]
    [5.0, 95.0]
    """
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a], axis=axis)
    return lo, hi


@dataclass(frozen=True)
class Bootstrap:
    """A statistic on the observed data and on ``len(draws)`` resamples of its independent units.

    ``se`` is the SD of the draws; ``ci`` the percentile interval at ``level``. Draws where the
    statistic is undefined (NaN: e.g. a correlation of a constant resample) are dropped and
    counted in ``n_undefined``.
    """

    value: float
    draws: np.ndarray
    level: float = 0.95
    n_undefined: int = 0

    @property
    def se(self) -> float:
        return float(self.draws.std(ddof=1)) if self.draws.size > 1 else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        if self.draws.size < 2:
            return math.nan, math.nan
        lo, hi = percentile_interval(self.draws, self.level)
        return float(lo), float(hi)

    def share_above(self, x: float = 0.0) -> float:
        """Share of draws above ``x`` (e.g. how often a difference favours the first method)."""
        return float((self.draws > x).mean()) if self.draws.size else math.nan

    def text(self, fmt: str = ".2f") -> str:
        """``"[lo, hi]"``, the printed form of ``ci``."""
        lo, hi = self.ci
        return f"[{lo:{fmt}}, {hi:{fmt}}]"


K = Hashable


def unit_draws(sizes: Mapping[K, int] | int, n_boot: int, seed: int | Sequence[int] = 0
               ) -> dict[K, np.ndarray]:
    """Resampled unit indices: for each stratum ``k`` with ``sizes[k]`` units, an int array
    [n_boot, sizes[k]] of indices drawn with replacement (an int ``sizes`` is one stratum, key
    ``None``). Strata draw from one seeded generator in the mapping's order, so the same
    ``(sizes, n_boot, seed)`` always gives the same draws.

    >>> d = unit_draws({"a": 3, "b": 2}, n_boot=4, seed=0)
    >>> d["a"].shape, d["b"].shape, int(d["a"].max()) < 3
    ((4, 3), (4, 2), True)
    """
    if isinstance(sizes, int):
        sizes = {None: sizes}
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else seed)
    out = {}
    for k, n in sizes.items():
        if n < 1:
            raise ValueError(f"bootstrap stratum {k!r} has no units")
        out[k] = rng.integers(0, n, size=(n_boot, n))
    return out


def bootstrap(stat: Callable[[Mapping[K, np.ndarray]], float], sizes: Mapping[K, int] | int, *,
              n_boot: int = 2000, seed: int | Sequence[int] = 0, level: float = 0.95) -> Bootstrap:
    """Bootstrap ``stat`` by resampling independent units within strata.

    ``stat`` receives ``{stratum: unit indices}`` and returns a number computed from the data at
    those indices (so the caller keeps its data aligned by unit: row i of every condition is
    question i). The observed value uses every unit once (``np.arange``). With an int
    ``sizes`` the mapping has the single key ``None``.

    >>> x = np.array([1.0, 2.0, 3.0, 10.0])
    >>> b = bootstrap(lambda i: float(x[i[None]].mean()), 4, n_boot=200, seed=1)
    >>> b.value, b.ci[0] >= 1.0, b.ci[1] <= 10.0
    (4.0, True, True)
    """
    one = isinstance(sizes, int)
    strata = {None: sizes} if one else dict(sizes)
    value = float(stat({k: np.arange(n) for k, n in strata.items()}))
    draws = unit_draws(strata, n_boot, seed)
    vals = np.array([float(stat({k: d[b] for k, d in draws.items()})) for b in range(n_boot)])
    ok = np.isfinite(vals)
    return Bootstrap(value, vals[ok], level, int((~ok).sum()))


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> Bootstrap:
    """Bootstrap of the mean of independent ``values`` (one unit each).

    >>> bootstrap_mean([1.0, 2.0, 3.0], n_boot=100).value
    2.0
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    return bootstrap(lambda i: float(x[i[None]].mean()), x.size, n_boot=n_boot, seed=seed, level=level)


def bootstrap_ratio(numer: Sequence[float] | np.ndarray, denom: Sequence[float] | np.ndarray, *,
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Bootstrap:
    """Bootstrap of ``sum(numer) / sum(denom)`` resampling units (clusters): a rate pooled over
    items that cluster in units, e.g. the share of jailbreaks blocked where each request is
    answered under several wrappers (``numer[r]`` blocked of ``denom[r]`` answered for request
    ``r``). Resamples whose denominator sums to 0 are undefined (dropped and counted).

    >>> b = bootstrap_ratio([2, 0, 1], [2, 2, 1], n_boot=200)
    >>> b.value, 0.0 <= b.ci[0] <= b.ci[1] <= 1.0
    (0.6, True)
    """
    k, n = np.asarray(numer, float), np.asarray(denom, float)
    if k.shape != n.shape or k.size == 0:
        raise ValueError(f"bootstrap_ratio needs equal, non-empty numer and denom; got {k.shape} and {n.shape}")

    def stat(i: Mapping[Any, np.ndarray]) -> float:
        d = n[i[None]].sum()
        return float(k[i[None]].sum() / d) if d > 0 else math.nan

    return bootstrap(stat, k.size, n_boot=n_boot, seed=seed, level=level)


def bootstrap_difference(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                         n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Bootstrap:
    """Bootstrap of mean(x) − mean(y) for two independent groups of units (each resampled on its
    own, e.g. harmful and benign prompts).

    >>> bootstrap_difference([3.0, 5.0], [1.0, 1.0], n_boot=50).value
    3.0
    """
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.size == 0 or b.size == 0:
        raise ValueError("bootstrap_difference needs units in both groups")
    return bootstrap(lambda i: float(a[i["x"]].mean() - b[i["y"]].mean()), {"x": a.size, "y": b.size},
                     n_boot=n_boot, seed=seed, level=level)


def parse_ci(text: str) -> tuple[float, float]:
    """``"[0.12, 0.80]"`` → (0.12, 0.8); NaN for ``"[nan, nan]"`` or ``"n/a"``.

    >>> parse_ci("[0.12, 0.80]"), all(map(math.isnan, parse_ci("n/a")))
    ((0.12, 0.8), True)
    """
    try:
        lo, hi = (float(x) for x in str(text).strip("[] ").split(","))
    except ValueError:
        return math.nan, math.nan
    return lo, hi
