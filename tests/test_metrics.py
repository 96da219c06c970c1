"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from traitlab.metrics import (
    auroc,
    bootstrap_ci,
    cohens_d,
    cosine_scores,
    evaluate,
    midpoint_accuracy,
)


def test_cohens_d_by_hand():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0])
    assert cohens_d(a, b) == pytest.approx(1.0)  # means differ by 1, pooled sd 1


def test_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    p, n = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
    p[:3] = n[:3]  # ties count half
    assert auroc(p, n) == pytest.approx(roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[p, n]))


def test_midpoint_accuracy_and_flipped_polarity():
    p, n = np.array([0.9, 0.8, 0.1]), np.array([0.0, 0.2, 0.3])
    assert midpoint_accuracy(p, n) == pytest.approx(5 / 6)  # threshold 0.3833
    assert midpoint_accuracy(n, p) == pytest.approx(1 / 6)  # wrong sign scores below chance


def test_evaluate_uses_cosine():
    v = torch.tensor([1.0, 0.0])
    pos = torch.tensor([[10.0, 1.0], [1.0, 0.0]])
    neg = torch.tensor([[0.0, 5.0], [-1.0, 1.0]])
    np.testing.assert_allclose(cosine_scores(pos, v).numpy(), [10 / np.sqrt(101), 1.0])
    m = evaluate(v, pos, neg)
    assert (m.val_accuracy, m.polarity_correct, m.auroc) == (1.0, True, 1.0)
    m = evaluate(-v, pos, neg)
    assert (m.val_accuracy, m.polarity_correct, m.auroc) == (0.0, False, 0.0)


def test_bootstrap_ci():
    x = np.arange(100.0)
    lo, hi = bootstrap_ci(x, n_boot=500, seed=1)
    assert lo < x.mean() < hi and (lo, hi) == bootstrap_ci(x, n_boot=500, seed=1)
    with pytest.raises(ValueError):
        bootstrap_ci([])
