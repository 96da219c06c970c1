"""Small statistics shared by the result records of the judge-scored experiments.

Judge scores are on a 0–100 scale and come from generated text, so their noise across CPUs is
the noise of re-sampling the answers; these helpers turn per-item scores into ``records``
quantities whose tolerance is ``k`` standard errors over the independent unit (the question,
the gold item, the cell). (Candidates for ``traitlab.records``; kept here until the lead moves
them.)

Example:
    >>> q = score_mean("baseline_trait", [40.0, 60.0], k=3)
    >>> round(q.value, 1), round(q.tolerance, 1)   # 3 × SE 10 × t(0.975, 1)/1.96
    (50.0, 194.5)
    >>> round(mde(1.0), 2)
    2.8
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from .. import records

SCORE_SCALE = 100.0
"""Judge scores run 0–100."""
SCORE_SE_FLOOR = 0.5
"""Smallest SE used for a judge-score mean: half a point, far above the float noise of a
logprob-weighted mean (~1e-4) yet far below any effect a report discusses. It keeps the
tolerance above 0 when every answer got the same score."""
POWER_Z = records.POWER_Z


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error and count of the finite values (SE NaN below two values)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se, int(x.size)


def _score_se(se: float, n: int) -> float:
    """The SE a tolerance uses: under two values, the SD of a uniform 0–100 score over √n; else
    the sample SE (at least ``SCORE_SE_FLOOR``) inflated by t(0.975, n − 1)/1.96, because an SE
    from two or three answers is itself a guess (×6.5 at n = 2, ×1.4 at n = 5, ×1.03 at n = 40)."""
    if not math.isfinite(se):
        return SCORE_SCALE / math.sqrt(12) / math.sqrt(max(n, 1))
    return max(se, SCORE_SE_FLOOR) * float(stats.t.ppf(0.975, n - 1)) / 1.96


def score_mean(name: str, values: Sequence[float] | np.ndarray, *, k: float, unit: str = "points"
               ) -> records.Quantity:
    """Mean judge score (or paired score difference) over items; tolerance ``k`` SEs over items."""
    m, se, n = mean_se(values)
    lo, hi = interval(m, se, n)
    return records.estimate(name, m, se=_score_se(se, n), n=n, unit=unit, k=k,
                            ci=None if math.isnan(lo) else (lo, hi))


def interval(mean: float, se: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """t-interval of a mean over ``n`` items (NaN when it cannot be formed)."""
    if n < 2 or not math.isfinite(se):
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return mean - half, mean + half


def correlation_se(r: float, n: int) -> float:
    """Approximate SE of a Pearson r over ``n`` independent pairs: (1 − r²)/√(n − 3); for a NaN r,
    the SE at r = 0."""
    m = math.sqrt(max(n - 3, 1))
    return (1 - r * r) / m if math.isfinite(r) else 1 / m


def correlation(name: str, r: float, n: int, *, k: float,
                ci: tuple[float, float] | None = None) -> records.Quantity:
    """A Pearson r over ``n`` pairs; tolerance ``k`` × (1 − r²)/√(n − 3)."""
    se = max(correlation_se(r, n), 1e-3)  # r = ±1 exactly: keep a float-noise margin
    if ci is not None and not all(math.isfinite(c) for c in ci):
        ci = None
    return records.estimate(name, r, se=se, n=n, k=k, ci=ci)


def mde(se: float, n: int | None = None) -> float:
    """Minimum detectable effect at 80% power, two-sided 5%, for an estimate with SE ``se``
    (a mean over ``n`` items: t quantiles with n − 1 degrees of freedom; else normal)."""
    if not math.isfinite(se) or (n is not None and n < 2):
        return math.inf
    if n is None:
        return POWER_Z * se
    return float(stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * se


def parse_ci(text: str) -> tuple[float, float]:
    """``"[0.12, 0.80]"`` → (0.12, 0.8); NaN for ``"[nan, nan]"`` or ``"n/a"``."""
    try:
        lo, hi = (float(x) for x in str(text).strip("[] ").split(","))
    except ValueError:
        return math.nan, math.nan
    return lo, hi


def score_mde(values: Sequence[float] | np.ndarray) -> float:
    """Minimum detectable effect of a mean judge score (or paired difference) over items, from the
    same cautious SE as its tolerance (floored, inflated for few items) with t quantiles: two
    questions whose differences happen to agree do not show power."""
    _, se, n = mean_se(values)
    return mde(_score_se(se, n), n)
