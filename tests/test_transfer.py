"""Transfer-study tables on a synthetic scored frame (exact), and parameter checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab.experiments import sft_dpo_transfer as tr
from traitlab.params import ParamError, validate


def _scored():
    rows = []
    for model, shift in (("base", 0.0), ("sft", 10.0), ("dpo", -5.0)):
        for q in range(2):
            rows.append({"model": model, "kind": "baseline", "layer": -1, "ratio": 0.0, "coef": np.nan,
                         "question_id": q, "trait": 50.0 + q, "coherence": 90.0})
            for layer in (3, 6):
                for ratio in (0.5, 1.0):
                    trait = 50 + 20 * ratio + shift + layer + q
                    coh = 90 - 50 * ratio + (5 if layer == 6 else 0)
                    rows.append({"model": model, "kind": "single", "layer": layer, "ratio": ratio,
                                 "coef": ratio * 10, "question_id": q, "trait": trait, "coherence": coh})
                    rows.append({"model": model, "kind": "random", "layer": layer, "ratio": ratio,
                                 "coef": ratio * 10, "question_id": q, "trait": 50.0 + q,
                                 "coherence": coh})
            rows.append({"model": model, "kind": "multi", "layer": -1, "ratio": 0.5, "coef": np.nan,
                         "question_id": q, "trait": 80.0 + shift, "coherence": 60.0})
    return pd.DataFrame(rows)


def test_summary_and_best_per_layer():
    summ = tr.summary(_scored())
    row = summ[(summ.model == "sft") & (summ.kind == "single") & (summ.layer == 6) & (summ.ratio == 1.0)]
    assert float(row.trait.iloc[0]) == pytest.approx(50 + 20 + 10 + 6 + 0.5)
    assert int(row.n.iloc[0]) == 2
    best = tr.best_per_layer(summ, floor=50)
    # ratio 1.0 has coherence 40 (layer 3) or 45 (layer 6): below the floor, so 0.5 wins
    assert set(best.ratio) == {0.5}
    b = best[(best.model == "dpo") & (best.layer == 6)].iloc[0]
    assert b.trait == pytest.approx(50 + 10 - 5 + 6 + 0.5) and b.delta == pytest.approx(b.trait - 50.5)
    best40 = tr.best_per_layer(summ, floor=40)
    assert set(best40[best40.layer == 6].ratio) == {1.0}


def test_multi_vs_single_and_learned_vs_random():
    summ = tr.summary(_scored())
    m = tr.multi_vs_single(summ, floor=50)
    assert m.loc["sft", "multi_trait"] == pytest.approx(90.0)
    assert m.loc["sft", "single_trait"] == pytest.approx(50 + 10 + 10 + 6 + 0.5)
    assert m.loc["sft", "single_at"] == "L6 r=0.5"
    lvr = tr.learned_vs_random(summ)
    assert lvr.loc[("base", 0.5), "random"] == pytest.approx(0.0)
    assert lvr.loc[("base", 0.5), "single"] == pytest.approx(10 + 4.5)
    lines = tr.conclusions(summ, tr.best_per_layer(summ, 50), m, lvr, 50)
    assert any("Largest SFT − DPO gap" in x for x in lines)


def test_conditions_cover_the_grid():
    p = tr.Params(layers=[3, 6], ratios=[0.5, 1.0], multi_layers=[4, 5], multi_ratios=[0.5])
    c = tr.conditions(p)
    assert c[0]["kind"] == "baseline" and len(c) == 1 + 4 + 4 + 1
    c = tr.conditions(tr.Params(layers=[3, 6], ratios=[0.5, 1.0], random_ratios=[1.0], multi_layers=[]))
    assert [(x["kind"], x["layer"], x["ratio"]) for x in c if x["kind"] == "random"] == [
        ("random", 3, 1.0), ("random", 6, 1.0)]


def test_random_control_is_unit_seeded_and_the_random_method():
    from traitlab.directions import fit_direction, random_unit

    a, b = random_unit(64, 1), random_unit(64, 1)
    assert torch.equal(a, b) and float(a.norm()) == pytest.approx(1.0)
    assert not torch.equal(a, random_unit(64, 2))
    x = torch.zeros(2, 64)
    assert torch.allclose(fit_direction("random", x, x, seed=1, log=False).vector, a)


@pytest.mark.parametrize("kw, msg", [
    ({"models": {"base": "a", "sft": "b"}}, "exactly base, sft and dpo"),
    ({"ratios": [-1.0]}, "ratios must be > 0"),
    ({"site": "v"}, "site must be"),
    ({"vector_method": "svm"}, "vector_method"),
    ({"coherence_floor": 120.0}, "coherence_floor"),
    ({"random_ratios": [2.0]}, "must be a subset of ratios"),
    ({"judge_dtype": "int8"}, "judge_dtype"),
])
def test_transfer_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(tr.Params, kw)


def test_layers_checked_against_the_base_model():
    with pytest.raises(ParamError, match="out of range"):
        tr.Params(layers=[40], chain_profile="default").check()  # gemma-3-270m has 18 layers
    tr.Params(chain_profile="ci", layers=[10], multi_layers=[9]).check()


def _record(scored, **kw):
    P = tr.Params(layers=[3, 6], ratios=[0.5, 1.0], multi_layers=[4, 5], multi_ratios=[0.5],
                  coherence_floor=50.0, **kw)
    summ = tr.summary(scored)
    best = tr.best_per_layer(summ, P.coherence_floor)
    return tr.record(P, scored, summ, best, tr.multi_vs_single(summ, P.coherence_floor), tr.learned_vs_random(summ))


def test_record_quantities_claims_and_golden_check():
    from traitlab import records

    scored = _scored()
    rec = _record(scored)
    assert (rec["n_questions"].value, rec["n_conditions"].value, rec["n_questions"].tolerance) == (2, 10, 0)
    # dpo at L6 r=0.5: trait 61.5 vs baseline 50.5, the same +11 on both questions
    assert rec["dpo_best_delta"].value == pytest.approx(11.0)
    assert rec["dpo_best_delta"].tolerance_rule.startswith("3 standard errors")
    assert rec["sft_minus_dpo_early"].value == pytest.approx(15.0)  # L3: 73.5 vs 58.5
    assert rec["dpo_multi_minus_single"].value == pytest.approx(75.0 - 61.5)
    assert rec["base_learned_minus_random"].value == pytest.approx(np.mean([10 + 3, 20 + 3, 10 + 6, 20 + 6]))
    assert all(q.tolerance > 0 for q in rec.quantities if q.tolerance_rule != "exact")
    verdicts = {c.id: c.verdict for c in rec.claims}
    assert verdicts == {"transfer_works": "holds", "dpo_resists_early": "holds", "optimal_layer_preserved": "holds",
                        "multi_beats_single": "holds", "dpo_cliff": "not comparable"}  # ratios stop at 1.0
    # no SFT − DPO gap on average, ±10 by question: two questions have no power to call it not held
    same = scored.assign(trait=np.where(scored.model == "dpo", scored.trait + 15 + 20 * (scored.question_id - 0.5),
                                        scored.trait))
    assert {c.id: c.verdict for c in _record(same).claims}["dpo_resists_early"] == "inconclusive"
    assert records.compare(rec, rec) == []
    moved = scored.assign(trait=np.where((scored.model == "dpo") & (scored.kind == "baseline"),
                                         scored.trait + 40, scored.trait))
    problems = records.compare(rec, _record(moved))
    assert any(p.startswith("sft_dpo_transfer.dpo_baseline_trait:") for p in problems)
    assert not any(p.startswith("sft_dpo_transfer.sft_baseline_trait:") for p in problems)
