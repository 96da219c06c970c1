"""Perturbation-ratio zones: parameters fail early, floors, zones, breaking ratios, the layer trend
and verdicts on synthetic answers whose zones are known; the separation ratio's exact math on a
tiny model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab import records, textstats
from traitlab.experiments import ratio_zones as rz
from traitlab.params import ParamError

RATIOS = [0.1, 0.5, 0.8, 1.3, 2.0]


def _params(**kw) -> rz.Params:
    return rz.Params(**{"layers": [4, 8, 12], "ratios": RATIOS, "n_questions": 8, "n_boot": 200, **kw})


def _answers(P: rz.Params, breaks: dict[int, float], sweet: float = 0.8) -> pd.DataFrame:
    """Every question's answers: coherent below the layer's breaking ratio, incoherent from it on;
    the steered answer wins (more trait) at ratios ≥ 0.5 up to ``sweet`` and loses below 0.5."""
    qs = [f"q{i}" for i in range(P.n_questions)]
    rows = [{"method": "none", "layer": -1, "ratio": 0.0, "question": q, "win": np.nan, "coherent": True,
             "distinct2": 1.0, "log_ppl": 1.0} for q in qs]
    for m, x, r in P.conditions():
        for i, q in enumerate(qs):
            coherent = r < breaks[x]
            win = 1.0 if 0.5 <= r <= sweet else (0.5 if r > sweet else float(i % 2))  # ½ at 0.1: no effect
            rows.append({"method": m, "layer": x, "ratio": r, "question": q, "win": win, "coherent": coherent,
                         "distinct2": 1.0 if coherent else 0.2, "log_ppl": 1.0 if coherent else 6.0})
    return pd.DataFrame(rows)


def test_bad_parameters_fail_before_model_work():
    for kw, msg in [({"ratios": [0.5, 0.2]}, "increasing"), ({"methods": ["random"]}, "cannot be used"),
                    ({"norm_positions": "middle"}, "norm_positions"), ({"n_questions": 2}, "n_questions"),
                    ({"layers": [4, 4]}, "without repeats"), ({"trait": "nonexistent"}, "judge description"),
                    ({"coherent_share": 1.0}, "coherent_share")]:
        with pytest.raises(ParamError, match=msg):
            _params(**kw)


def test_floors_pick_the_joint_rule_that_separates_gold_labels():
    m = pd.DataFrame({"distinct2": [0.9, 0.95, 0.9, 0.3, 0.92], "log_ppl": [1.5, 2.0, 7.0, 1.0, 1.8]})
    f = textstats.fit_floors(m, np.array([80, 90, 20, 10, 70]))
    assert f.balanced_accuracy == 1.0 and f.n == 5
    assert f.coherent(m).tolist() == [True, True, False, False, True]  # both the loop and the gibberish fail
    with pytest.raises(ValueError, match="both classes"):
        textstats.fit_floors(m, np.full(5, 90))


def test_zones_breaking_ratios_trend_and_verdicts():
    P = _params()
    judged = _answers(P, breaks={4: 2.0, 8: 1.3, 12: 0.8})
    zones = rz.zone_table(judged, P)
    assert zones.loc[("mean_diff", 4, 0.5), "win_rate"] == 1.0
    assert zones.loc[("mean_diff", 4, 0.1), "win_rate"] == 0.5
    assert zones.loc[("probe", 12, 0.8), "broken"] and not zones.loc[("probe", 12, 0.5), "broken"]
    assert zones.loc[("mean_diff", 8, 1.3), "coherent"] == 0.0 and zones.loc[("mean_diff", 8, 0.8), "coh_lo"] == 1.0
    cur = rz.curves(judged, P)
    assert cur.loc[("mean_diff", 4)].breaking_ratio == 2.0 and cur.loc[("probe", 12)].breaking_ratio == 0.8
    # every answer identical within a condition: no sampling spread
    assert cur.loc[("probe", 8)].breaking_lo == cur.loc[("probe", 8)].breaking_hi == 1.3
    assert cur.loc[("mean_diff", 8)].best_ratio == 0.5  # the first of the tied wins among unbroken ratios
    trend = rz.layer_trend(judged, P)
    assert trend.loc["mean_diff", "rho"] == pytest.approx(-1.0) and trend.loc["mean_diff", "ci_hi"] < 0
    rec = rz.record(P, _sep(P), _den(P), textstats.Floors(0.5, 3.0, 0.9, 100), zones, cur, trend, n_layers=24)
    v = {c.id: c.verdict for c in rec.claims}
    assert v["sweet_spot"] == "holds"  # best ratios 0.5 everywhere
    assert v["breakdown_1_to_1_3"] == "not held"  # 1 of 3 layers per method breaks in 1.0–1.3
    assert v["broken_above_1_3"] == "holds"  # even L4 breaks at 2.0
    assert v["later_layers_break_earlier.mean_diff"] == "holds"
    assert v["mean_diff_separation_stable"] == "not held" and v["probe_separation_drops"] == "holds"
    assert rec["zones.probe.L12.r0.8.coherent"].value == 0.0
    assert rec["zones.probe.L12.r0.8.coherent"].tolerance == pytest.approx(1 / 8)  # one question
    assert list(records.verdict_table(rec).columns) == ["claim", "seed", "ours", "verdict", "why"]


def test_refitting_the_floors_per_replicate_widens_only_what_the_floor_decides():
    from traitlab import judge_power

    P = _params()
    judged = _answers(P, breaks={4: 2.0, 8: 1.3, 12: 0.8})
    judged.loc[(judged.layer == 8) & (judged.ratio == 0.8), "distinct2"] = 0.9   # borderline answers
    # gold question a puts the floor at 0.9 (its 0.9 answer is coherent), question b at 1.0
    gold = pd.DataFrame({"trait": "t", "question": list("aaabbb"), "coherence": [90, 80, 10, 90, 20, 10],
                         "distinct2": [1.0, 0.9, 0.2, 1.0, 0.9, 0.2], "log_ppl": 1.0})
    refits = judge_power.FloorRefits(gold)
    floors = refits.floors(np.arange(2))
    assert (floors.distinct2_min, refits.floors(np.array([1, 1])).distinct2_min) == (0.9, 1.0)
    judged["coherent"] = floors.coherent(judged)
    plain, refit = rz.curves(judged, P), rz.curves(judged, P, refits)
    assert plain.breaking_ratio.equals(refit.breaking_ratio)                # the estimate is the fitted floors'
    assert (plain.loc[("probe", 8), "breaking_lo"], refit.loc[("probe", 8), "breaking_lo"]) == (1.3, 0.8)
    assert refit.loc[("probe", 8), "breaking_hi"] == 1.3
    others = [k for k in plain.index if k[1] != 8]
    assert plain.loc[others].equals(refit.loc[others])                      # no borderline answers there
    # a gold set whose every resample fits the same floors changes nothing, the trend included
    same = judge_power.FloorRefits(gold.assign(question="a"))
    assert same.units == 1 and rz.layer_trend(judged, P, same).equals(rz.layer_trend(judged, P))
    assert rz.curves(judged, P, same).equals(plain)
    # the zone table's coherent-share intervals: only the borderline conditions' widen
    zp, zr = rz.zone_table(judged, P), rz.zone_table(judged, P, refits)
    borderline = [(m, 8, 0.8) for m in P.methods]
    assert (zp.loc[borderline, ["coherent", "coh_lo"]].to_numpy().tolist(),
            zr.loc[borderline, ["coherent", "coh_lo", "coh_hi"]].to_numpy().tolist()) == \
        ([[1.0, 1.0]] * 2, [[1.0, 0.0, 1.0]] * 2)
    rest = [k for k in zp.index if k not in borderline]
    assert zp.loc[rest].equals(zr.loc[rest]) and rz.zone_table(judged, P, same).equals(zp)


def test_a_judge_that_sees_nothing_makes_the_sweet_spot_inconclusive():
    P = _params()
    judged = _answers(P, breaks={4: 1.3, 8: 1.3, 12: 1.3})
    judged.loc[judged.method != "none", "win"] = 0.5
    zones = rz.zone_table(judged, P)
    assert not rz.control_seen(zones)
    rec = rz.record(P, _sep(P), _den(P), textstats.Floors(0.5, 3.0, 0.9, 100), zones, rz.curves(judged, P),
                    rz.layer_trend(judged, P), n_layers=24)
    c = {c.id: c for c in rec.claims}
    assert c["sweet_spot"].verdict == "inconclusive" and "win rate" in c["sweet_spot"].reason
    assert c["breakdown_1_to_1_3"].verdict == "holds"
    assert c["later_layers_break_earlier.probe"].verdict == "inconclusive"  # all break alike: ρ = 0


def test_a_sweet_spot_clearly_below_the_band_is_not_held():
    P = _params()
    judged = _answers(P, breaks={4: 1.3, 8: 1.3, 12: 1.3})
    steered = judged.method != "none"
    judged.loc[steered, "win"] = (judged.loc[steered, "ratio"] == 0.1).astype(float)
    cur = rz.curves(judged, P)
    assert (cur.best_ratio == 0.1).all() and (cur.best_hi == 0.1).all()
    rec = rz.record(P, _sep(P), _den(P), textstats.Floors(0.5, 3.0, 0.9, 100), rz.zone_table(judged, P), cur,
                    rz.layer_trend(judged, P), n_layers=24)
    c = {c.id: c for c in rec.claims}["sweet_spot"]
    assert c.verdict == "not held" and "6/6 curves" in c.reason


def test_a_moved_zone_fails_naming_the_field():
    P = _params()
    judged = _answers(P, breaks={4: 2.0, 8: 1.3, 12: 0.8})

    def rec(j):
        return rz.record(P, _sep(P), _den(P), textstats.Floors(0.5, 3.0, 0.9, 100), rz.zone_table(j, P), rz.curves(j, P),
                         rz.layer_trend(j, P), n_layers=24)

    moved = judged.copy()
    sel = (moved.method == "probe") & (moved.layer == 4) & (moved.ratio == 0.5) & moved.question.isin(["q0", "q1", "q2"])
    moved.loc[sel, "coherent"] = False
    problems = records.compare(rec(judged), rec(moved), verdicts=False)
    assert any(p.startswith("ratio_zones.zones.probe.L4.r0.5.coherent:") for p in problems), problems
    assert records.compare(rec(judged), rec(judged)) == []


def _sep(P: rz.Params) -> pd.DataFrame:
    rows = [{"method": m, "layer": x, "gap": 1.0, "raw_norm": 1.0,
             "separation": (0.1 + 0.01 * x if m == "mean_diff" else 0.9 / (1 + x) ** 2), **{f"separation_{p}": 0.1 for p in rz.NORM_POSITIONS}}
            for m in P.methods for x in range(24)]
    return pd.DataFrame(rows).set_index(["method", "layer"])


def _den(P: rz.Params) -> pd.DataFrame:
    norms = pd.DataFrame({"response": 10.0, "all": 20.0, "no_first": 12.0, "first": 400.0},
                         index=pd.Index(range(24), name="layer"))
    return rz.denominator_effect(norms, P)


def test_denominators_and_separation_on_a_tiny_model():
    from traitlab.models import load_model

    lm = load_model("tiny-qwen2")
    items = [("Will it rain?", "Maybe tomorrow."), ("Is it late?", "Not yet, friend.")]
    norms = rz.position_norms(lm, items, [0, 1], "resid_pre", batch_size=2)
    ex = [lm.chat.encode(q, a) for q, a in items]
    from traitlab.activations import extract
    from traitlab.sites import Site

    acts = extract(lm, ex, [Site("resid_pre", 1)], position="all", cache=False, progress=False)
    per = [a.float().norm(dim=-1) for a in acts.per_example("resid_pre@1")]
    assert norms.loc[1, "all"] == pytest.approx(float(np.mean([float(n.mean()) for n in per])), rel=1e-5)
    assert norms.loc[1, "no_first"] == pytest.approx(float(np.mean([float(n[1:].mean()) for n in per])), rel=1e-5)
    assert norms.loc[1, "first"] == pytest.approx(float(np.mean([float(n[0]) for n in per])), rel=1e-5)
    P = _params(layers=[0, 1], norm_positions="all")
    den = rz.denominator_effect(norms, P)
    assert den.loc[1, "factor_all"] == 1.0
    assert den.loc[1, "factor_response"] == pytest.approx(norms.loc[1, "all"] / norms.loc[1, "response"])
    gaps = pd.DataFrame([{"method": "mean_diff", "layer": 1, "gap": 3.0, "raw_norm": 3.0}])
    sep = rz.separation_table(gaps, norms, P)
    assert sep.loc[("mean_diff", 1), "separation"] == pytest.approx(3.0 / norms.loc[1, "all"])
    assert rz.steering_norms(norms, P) == {"resid_pre@0": norms.loc[0, "all"], "resid_pre@1": norms.loc[1, "all"]}
    assert math.isfinite(float(torch.tensor(sep.separation.to_numpy()).sum()))


def test_a_shallow_model_has_no_probe_drop_to_compare():
    P = _params(layers=[0, 1])
    sep = _sep(P).loc[(slice(None), [0, 1]), :]
    (md, probe) = rz.separation_claims(sep, P, n_layers=2)
    assert probe.verdict == "not comparable" and "2-layer" in probe.reason
    assert md.id == "mean_diff_separation_stable"


def test_floors_match_an_exhaustive_search():
    rng = np.random.default_rng(0)
    m = pd.DataFrame({"distinct2": rng.uniform(0.5, 1, 60).round(2), "log_ppl": rng.uniform(1, 7, 60).round(1)})
    gold = np.where((m.distinct2 > 0.8) & (m.log_ppl < 4.5) ^ (rng.random(60) < 0.15), 80, 20)
    f = textstats.fit_floors(m, gold)
    truth = gold >= 50
    best = max(0.5 * (((m.distinct2 >= a) & (m.log_ppl <= b))[truth].mean()
                      + (~((m.distinct2 >= a) & (m.log_ppl <= b)))[~truth].mean())
               for a in [*m.distinct2.unique(), 0.0] for b in [*m.log_ppl.unique(), math.inf])
    assert f.balanced_accuracy == pytest.approx(best)


def test_absolute_wins_compare_each_answer_with_its_own_questions_unsteered_score():
    from types import SimpleNamespace

    class Stub:
        def score_many(self, metric, items, *, trait, progress):
            assert metric == "trait" and trait == "optimism"
            table = {"base a": 50.0, "base b": 40.0, "up": 80.0, "down": 10.0, "same": 50.0}
            return [SimpleNamespace(value=table.get(a)) for _, a in items]

    base = pd.DataFrame({"question": ["a", "b"], "answer": ["base a", "base b"]})
    steered = pd.DataFrame({"question": ["a", "b", "a", "b", "a"], "answer": ["up", "down", "same", "same", "??"]})
    wins = rz.trait_wins(Stub(), steered, base, "optimism", "absolute", progress=False)
    assert wins.iloc[:4].tolist() == [1.0, 0.0, 0.5, 1.0] and np.isnan(wins.iloc[4])
    with pytest.raises(ValueError, match="absolute"):
        rz.trait_wins(Stub(), steered, base, "optimism", "ranked", progress=False)


def test_probe_wins_compare_the_probe_readings_of_each_answer_and_its_own_questions_unsteered_one(
        tmp_path, monkeypatch):
    from traitlab import probe_reader
    from traitlab.judge import Judge, JudgeConfig, LocalBackend
    from traitlab.models import load_model

    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path))
    m = load_model("tiny-qwen2")
    judge = Judge(JudgeConfig(backend="local", model="tiny-qwen2"), backend=LocalBackend(m), cache=None)
    base = pd.DataFrame({"question": ["a", "b"], "answer": ["It is fine.", "Hard to say."]})
    steered = pd.DataFrame({"question": ["b", "a", "a"], "answer": ["Wonderful!", "Awful.", ""]})
    wins = rz.trait_wins(judge, steered, base, "optimism", "probe", progress=False)
    p = probe_reader.fit_gold(m, ["optimism"], coherence=False, progress=False)["optimism"]
    base_r = probe_reader.read(p, m, list(zip(base.question, base.answer, strict=True)), progress=False)
    hi = probe_reader.read(p, m, list(zip(steered.question, steered.answer, strict=True)), progress=False)
    want = (np.sign(hi[:2] - base_r[[1, 0]]) + 1) / 2
    assert wins.iloc[:2].tolist() == want.tolist() and np.isnan(wins.iloc[2])  # the empty answer: no reading


def test_probe_trait_method_needs_a_local_judge_and_the_traits_gold_set():
    with pytest.raises(ParamError, match="set judge_backend: local"):
        _params(trait_method="probe", judge_backend="openai", judge_model="gpt-4.1-mini")
    with pytest.raises(ParamError, match=r"trait 'candour' has no judge description.*set trait_descriptions"):
        _params(trait="candour")
    candour = {"candour": "saying plainly what one thinks."}  # a trait without gold
    with pytest.raises(ParamError, match=r"trait_method 'probe' fits a probe on each trait's gold answers; no gold set for \['candour'\]"):
        _params(trait="candour", trait_method="probe", trait_descriptions=candour).check()
    assert _params(trait_method="opposite").trait_method == "opposite"


def test_a_new_traits_gold_set_and_prompt_set_come_from_its_own_folders(tmp_path):
    from traitlab import judge_power
    from traitlab.paths import project_data

    candour = {"candour": "saying plainly what one thinks."}
    rows = judge_power.gold_path("optimism").read_text().replace('"optimism":', '"candour":')
    (tmp_path / "gold_candour.jsonl").write_text(rows)
    (tmp_path / "candour.jsonl").write_text(project_data("traits", "optimism.jsonl").read_text())
    P = _params(trait="candour", trait_method="probe", trait_descriptions=candour, gold_dir=str(tmp_path),
                traits_dir=str(tmp_path), model="tiny-qwen2", layers=[0, 1], judge_model="tiny-qwen2")
    P.check()  # before model work: prompt set, gold set and the floors' gold sets (ours) all found
    assert P.judge().config.gold_dir == str(tmp_path)


def test_the_opposite_reading_of_a_new_trait_needs_its_opposite_before_model_work():
    cheer = {"cheer": "bright, upbeat and encouraging."}
    with pytest.raises(ParamError, match=r"trait_method 'opposite': trait 'cheer' has no opposite .*Set "
                                         r"trait_opposites: \{cheer: \[<opposite>, <one-line definition>\]\}"):
        _params(trait="cheer", trait_descriptions=cheer, trait_method="opposite").check()
    with pytest.raises(ParamError, match=r"trait_opposites\['cheer'\] must be \[name, one-line definition\]"):
        _params(trait="cheer", trait_descriptions=cheer, trait_opposites={"cheer": ["gloom"]})
    P = _params(trait="cheer", trait_descriptions=cheer, trait_method="opposite",
                trait_opposites={"cheer": ["gloom", "a bleak, downcast tone."]})
    assert P.judge().config.opposite("cheer") == ("gloom", "a bleak, downcast tone.")


def test_a_new_traits_definition_reaches_the_judge_the_report_builds():
    with pytest.raises(ParamError, match=r"trait_descriptions\['candour'\] must be a one-line definition"):
        _params(trait="candour", trait_descriptions={"candour": "says\nplainly"})
    P = _params(trait="candour", trait_descriptions={"candour": " saying plainly what one thinks. "})
    assert P.judge().config.descriptions == (("candour", "saying plainly what one thinks."),)
    assert P.judge().config.description("candour") == "saying plainly what one thinks."
