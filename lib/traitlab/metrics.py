"""Held-out metrics of a direction, and bootstrap confidence intervals.

Given held-out positive and negative activations and a unit direction v:

- **score** of an activation x is its cosine with v: x·v / ‖x‖;
- **val_accuracy**: predict "trait present" when the score exceeds the midpoint of the
  two class means of the scores; accuracy over both classes. A direction whose polarity
  is wrong on held-out data scores below 50%.
- **polarity_correct**: mean positive score > mean negative score;
- **effect_size**: Cohen's d of the scores, (μ₊ − μ₋) / pooled sd (signed);
- **auroc**: area under the ROC curve of the scores (0.5 = chance).

Example:
    >>> import torch
    >>> pos, neg = torch.tensor([[2., 0], [3, 1]]), torch.tensor([[0., 2], [1, 3]])
    >>> m = evaluate(torch.tensor([1., 0]), pos, neg)
    >>> m.val_accuracy, m.polarity_correct, m.auroc
    (1.0, True, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Metrics:
    val_accuracy: float
    polarity_correct: bool
    effect_size: float
    auroc: float

    def asdict(self) -> dict[str, float | bool]:
        return asdict(self)


def cosine_scores(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``x`` [n, d] with ``v`` [d] → [n]."""
    x = x.double()
    v = v.double()
    return (x @ v) / (x.norm(dim=1).clamp_min(1e-12) * v.norm().clamp_min(1e-12))


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """(mean(a) − mean(b)) / pooled standard deviation (ddof=1)."""
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0


def auroc(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    p = np.asarray(pos_scores)[:, None]
    n = np.asarray(neg_scores)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def midpoint_accuracy(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    thr = (pos_scores.mean() + neg_scores.mean()) / 2
    correct = (pos_scores > thr).sum() + (neg_scores <= thr).sum()
    return float(correct / (len(pos_scores) + len(neg_scores)))


def evaluate(v: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Metrics:
    """All metrics of direction ``v`` on held-out ``pos`` [n, d] and ``neg`` [m, d]."""
    ps = cosine_scores(pos, v).numpy()
    ns = cosine_scores(neg, v).numpy()
    return Metrics(
        val_accuracy=midpoint_accuracy(ps, ns),
        polarity_correct=bool(ps.mean() > ns.mean()),
        effect_size=cohens_d(ps, ns),
        auroc=auroc(ps, ns),
    )


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0, stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` over ``values`` (resampled with replacement)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    draws = np.array([stat(x[rng.integers(0, x.size, x.size)]) for _ in range(n_boot)])
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def auroc_se(a: float, n_pos: int, n_neg: int) -> float:
    """Hanley–McNeil standard error of an AUROC ``a`` over ``n_pos`` × ``n_neg`` items, floored at one
    pair flipping (``1 / (n_pos · n_neg)``) so that a perfect AUROC of a small sample never gets a
    tolerance of 0.

    >>> round(auroc_se(0.5, 16, 16), 4)
    0.1036
    >>> auroc_se(1.0, 3, 3) == 1 / 9
    True
    """
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return max(float(np.sqrt(max(var, 0.0))), 1 / (n_pos * n_neg))
