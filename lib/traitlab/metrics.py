"""Held-out metrics of a direction, and their bootstrap draws over held-out pairs.

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

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


def heldout_scores(v: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of held-out ``pos`` and ``neg`` with ``v`` (row i of each: pair i), the data
    ``evaluate`` summarises and ``cell_draws`` resamples."""
    return cosine_scores(pos, v).numpy(), cosine_scores(neg, v).numpy()


RESAMPLED = ("accuracy", "effect_size", "auroc")


def resampled_metrics(ps: np.ndarray, ns: np.ndarray, idx: np.ndarray,
                      which: Sequence[str] = RESAMPLED) -> dict[str, np.ndarray]:
    """Midpoint accuracy, Cohen's d and AUROC (those named in ``which``) of paired held-out scores
    on each row of pair indices ``idx`` [n_boot, n] (``np.arange(n)[None]`` gives ``evaluate``'s
    values).

    >>> ps, ns = np.array([0.9, 0.8, 0.1]), np.array([0.2, 0.3, 0.4])
    >>> m = resampled_metrics(ps, ns, np.arange(3)[None])
    >>> float(m["accuracy"][0]) == midpoint_accuracy(ps, ns), float(m["auroc"][0]) == auroc(ps, ns)
    (True, True)
    """
    unknown = set(which) - set(RESAMPLED)
    if unknown:
        raise ValueError(f"unknown resampled metric(s) {sorted(unknown)}; choose from {RESAMPLED}")
    bp, bn = ps[idx], ns[idx]
    mp, mn = bp.mean(1), bn.mean(1)
    n = idx.shape[1]
    out = {}
    if "accuracy" in which:
        thr = (mp + mn) / 2
        out["accuracy"] = ((bp > thr[:, None]).sum(1) + (bn <= thr[:, None]).sum(1)) / (bp.shape[1] + bn.shape[1])
    if "effect_size" in which:
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = np.sqrt((bp.var(1, ddof=1) + bn.var(1, ddof=1)) / 2) if n > 1 else np.zeros(len(idx))
            out["effect_size"] = np.where(pooled > 0, (mp - mn) / np.where(pooled > 0, pooled, 1), 0.0)
    if "auroc" in which:  # Mann–Whitney U from mid-ranks (ties count half), O(n log n) per draw
        from scipy.stats import rankdata

        ranks = rankdata(np.concatenate([bp, bn], axis=1), axis=1)
        out["auroc"] = (ranks[:, :n].sum(1) - n * (n + 1) / 2) / (n * bn.shape[1])
    return out


def cell_draws(scores: Mapping[Hashable, tuple[np.ndarray, np.ndarray]], stratum: Callable[[Any], Hashable], *,
               n_boot: int = 2000, seed: int = 0, which: Sequence[str] = RESAMPLED
               ) -> dict[Hashable, dict[str, np.ndarray]]:
    """Bootstrap draws of every cell's held-out metrics, resampling held-out **pairs** within each
    stratum (``stratum(cell key)``, usually the trait): every cell of a trait is scored on the
    same resampled pairs, so means over cells and differences between methods, sites or layers
    carry the pair-level noise they share (``uncertainty.bootstrap``'s rule).

    >>> sc = {("t", 0): (np.array([1., .9, .2]), np.array([0., .1, .3]))}
    >>> d = cell_draws(sc, lambda k: k[0], n_boot=5)
    >>> sorted(d[("t", 0)]), d[("t", 0)]["accuracy"].shape
    (['accuracy', 'auroc', 'effect_size'], (5,))
    """
    from .uncertainty import unit_draws

    sizes: dict[Hashable, int] = {}
    for k, (ps, ns) in scores.items():
        if len(ps) != len(ns):
            raise ValueError(f"cell {k}: {len(ps)} positive vs {len(ns)} negative scores; pairs must align")
        n = sizes.setdefault(stratum(k), len(ps))
        if n != len(ps):
            raise ValueError(f"cell {k}: {len(ps)} pairs, other cells of {stratum(k)!r} have {n}")
    draws = unit_draws(sizes, n_boot, seed)
    return {k: resampled_metrics(ps, ns, draws[stratum(k)], which) for k, (ps, ns) in scores.items()}


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
