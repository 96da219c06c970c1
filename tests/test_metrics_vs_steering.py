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
    assert cells.set_index("layer").delta.to_dict() == {4: 25.0, 8: 0.0, 12: -15.0}  # NaN score skipped
    corr = mvs.correlations(cells, mvs.Params(n_boot=50))
    assert corr.loc["effect_size", "pearson_r"] == pytest.approx(np.corrcoef([3, 1, 0.5], [25, 0, -15])[0, 1])
    assert corr.loc["val_accuracy", "spearman_rho"] == pytest.approx(-1.0)
    best = mvs.best_layers(cells)
    r = best.loc[("optimism", "probe")]
    assert r.best_extraction_layer == 12 and r.best_steering_layer == 4 and not r.same
    lines = mvs.conclusions(corr, best, cells)
    assert "holds here (r +0.98 vs -1.00)" in lines[1] and "1/1" in lines[2]
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
