"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from traitlab import uncertainty as unc
from traitlab.metrics import (
    auroc,
    cell_draws,
    cohens_d,
    cosine_scores,
    evaluate,
    midpoint_accuracy,
    resampled_metrics,
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


def test_bootstrap_mean_is_seeded_and_brackets_the_mean():
    x = np.arange(100.0)
    b = unc.bootstrap_mean(x, n_boot=500, seed=1)
    assert b.ci[0] < x.mean() < b.ci[1] and b.ci == unc.bootstrap_mean(x, n_boot=500, seed=1).ci
    assert b.se == pytest.approx(x.std(ddof=0) / 10, rel=0.15)  # the SE of a mean of 100 units
    with pytest.raises(ValueError):
        unc.bootstrap_mean([])


def test_bootstrap_resamples_units_within_strata():
    seen = []

    def stat(idx):
        seen.append({k: v.copy() for k, v in idx.items()})
        return 0.0

    unc.bootstrap(stat, {"a": 3, "b": 5}, n_boot=20, seed=0)
    assert all(len(d["a"]) == 3 and len(d["b"]) == 5 and d["a"].max() < 3 and d["b"].max() < 5 for d in seen)
    assert (seen[0]["a"] == np.arange(3)).all()  # first call: the observed data
    # the same draws for the same inputs, other draws for another seed
    again = unc.unit_draws({"a": 3, "b": 5}, 20, 0)
    assert (again["b"] == np.stack([d["b"] for d in seen[1:]])).all()
    assert not (unc.unit_draws({"a": 3, "b": 5}, 20, 1)["b"] == again["b"]).all()


def test_resampled_metrics_equal_evaluate_on_the_observed_pairs():
    g = torch.Generator().manual_seed(0)
    pos, neg, v = torch.randn(12, 6, generator=g) + 0.3, torch.randn(12, 6, generator=g), torch.randn(6, generator=g)
    m = evaluate(v, pos, neg)
    ps, ns = cosine_scores(pos, v).numpy(), cosine_scores(neg, v).numpy()
    r = resampled_metrics(ps, ns, np.arange(12)[None])
    assert r["accuracy"][0] == m.val_accuracy and r["auroc"][0] == pytest.approx(m.auroc)
    assert r["effect_size"][0] == pytest.approx(m.effect_size)
    # ties count half, as in auroc()
    t = resampled_metrics(np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([[0, 1]]))
    assert t["auroc"][0] == auroc(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.5


def test_cell_draws_share_pairs_within_a_trait():
    """Two cells of one trait with identical scores move together in every draw (a paired
    difference of 0); a cell of another trait draws its own pairs."""
    rng = np.random.default_rng(0)
    sc = (rng.normal(size=10) + 1, rng.normal(size=10))
    d = cell_draws({("t", 1): sc, ("t", 2): sc, ("u", 1): sc}, lambda k: k[0], n_boot=50)
    assert (d[("t", 1)]["accuracy"] == d[("t", 2)]["accuracy"]).all()
    assert not (d[("t", 1)]["accuracy"] == d[("u", 1)]["accuracy"]).all()
    with pytest.raises(ValueError, match="pairs must align"):
        cell_draws({("t", 1): (np.zeros(3), np.zeros(4))}, lambda k: k[0], n_boot=5)
