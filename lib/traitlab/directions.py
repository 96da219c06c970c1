"""Extraction methods: from positive and negative activations to a unit direction.

Every method is a small function ``(pos [n, d], neg [m, d], seed) -> [d]`` registered by
name in ``METHODS``. ``fit_direction`` calls one, normalises the result to unit length and
applies the sign convention: **positive = trait present**, i.e. the direction is flipped
if needed so that the *training* positives project above the training negatives. The
sign is set on training data only; polarity on held-out data is a metric, not a given.

Methods:

- ``mean_diff``: mean(pos) − mean(neg).
- ``probe``: weight vector of an L2-regularised logistic regression (scikit-learn),
  fitted on activations rescaled by one scalar so that their mean norm is sqrt(d), i.e.
  features of unit root-mean-square as after standardisation, but with the geometry kept.
  ``C`` then means what it means on standardised data. (At mean norm 1 instead, C = 1
  regularises so hard that the probe collapses onto ``mean_diff``: as C → 0 the logistic
  weight tends to Σ yᵢxᵢ, the difference of means for balanced classes.)
- ``gradient``: gradient ascent (Adam) on the Fisher criterion
  ``(μ₊ − μ₋)·v / sqrt(vᵀ(Σ_w + λI)v)``. Its optimum is known in closed form: the
  shrinkage-LDA direction ``(Σ_w + λI)⁻¹(μ₊ − μ₋)``; the test suite checks that the
  optimiser reaches it. λ = ``shrinkage`` × mean eigenvalue of Σ_w.
- ``pca_diff``: first principal component of the paired differences pos_i − neg_i.
  PCA centres its input, which subtracts the mean difference, so this finds the axis
  along which the differences *vary most*, not their mean; kept to reproduce the seed.
- ``ica``: FastICA on the pooled training activations; the component whose projections
  separate the classes best (largest |Cohen's d| on training data) is returned.
- ``random``: a seeded Gaussian direction, the null.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> pos, neg = torch.randn(40, 8, generator=g) + 1, torch.randn(40, 8, generator=g)
    >>> d = fit_direction("mean_diff", pos, neg)
    >>> round(float(d.vector.norm()), 4), d.method
    (1.0, 'mean_diff')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

MethodFn = Callable[..., torch.Tensor]
METHODS: dict[str, MethodFn] = {}


class MethodError(ValueError):
    """Unknown method or unusable training data."""


class DegenerateError(MethodError):
    """Every training activation is the same vector: the site carries nothing that could tell
    the classes apart (e.g. ``position="last"`` on a chat template reads the same template token
    for every prompt, and at ``resid_pre@0`` that token's embedding is all there is)."""


def is_degenerate(x: torch.Tensor, rtol: float = 1e-6) -> bool:
    """Whether all rows of ``x`` [n, d] are equal up to ``rtol`` of the largest entry.

    >>> is_degenerate(torch.ones(3, 2)), is_degenerate(torch.eye(2))
    (True, False)
    """
    spread = float((x - x[0]).abs().max())
    return spread <= rtol * max(float(x.abs().max()), 1e-30)


def register(name: str) -> Callable[[MethodFn], MethodFn]:
    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return deco


@dataclass(frozen=True)
class Direction:
    """A unit direction with where it came from. ``vector``: [d_model]."""

    vector: torch.Tensor = field(repr=False)
    method: str
    site: str | None = None
    model: str | None = None
    trait: str | None = None
    seed: int = 0
    raw_norm: float = float("nan")  # norm before normalisation (method-dependent scale)
    # Optional provenance for saved artifacts (``traitlab.vectors``); kept out of the repr.
    fingerprint: str | None = field(default=None, repr=False, compare=False)  # LoadedModel.fingerprint
    params: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # fit options

    def __mul__(self, k: float) -> torch.Tensor:
        return self.vector * k

    __rmul__ = __mul__

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Scalar projections x·v of rows of ``x`` [n, d] → [n]."""
        return x.float() @ self.vector


@register("mean_diff")
def mean_diff(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, **_: Any) -> torch.Tensor:
    return pos.mean(0) - neg.mean(0)


@register("probe")
def probe(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, C: float = 1.0,
          max_iter: int = 2000, **_: Any) -> torch.Tensor:
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).double()
    scale = x.norm(dim=1).mean().clamp_min(1e-12) / x.shape[1] ** 0.5
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit((x / scale).numpy(), y)
    return torch.from_numpy(clf.coef_[0]).float()


def _within_cov(pos: torch.Tensor, neg: torch.Tensor, shrinkage: float) -> torch.Tensor:
    pc, nc = pos - pos.mean(0), neg - neg.mean(0)
    sw = (pc.T @ pc + nc.T @ nc) / (len(pos) + len(neg) - 2)
    lam = shrinkage * torch.diagonal(sw).mean()
    return sw + lam * torch.eye(sw.shape[0], dtype=sw.dtype)


def lda_direction(pos: torch.Tensor, neg: torch.Tensor, shrinkage: float = 0.1) -> torch.Tensor:
    """Closed-form optimum of the ``gradient`` objective: (Σ_w + λI)⁻¹(μ₊ − μ₋)."""
    p, n = pos.double(), neg.double()
    return torch.linalg.solve(_within_cov(p, n, shrinkage), p.mean(0) - n.mean(0)).float()


@register("gradient")
def gradient(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, shrinkage: float = 0.1,
             steps: int = 500, lr: float = 0.05, **_: Any) -> torch.Tensor:
    # Adam on f(v) = a / sqrt(b), a = δ·v, b = vᵀ(Σ_w + λI)v, with the analytic gradient
    # ∇f = δ / sqrt(b) − a (Σ_w + λI) v / b^{3/2}. Σ_w v is computed as Xcᵀ(Xc v) / (n − 2),
    # which costs O(n·d) per step instead of O(d²).
    p, n = pos.double().numpy(), neg.double().numpy()
    delta = p.mean(0) - n.mean(0)
    xc = np.concatenate([p - p.mean(0), n - n.mean(0)])
    dof = len(xc) - 2
    lam = shrinkage * float((xc**2).sum() / dof / xc.shape[1])
    rng = np.random.default_rng(seed)
    v = delta / np.linalg.norm(delta) + 0.01 * rng.standard_normal(delta.shape)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        cv = xc.T @ (xc @ v) / dof + lam * v
        a, b = delta @ v, v @ cv
        grad = -(delta / np.sqrt(b) - a * cv / b**1.5)  # minimise −f
        m1 = b1 * m1 + (1 - b1) * grad
        m2 = b2 * m2 + (1 - b2) * grad**2
        v = v - lr * (m1 / (1 - b1**t)) / (np.sqrt(m2 / (1 - b2**t)) + eps)
    return torch.from_numpy(v).float()


@register("pca_diff")
def pca_diff(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, **_: Any) -> torch.Tensor:
    from sklearn.decomposition import PCA

    if len(pos) != len(neg):
        raise MethodError("pca_diff needs paired data: as many positives as negatives")
    diffs = (pos - neg).double().numpy()
    return torch.from_numpy(PCA(n_components=1, random_state=seed).fit(diffs).components_[0]).float()


@register("ica")
def ica(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, n_components: int = 10,
        max_iter: int = 400, **_: Any) -> torch.Tensor:
    import warnings

    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    x = torch.cat([pos, neg]).double().numpy()
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FastICA(n_components=k, random_state=seed, max_iter=max_iter, whiten="unit-variance")
        model.fit(x)
    w = torch.from_numpy(model.components_).float()  # [k, d] unmixing rows
    pp, nn_ = pos.float() @ w.T, neg.float() @ w.T
    pooled = torch.sqrt((pp.var(0) + nn_.var(0)) / 2).clamp_min(1e-12)
    d = (pp.mean(0) - nn_.mean(0)).abs() / pooled
    return w[int(d.argmax())]


def random_unit(d: int, seed: int) -> torch.Tensor:
    """A seeded random unit vector of width ``d``: the random-direction control of the steering
    reports (the same draw as ``fit_direction("random", ..., seed=seed)``, without activations).

    >>> v = random_unit(8, 0)
    >>> round(float(v.norm()), 6), bool((v == random_unit(8, 0)).all())
    (1.0, True)
    """
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@register("random")
def random(pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0, **_: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(pos.shape[1], generator=g)


def fit_direction(method: str, pos: torch.Tensor, neg: torch.Tensor, *, seed: int = 0,
                  site: str | None = None, model: str | None = None, trait: str | None = None,
                  log: bool = True, **options: Any) -> Direction:
    """Fit ``method`` on training activations and return a signed unit ``Direction``.

    ``options`` go to the method (e.g. ``C`` for probe, ``shrinkage`` for gradient). ``log=False``
    keeps a throwaway fit (a shuffled-label null) out of ``fitted()``.
    """
    if method not in METHODS:
        raise MethodError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if len(pos) < 2 or len(neg) < 2:
        raise MethodError(f"need at least 2 positive and 2 negative examples, got {len(pos)} and {len(neg)}")
    pos, neg = pos.float(), neg.float()
    if method != "random" and is_degenerate(torch.cat([pos, neg])):
        where = f" at {site}" if site else ""
        raise DegenerateError(
            f"all {len(pos) + len(neg)} training activations{where} are the same vector, so no "
            f"direction separates the classes there (position 'last' on a chat template reads one "
            f"template token for every prompt); choose a later layer or another position")
    raw = METHODS[method](pos, neg, seed=seed, **options)
    norm = float(raw.norm())
    if not np.isfinite(norm) or norm == 0:
        raise MethodError(f"{method} returned a zero or non-finite vector")
    v = raw / norm
    if (pos @ v).mean() < (neg @ v).mean():
        v = -v
    d = Direction(v, method, site, model, trait, seed, norm, params=dict(options))
    if log and method not in UNLOGGED_METHODS:
        _FITTED[(trait, method, site, seed)] = d
    return d


UNLOGGED_METHODS = frozenset({"random"})
"""Methods whose directions ``fitted()`` does not keep: a seeded random direction is its seed."""
_FITTED: dict[tuple, Direction] = {}


def fitted(*, clear: bool = False) -> list[Direction]:
    """Every direction ``fit_direction`` returned in this process (newest per trait, method, site
    and seed; ``random`` excluded), in fitting order: what a report hands to
    ``traitlab.vectors.publish_vectors`` so that it writes the vectors it used.

    >>> _ = fitted(clear=True)
    >>> g = torch.Generator().manual_seed(0)
    >>> _ = fit_direction("mean_diff", torch.randn(4, 3, generator=g) + 1, torch.randn(4, 3, generator=g),
    ...                   site="resid_post@1", trait="demo")
    >>> [(d.trait, d.method, d.site) for d in fitted(clear=True)]
    [('demo', 'mean_diff', 'resid_post@1')]
    """
    out = list(_FITTED.values())
    if clear:
        _FITTED.clear()
    return out
