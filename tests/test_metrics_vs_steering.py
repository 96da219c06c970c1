"""Metrics vs steering: exact deltas, correlations and best layers on hand-made cells; errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from traitlab import textstats
from traitlab.experiments import metrics_vs_steering as mvs
from traitlab.judge_power import FloorRefits
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
    assert cells.set_index("layer").n.to_dict() == {4: 2, 8: 1, 12: 2}
    assert cells.set_index("layer").wrong_way.to_dict() == {4: False, 8: False, 12: False}  # two questions, wide
    corr = mvs.correlations(cells, _judged(), mvs.Params(traits=["optimism"], n_boot=50))
    assert list(corr.index.get_level_values("scope").unique()) == ["pooled"]  # one trait: no within-trait rows
    assert corr.loc[("pooled", "effect_size"), "pearson_r"] == pytest.approx(np.corrcoef([3, 1, 0.5], [25, 10, -15])[0, 1])
    assert corr.loc[("pooled", "val_accuracy"), "spearman_rho"] == pytest.approx(-1.0)
    best = mvs.best_layers(cells)
    r = best.loc[("optimism", "probe")]
    assert r.best_extraction_layer == 12 and r.best_steering_layer == 4 and not r.same
    weak = corr.copy()
    weak.loc[("pooled", "effect_size"), ["pearson_r", "r_lo", "r_ci95"]] = [0.05, -0.77, "[-0.77, 0.71]"]
    weak.loc[("pooled", "val_accuracy"), "pearson_r"] = -0.05
    # an effect-size r whose CI reaches 0 does not support the claim, whatever accuracy's r is
    assert "is not supported" in mvs.conclusions(weak, best, cells)[1]
    strong = corr.copy()
    strong.loc[("pooled", "effect_size"), "r_lo"] = 0.5
    lines = mvs.conclusions(strong, best, cells)
    assert "holds here (r +0.89 vs -0.94)" in lines[1] and "1/1" in lines[2]
    assert "with ≥90% accuracy and an interval below 0 (steering the wrong way): 0/3" in lines[3]


def test_wrong_way_needs_an_interval_below_zero():
    cells = _cells()
    cells.loc[cells.layer == 5, "delta"] = -8.0  # accurate (0.90), negative on every question
    judged = _judged_for(cells, spread=1.0)
    got = mvs.deltas(cells.drop(columns="delta"), judged).set_index(["trait", "layer"])
    assert got.loc[("optimism", 5), "wrong_way"] and got.loc[("optimism", 5), "ci_hi"] < 0
    noisy = mvs.deltas(cells.drop(columns="delta"), _judged_for(cells, spread=60.0)).set_index(["trait", "layer"])
    assert not noisy.loc[("optimism", 5), "wrong_way"]  # same mean, interval spans 0


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


def test_the_probe_reading_needs_a_local_judge_and_a_gold_set_per_trait():
    with pytest.raises(ParamError, match="reading must be one of absolute, yesno, opposite, probe"):
        mvs.Params(reading="vibes")
    with pytest.raises(ParamError, match="set judge_backend: local"):
        mvs.Params(judge_backend="openai", judge_model="gpt-4.1-mini")
    assert mvs.Params(judge_backend="openai", judge_model="gpt-4.1-mini", reading="absolute").reading == "absolute"
    candour = {"candour": "saying plainly what one thinks."}  # a trait without gold
    with pytest.raises(ParamError, match=r"\['candour'\]: write gold_candour\.jsonl .*, or set reading: absolute"):
        mvs.Params(traits=["optimism", "candour"], trait_descriptions=candour).check()


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
    tight = mvs.correlations(cells, _judged_for(cells, spread=0.5), P).loc[("pooled", "effect_size")]
    wide = mvs.correlations(cells, _judged_for(cells, spread=30.0), P).loc[("pooled", "effect_size")]
    assert tight.pearson_r == pytest.approx(wide.pearson_r)
    (tl, th), (wl, wh) = (tuple(map(float, x.strip("[]").split(","))) for x in (tight.r_ci95, wide.r_ci95))
    assert th - tl < 0.01 < wh - wl


def test_record_quantities_claims_and_golden_check():
    from traitlab import records

    P = mvs.Params(traits=["optimism", "formality"], layers=list(range(6)), methods=["probe"], n_boot=200)
    judged = _judged_for(_cells())
    cells = mvs.deltas(_cells().drop(columns="delta"), judged)
    corr, best = mvs.correlations(cells, judged, P), mvs.best_layers(cells)
    rec = mvs.record(P, cells, corr, best, judged)
    assert rec["n_cells"].value == 12 and rec["n_cells"].tolerance == 0
    r = rec["effect_size_r"]
    assert r.value == pytest.approx(corr.loc[("pooled", "effect_size"), "pearson_r"])
    assert rec["optimism.effect_size_r"].value == pytest.approx(corr.loc[("optimism", "effect_size"), "pearson_r"])
    assert r.tolerance == pytest.approx(max(3 * (1 - r.value ** 2) / 3, 3e-3))  # 3 × (1 − r²)/√(12 − 3)
    assert rec["best_layer_differs"].value == 1.0 and rec["best_layer_differs"].tolerance == pytest.approx(0.5)
    v = {c.id: c.verdict for c in rec.claims}
    assert v == {"effect_size_predicts": "holds", "effect_size_beats_accuracy": "holds",
                 "best_layers_differ": "holds", "late_layer_trap": "inconclusive"}
    # the delta unrelated to any metric, 12 cells: power for the seed's r = 0.898, so not held
    flat = _cells(noise=0.0).assign(delta=lambda d: np.where(d.layer % 2 == 0, 1.0, -1.0) * (1 + d.layer % 3))
    jflat = _judged_for(flat)
    flat = mvs.deltas(flat.drop(columns="delta"), jflat)
    corr2, best2 = mvs.correlations(flat, jflat, P), mvs.best_layers(flat)
    seen = mvs.control_effects(_control({"optimism": 30.0, "formality": 20.0}), P.traits)
    rec2 = mvs.record(P, flat, corr2, best2, jflat, seen)
    assert {c.id: c.verdict for c in rec2.claims}["effect_size_predicts"] == "not held"
    # the same null without a positive control: the deltas may be judge noise
    blind = {c.id: c for c in mvs.record(P, flat, corr2, best2, jflat).claims}["effect_size_predicts"]
    assert blind.verdict == "inconclusive" and "positive control" in blind.reason
    # a control that fails because the instructions changed no answer says so (every answer here is "")
    ignored = mvs.control_effects(_control({"optimism": 0.0, "formality": 0.0}, sd=5.0), P.traits)
    rec3 = mvs.record(P, flat, corr2, best2, jflat, ignored)
    c = {c.id: c for c in rec3.claims}["effect_size_predicts"]
    assert c.verdict == "inconclusive" and "optimism: the instructions left 8/8 answer pairs word for word" in c.reason
    assert rec3["control.optimism.same"].value == 1.0 and rec3["control.formality.similarity"].value == 1.0
    assert "barely follows" in c.reason
    # answers the instructions did change (similarity below steered_eval.ALIKE): no such excuse
    followed = _control({"optimism": 0.0, "formality": 0.0}, sd=5.0)
    followed.loc[followed.polarity == "positive", "answer"] = "something else entirely"
    c = {c.id: c for c in mvs.record(P, flat, corr2, best2, jflat,
                                     mvs.control_effects(followed, P.traits)).claims}["effect_size_predicts"]
    assert c.verdict == "inconclusive" and "barely follows" not in c.reason
    assert records.compare(rec, rec) == []
    problems = records.compare(rec, rec2)
    assert any(p.startswith("metrics_vs_steering.effect_size_r:") for p in problems)
    assert not any(p.startswith("metrics_vs_steering.mean_val_accuracy:") for p in problems)


def _control(deltas: dict[str, float], sd: float = 2.0, n: int = 8) -> pd.DataFrame:
    rows = []
    for t, d in deltas.items():
        for i in range(n):
            e = sd * (1 if i % 2 else -1)
            rows += [{"trait": t, "question": f"q{i}", "polarity": "negative", "prompt": 0, "answer": "", "score": 40.0},
                     {"trait": t, "question": f"q{i}", "polarity": "positive", "prompt": 0, "answer": "",
                      "score": 40.0 + d + e}]
    return pd.DataFrame(rows)


def test_late_layer_trap_needs_power_and_a_readable_judge():
    """No late accurate cell steers the wrong way: 'not held' only where such a cell could detect
    the seed's −10.6 on a trait whose positive control the judge separates; else inconclusive."""
    P = mvs.Params(traits=["optimism", "formality"], layers=list(range(6)), methods=["probe"], n_boot=100)
    judged = _judged_for(_cells(), spread=1.0)
    cells = mvs.deltas(_cells().drop(columns="delta"), judged)
    cells.loc[cells.layer == 5, "val_accuracy"] = 0.95  # the late layer is accurate
    corr, best = mvs.correlations(cells, judged, P), mvs.best_layers(cells)
    seen = mvs.control_effects(_control({"optimism": 30.0, "formality": 20.0}), P.traits)
    assert seen.differ.all() and seen.loc["optimism", "delta"] == pytest.approx(30.0)
    rec = mvs.record(P, cells, corr, best, judged, seen, n_layers=6)  # late: layers ≥ 4.5 → 5
    c = {c.id: c for c in rec.claims}["late_layer_trap"]
    assert c.verdict == "not held" and "could detect" in c.reason
    assert rec["control.optimism"].value == pytest.approx(30.0)
    blind = mvs.control_effects(_control({"optimism": 0.0, "formality": 0.0}, sd=5.0), P.traits)
    assert not blind.differ.any()
    c = {c.id: c for c in mvs.record(P, cells, corr, best, judged, blind, n_layers=6).claims}["late_layer_trap"]
    assert c.verdict == "inconclusive"
    none = mvs.control_effects(_control({}), P.traits)
    assert none.delta.isna().all() and not none.differ.any()


def test_steering_is_the_readers_second_positive_control():
    """A model that ignores its instructions fails the instructed control; a cell that steers
    (interval above 0) with at least half its answers coherent still shows the reader sees the trait,
    so a powered null is 'not held' and says which control passed. Steering only on broken text, or
    no coherence measured, is no control: the null stays inconclusive."""
    P = mvs.Params(traits=["optimism", "formality"], layers=list(range(6)), methods=["probe"], n_boot=200)
    flat = _cells(noise=0.0).assign(delta=lambda d: np.where(d.layer % 2 == 0, 1.0, -1.0) * (1 + d.layer % 3))
    flat.loc[(flat.trait == "formality") & (flat.layer == 2), "delta"] = 12.0  # one cell clearly steers
    judged = _judged_for(flat, spread=8.0)  # the ±1–3 cells' intervals span 0
    cells = mvs.deltas(flat.drop(columns="delta"), judged)
    corr, best = mvs.correlations(cells, judged, P), mvs.best_layers(cells)
    ignored = mvs.control_effects(_control({"optimism": 0.0, "formality": 0.0}, sd=5.0), P.traits)
    assert not ignored.differ.any()

    def claim(coherent: float | None, control=ignored):
        c = cells if coherent is None else cells.assign(coherent=coherent)
        rec = mvs.record(P, c, corr, best, judged, control)
        return rec, {x.id: x for x in rec.claims}["effect_size_predicts"]

    rec, c = claim(0.75)
    sc = rec.tables["steering_control"]
    assert sc.loc["formality", "seen"] == 1 and sc.loc["optimism", "seen"] == 0
    assert sc.loc["formality", "best"].startswith("L2 probe +12.0")
    assert rec["steering_control.formality"].value == pytest.approx(1 / 6)
    assert c.verdict == "not held" and "formality: steering (1/6 coherent cells, clearest L2 probe +12.0" in c.reason
    _, c = claim(0.25)  # the steering cell's answers are mostly broken
    assert c.verdict == "inconclusive" and "no cell steers with at least 50% of its answers coherent" in c.reason
    _, c = claim(None)
    assert c.verdict == "inconclusive" and "coherence was not measured" in c.reason
    lines = mvs.conclusions(corr, best, cells.assign(coherent=0.75), ignored)
    assert "Reader's positive control from steering (cells steering with ≥ 50% of their answers coherent): " \
           "optimism 0/6; formality 1/6, clearest L2 probe +12.0" in lines[1]
    # a trait without system prompts has no instructed control, and the line says how to give it one
    partial = mvs.control_effects(_control({"optimism": 30.0}), P.traits)
    assert "formality not run (no system prompts for it: add them with instructions_file)" in \
        mvs.conclusions(corr, best, cells, partial)[0]
    # the instructed control passing is named too
    seen = mvs.control_effects(_control({"optimism": 30.0, "formality": 0.0}), P.traits)
    _, c = claim(0.25, seen)
    assert c.verdict == "not held" and "optimism: instructed +30.0" in c.reason


def test_the_steering_control_must_hold_wherever_the_floor_plausibly_falls():
    """A cell half coherent by the fitted distinct-2 floor (0.80) but broken under the floor that
    gold resamples without the lowest coherent answer fit (0.85) does not count as a control;
    a cell coherent under every refit does. The fitted-floor count stays visible as seen_at_fit."""
    gold = pd.DataFrame({"trait": "t", "question": np.repeat(list("abcd"), 2), "coherence": [90, 10] * 4,
                         "distinct2": [0.95, 0.3, 0.9, 0.3, 0.85, 0.3, 0.8, 0.3], "log_ppl": 1.0})
    floors = textstats.fit_floors(gold[["distinct2", "log_ppl"]], gold.coherence.to_numpy(float))
    assert floors.distinct2_min == 0.8
    judged = _judged().assign(log_ppl=1.0, distinct2=[0.99, 0.99, 0.99, 0.99, 0.82, 0.2, 0.2, 0.2])
    judged["coherent"] = floors.coherent(judged)
    cells = mvs.deltas(_metrics(), judged, FloorRefits(gold), n_boot=400, seed=0).set_index("layer")
    assert cells.coherent.to_dict() == {4: 1.0, 8: 0.5, 12: 0.0}
    assert cells.coherent_lo.to_dict() == {4: 1.0, 8: 0.0, 12: 0.0}
    assert cells.coherent_hi.to_dict() == {4: 1.0, 8: 0.5, 12: 0.0}
    sc = mvs.steering_control(cells.reset_index().assign(steers=True), ["optimism"]).loc["optimism"]
    assert (sc.seen, sc.seen_at_fit, sc.passes) == (1, 2, True) and sc.best.startswith("L4 probe +25.0")
    sc = mvs.steering_control(cells.reset_index().assign(steers=[False, True, True]), ["optimism"]).loc["optimism"]
    assert (sc.seen, sc.seen_at_fit, sc.passes) == (0, 1, False)
    # the descriptive median coherent share carries where the refitted floors put it
    P = mvs.Params(traits=["optimism"], layers=[4, 8, 12], methods=["probe"], n_questions=2)
    c = cells.reset_index()
    rec = mvs.record(P, c, mvs.correlations(c, judged, P), mvs.best_layers(c), judged)
    assert (rec["median_cell_coherent"].value, rec["median_cell_coherent"].ci) == (0.5, (0.0, 0.5))


def test_best_layers_differ_needs_question_resamples_that_agree():
    """Best extraction layer 0 everywhere. Steering best at layer 5 on every question: holds;
    best at layer 0: not held; layers 0 and 5 tied on noisy questions, so the best steering
    layer is a coin flip: inconclusive, whatever the point estimate says."""
    P = mvs.Params(traits=["optimism", "formality"], layers=list(range(6)), methods=["probe"], n_boot=300)

    def verdict(delta, spread):
        cells = _cells(noise=0.0).assign(delta=delta)
        judged = _judged_for(cells, spread=spread)
        cells = mvs.deltas(cells.drop(columns="delta"), judged)
        rec = mvs.record(P, cells, mvs.correlations(cells, judged, P), mvs.best_layers(cells), judged)
        return rec, next(c for c in rec.claims if c.id == "best_layers_differ")

    rec, c = verdict(lambda d: 10.0 + 4 * d.layer, 1.0)
    assert c.verdict == "holds" and rec["best_layer_differs"].ci == (1.0, 1.0)
    rec, c = verdict(lambda d: 40.0 - 6 * d.layer, 1.0)
    assert c.verdict == "not held" and rec["best_layer_differs"].ci == (0.0, 0.0)
    rec, c = verdict(lambda d: np.where(d.layer.isin([0, 5]), 30.0, 10.0), 20.0)
    assert c.verdict == "inconclusive" and "reaches one half" in c.reason
    assert rec["best_layer_differs"].ci[0] <= 0.5 <= rec["best_layer_differs"].ci[1]
