"""Directions: exact maths of each method, the sign convention, and the gradient optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from traitlab.directions import METHODS, MethodError, fit_direction, lda_direction


@pytest.fixture
def blobs():
    g = torch.Generator().manual_seed(0)
    d = 12
    shift = torch.zeros(d)
    shift[:3] = torch.tensor([2.0, -1.0, 0.5])
    scale = torch.linspace(0.5, 2.0, d)
    pos = torch.randn(60, d, generator=g) * scale + shift
    neg = torch.randn(60, d, generator=g) * scale
    return pos, neg


def test_mean_diff_is_exact(blobs):
    pos, neg = blobs
    d = fit_direction("mean_diff", pos, neg)
    expected = pos.mean(0) - neg.mean(0)
    torch.testing.assert_close(d.vector, expected / expected.norm())
    assert d.raw_norm == pytest.approx(float(expected.norm()))


def test_gradient_reaches_the_shrinkage_lda_optimum(blobs):
    pos, neg = blobs
    d = fit_direction("gradient", pos, neg, shrinkage=0.1, steps=1500, lr=0.02)
    lda = lda_direction(pos, neg, shrinkage=0.1)
    cos = float(d.vector @ (lda / lda.norm()))
    assert cos > 0.999


def test_pca_diff_is_top_eigenvector_of_centred_differences(blobs):
    pos, neg = blobs
    diffs = (pos - neg).double()
    c = diffs - diffs.mean(0)
    evals, evecs = torch.linalg.eigh(c.T @ c)
    top = evecs[:, -1].float()
    d = fit_direction("pca_diff", pos, neg)
    assert abs(float(d.vector @ top)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unit_norm_and_sign_convention(blobs, method):
    pos, neg = blobs
    d = fit_direction(method, pos, neg, seed=3)
    assert float(d.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    assert (pos @ d.vector).mean() >= (neg @ d.vector).mean()
    again = fit_direction(method, pos, neg, seed=3)
    assert torch.equal(d.vector, again.vector)  # deterministic given the seed


def test_probe_is_logistic_regression_weight(blobs):
    from sklearn.linear_model import LogisticRegression

    pos, neg = blobs
    d = fit_direction("probe", pos, neg, C=10.0)
    x = torch.cat([pos, neg]).double()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    unit_rms = x / x.norm(dim=1).mean() * x.shape[1] ** 0.5
    w = LogisticRegression(C=10.0, max_iter=2000).fit(unit_rms.numpy(), y).coef_[0]
    np.testing.assert_allclose(d.vector.numpy(), w / np.linalg.norm(w), atol=1e-6)


def test_strongly_regularised_probe_tends_to_mean_diff(blobs):
    pos, neg = blobs
    md = fit_direction("mean_diff", pos, neg).vector.double()
    weak = fit_direction("probe", pos, neg, C=1e-6).vector.double()
    strong = fit_direction("probe", pos, neg, C=1e3).vector.double()
    assert float(weak @ md) > 0.9999  # C → 0: w ∝ Σ yᵢ xᵢ with balanced classes
    assert float(strong @ md) < float(weak @ md)


def test_random_ignores_data_but_not_seed(blobs):
    pos, neg = blobs
    a = fit_direction("random", pos, neg, seed=1).vector
    b = fit_direction("random", pos * 0 + 1, neg, seed=1).vector
    c = fit_direction("random", pos, neg, seed=2).vector
    assert torch.allclose(a.abs(), b.abs()) and not torch.allclose(a.abs(), c.abs())


def test_errors():
    x = torch.randn(5, 4)
    with pytest.raises(MethodError, match="unknown method 'svm'"):
        fit_direction("svm", x, x)
    with pytest.raises(MethodError, match="at least 2"):
        fit_direction("mean_diff", x[:1], x)
    with pytest.raises(MethodError, match="zero"):
        fit_direction("mean_diff", x, x)
    assert np.isfinite(fit_direction("ica", x, x + 1).raw_norm)


def test_identical_activations_are_refused_by_name_and_components_scores_them_at_chance():
    from traitlab.directions import DegenerateError
    from traitlab.metrics import evaluate

    same = torch.ones(4, 3)
    with pytest.raises(DegenerateError, match="at resid_pre@0 are the same vector"):
        fit_direction("probe", same, same.clone(), site="resid_pre@0")
    assert fit_direction("random", same, same.clone()).vector.shape == (3,)  # a null needs no data
    m = evaluate(torch.tensor([1.0, 0.0, 0.0]), same, same.clone())
    assert (m.val_accuracy, m.auroc) == (0.5, 0.5)
