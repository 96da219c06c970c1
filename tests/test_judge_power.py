"""Judge sensitivity: gold sets, pair wins, the noise fit and the minimum detectable effect."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from traitlab import judge_power as JP
from traitlab.data import DataError
from traitlab.uncertainty import POWER_Z


@pytest.mark.parametrize("trait", ["optimism", "uncertainty", "refusal"])
def test_shipped_gold_sets_are_graded_split_by_question_and_show_failure_shapes(trait):
    g = JP.load_gold(trait)
    assert len(g) >= 60 and set(g.split) == {"tune", "heldout"}
    assert g.groupby("question").split.nunique().max() == 1
    held = JP.load_gold(trait, "heldout")
    assert 0 < len(held) < len(g) and held.question.nunique() >= 4
    # graded: every question spans at least 40 points, so held-out pairs >= 40 apart exist
    assert (g.groupby("question").label.agg(lambda s: s.max() - s.min()) >= 40).all()
    assert (JP.gold_pairs(held).gap >= JP.MIN_PAIR_GAP).sum() >= 10
    assert {"fluent", "word_salad"} <= set(g["shape"]) and g[g["shape"] == "word_salad"].coherence.max() <= 15


def _write(tmp_path, rows):
    (tmp_path / "gold_x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


GOOD = {"id": "1", "question": "q", "response": "r", "x": 50, "coherence": 90, "shape": "fluent", "split": "tune"}


@pytest.mark.parametrize("change, message", [
    ({"x": 140}, "gold_x.jsonl:1: x must be a number in 0..100, got 140"),
    ({"coherence": "high"}, "coherence must be a number"),
    ({"shape": "mumble"}, "shape 'mumble' is not one of"),
    ({"split": "test"}, "split 'test' is not one of"),
])
def test_a_bad_gold_row_fails_naming_file_line_and_key(tmp_path, change, message):
    _write(tmp_path, [{**GOOD, **change}])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JP.load_gold("x", folder=tmp_path)


def test_a_missing_key_and_a_question_in_both_splits_fail(tmp_path):
    _write(tmp_path, [{k: v for k, v in GOOD.items() if k != "shape"}])
    with pytest.raises(DataError, match="gold_x.jsonl:1: missing key"):
        JP.load_gold("x", folder=tmp_path)
    _write(tmp_path, [GOOD, {**GOOD, "id": "2", "split": "heldout"}])
    with pytest.raises(DataError, match="in both splits"):
        JP.load_gold("x", folder=tmp_path)
    with pytest.raises(DataError, match="is missing"):
        JP.load_gold("nothing", folder=tmp_path)


def test_pairs_are_within_question_and_oriented():
    g = pd.DataFrame({"trait": ["t"] * 4, "question": ["a", "a", "a", "b"], "label": [10, 90, 50, 70]})
    p = JP.gold_pairs(g)
    assert len(p) == 3 and (p.question == "a").all()  # question b has one row: no pair
    assert all(g.label[h] > g.label[lo] for h, lo in zip(p.hi, p.lo, strict=True))
    assert sorted(p.gap) == [40, 40, 80] and len(JP.gold_pairs(g, min_gap=40)) == 1
    wins = JP.score_wins(np.array([20.0, 20.0, np.nan, 0.0]), p)
    by = dict(zip(zip(p.hi, p.lo, strict=True), wins, strict=True))
    assert by[(1, 0)] == 0.5 and np.isnan(by[(2, 0)]) and np.isnan(by[(1, 2)])  # a tie is ½, unscored NaN


def test_fit_noise_recovers_the_noise_of_a_gaussian_absolute_judge():
    """An absolute score = label + N(0, s): the pair win is Φ(Δ / (√2 s)), so σ = √2 s."""
    rng = np.random.default_rng(0)
    s = 15.0
    labels = np.tile([10.0, 30, 50, 70, 90], 400)
    scores = labels + rng.normal(0, s, labels.size)
    g = pd.DataFrame({"trait": "t", "question": np.repeat(np.arange(400), 5), "label": labels})
    p = JP.gold_pairs(g)
    sigma = JP.fit_noise(p.gap.to_numpy(), JP.score_wins(scores, p))
    assert sigma == pytest.approx(math.sqrt(2) * s, rel=0.08)


def test_mde_is_the_gap_whose_win_rate_clears_the_power_threshold():
    sigma, n = 20.0, 16
    d = JP.mde_gap(sigma, n)
    from scipy.stats import norm
    assert norm.cdf(d / sigma) - 0.5 == pytest.approx(POWER_Z * 0.5 / math.sqrt(n))
    assert JP.mde_gap(sigma, 64) < d < JP.mde_gap(sigma, 8)  # more questions, smaller effects
    assert JP.mde_gap(sigma, 1) == math.inf  # one question can never reach 80% power
    assert JP.mde_gap(math.inf, 100) == math.inf


def test_a_blind_judge_has_infinite_noise_and_a_perfect_one_small():
    gap = np.array([10.0, 40, 80, 20, 60])
    assert JP.fit_noise(gap, np.full(5, 0.5)) == math.inf
    assert JP.fit_noise(gap, np.full(5, 0.3)) == math.inf
    assert JP.fit_noise(gap, np.ones(5)) < 2.0
    assert JP.fit_noise([10.0, 40.0, 60.0], [1.0, None, 1.0]) < 2.0  # a list with a missing judgement
    assert JP.accuracy_at(gap, np.array([1, 0, 1, np.nan, 0.5])) == (0.5, 3)  # gaps 40, 80, 60
