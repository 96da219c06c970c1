"""Metrics vs steering: exact deltas, correlations and best layers on hand-made cells; errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from traitlab.experiments import metrics_vs_steering as mvs
from traitlab.params import ParamError, validate


def _judged():
    rows = [{"trait": "optimism", "layer": -1, "method": "baseline", "question": f"q{i}", "answer": "a",
             "score": s} for i, s in enumerate([40.0, 60.0])]
    for layer, scores in ((4, [70.0, 80.0]), (8, [50.0, np.nan]), (12, [30.0, 40.0])):
        rows += [{"trait": "optimism", "layer": layer, "method": "probe", "question": f"q{i}", "answer": "a",
                  "score": s} for i, s in enumerate(scores)]
    return pd.DataFrame(rows)


def _metrics():
    return pd.DataFrame({"trait": ["optimism"] * 3, "layer": [4, 8, 12], "method": ["probe"] * 3,
                         "val_accuracy": [0.8, 0.9, 0.95], "effect_size": [3.0, 1.0, 0.5],
                         "auroc": [0.9, 0.95, 0.99], "polarity_correct": [True] * 3})


def test_deltas_correlations_and_best_layers_are_exact():
    cells = mvs.deltas(_metrics(), _judged())
    # paired by question: layer 8 scored only q0 (50 vs its baseline 40), so its delta is +10
    assert cells.set_index("layer").delta.to_dict() == {4: 25.0, 8: 10.0, 12: -15.0}
    corr = mvs.correlations(cells, _judged(), mvs.Params(n_boot=50))
    assert corr.loc["effect_size", "pearson_r"] == pytest.approx(np.corrcoef([3, 1, 0.5], [25, 10, -15])[0, 1])
    assert corr.loc["val_accuracy", "spearman_rho"] == pytest.approx(-1.0)
    best = mvs.best_layers(cells)
    r = best.loc[("optimism", "probe")]
    assert r.best_extraction_layer == 12 and r.best_steering_layer == 4 and not r.same
    lines = mvs.conclusions(corr, best, cells)
    assert "holds here (r +0.89 vs -0.94)" in lines[1] and "1/1" in lines[2]
    # an effect-size r whose CI reaches 0 does not support the claim, whatever accuracy's r is
    weak = corr.copy()
    weak.loc["effect_size", ["pearson_r", "r_ci95"]] = [0.05, "[-0.77, 0.71]"]
    weak.loc["val_accuracy", "pearson_r"] = -0.05
    assert "is not supported" in mvs.conclusions(weak, best, cells)[1]
    assert "optimism L12 probe 95% Δ-15.0" in lines[3]


def test_cells_grid():
    p = mvs.Params(traits=["optimism", "humor"], layers=[1, 2], methods=["probe", "mean_diff"])
    assert len(p.cells()) == 8 and p.cells()[0] == ("optimism", 1, "probe")


@pytest.mark.parametrize("kw, msg", [
    ({"traits": ["whimsy"]}, "no judge description"),
    ({"methods": ["svm"]}, "unknown methods"),
    ({"ratio": 0.0}, "ratio"),
    ({"n_questions": 1}, "n_questions"),
    ({"site": "v"}, "site must be"),
])
def test_metrics_vs_steering_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(mvs.Params, kw)


def _cells(n_layers=6, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for trait in ("optimism", "formality"):
        for layer in range(n_layers):
            es = 0.5 + layer / 2
            rows.append({"trait": trait, "layer": layer, "method": "probe", "val_accuracy": 0.95 - 0.01 * layer,
                         "effect_size": es, "auroc": 0.9, "delta": 10 * es + noise * rng.normal()})
    return pd.DataFrame(rows)


def _judged_for(cells, n_q=8, spread=3.0, seed=1):
    """Per-question scores whose paired mean per cell is exactly the cell's delta."""
    rng = np.random.default_rng(seed)
    rows = []
    for trait in cells.trait.unique():
        base = 50 + 5 * rng.normal(size=n_q)
        rows += [{"trait": trait, "layer": -1, "method": "baseline", "question": f"{trait}{i}", "score": b}
                 for i, b in enumerate(base)]
        for c in cells[cells.trait == trait].itertuples():
            e = spread * rng.normal(size=n_q)
            rows += [{"trait": trait, "layer": c.layer, "method": c.method, "question": f"{trait}{i}",
                      "score": b + c.delta + x} for i, (b, x) in enumerate(zip(base, e - e.mean(), strict=True))]
    return pd.DataFrame(rows)


def test_deltas_are_paired_by_question_within_trait():
    cells = _cells()
    judged = _judged_for(cells)
    got = mvs.deltas(cells.drop(columns="delta"), judged)
    assert np.allclose(got.delta, cells.delta) and np.allclose(got.steered - got.baseline, got.delta)
    assert (got.delta_se > 0).all()


def test_correlation_ci_resamples_questions_not_cells():
    """Cells measured on many questions with little per-question noise: a tight CI, although only
    12 cells; the same cells on noisy questions: a wider CI around the same r."""
    cells = _cells()
    P = mvs.Params(traits=["optimism", "formality"], layers=list(range(6)), methods=["probe"], n_boot=300)
    tight = mvs.correlations(cells, _judged_for(cells, spread=0.5), P).loc["effect_size"]
    wide = mvs.correlations(cells, _judged_for(cells, spread=30.0), P).loc["effect_size"]
    assert tight.pearson_r == pytest.approx(wide.pearson_r)
    (tl, th), (wl, wh) = (tuple(map(float, x.strip("[]").split(","))) for x in (tight.r_ci95, wide.r_ci95))
    assert th - tl < 0.01 < wh - wl


def test_record_quantities_claims_and_golden_check():
    from traitlab import records

    P = mvs.Params(traits=["optimism", "formality"], layers=list(range(6)), methods=["probe"], n_boot=200)
    cells = _cells()
    judged = _judged_for(cells)
    corr, best = mvs.correlations(cells, judged, P), mvs.best_layers(cells)
    rec = mvs.record(P, cells, corr, best, judged)
    assert rec["n_cells"].value == 12 and rec["n_cells"].tolerance == 0
    r = rec["effect_size_r"]
    assert r.value == pytest.approx(corr.loc["effect_size", "pearson_r"])
    assert r.tolerance == pytest.approx(max(3 * (1 - r.value ** 2) / 3, 3e-3))  # 3 × (1 − r²)/√(12 − 3)
    assert rec["best_layer_differs"].value == 1.0 and rec["best_layer_differs"].tolerance == pytest.approx(0.5)
    v = {c.id: c.verdict for c in rec.claims}
    assert v == {"effect_size_predicts": "holds", "effect_size_beats_accuracy": "holds",
                 "best_layers_differ": "holds", "late_layer_trap": "inconclusive"}
    # the delta unrelated to any metric, 12 cells: power for the seed's r = 0.898, so not held
    flat = _cells(noise=0.0).assign(delta=lambda d: np.where(d.layer % 2 == 0, 1.0, -1.0) * (1 + d.layer % 3))
    jflat = _judged_for(flat)
    rec2 = mvs.record(P, flat, mvs.correlations(flat, jflat, P), mvs.best_layers(flat), jflat)
    assert {c.id: c.verdict for c in rec2.claims}["effect_size_predicts"] == "not held"
    assert records.compare(rec, rec) == []
    problems = records.compare(rec, rec2)
    assert any(p.startswith("metrics_vs_steering.effect_size_r:") for p in problems)
    assert not any(p.startswith("metrics_vs_steering.mean_val_accuracy:") for p in problems)
