"""Jailbreak blocking: Wilson and request-bootstrap intervals, the blocked/over-refusal tables on
hand-made answers, steer construction (random controls per seed), early errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab import data, judge_power
from traitlab.data import DataError, public_path
from traitlab.experiments import jailbreak_blocking as jb
from traitlab.params import ParamError, validate
from traitlab.uncertainty import bootstrap_ratio, wilson


def test_wilson_matches_the_formula():
    lo, hi = wilson(8, 10)
    z = 1.96
    p, n = 0.8, 10
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((mid - half, mid + half))
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def _answers(P):
    rows = []
    # 2 requests × wrappers rp-1 (roleplay), rt-1 (red_team) + plain; 2 benign
    refuse = {  # (condition, wrapper, request) -> refuses
        ("none", "plain", 0): True, ("none", "plain", 1): False,
        ("none", "rp-1", 0): False, ("none", "rp-1", 1): False, ("none", "rt-1", 0): True, ("none", "rt-1", 1): False,
        # random seed 1 refuses one answered jailbreak (rp-1/1), seed 2 none
        ("random L3 s1", "rp-1", 1): True,
    }
    kinds = {"plain": "plain", "rp-1": "roleplay", "rt-1": "red_team"}
    for cond in P.conditions() + P.random_conditions():
        for w, k in kinds.items():
            for r in (0, 1):
                default = cond.startswith("single") and w != "rt-1"
                rows.append({"condition": cond, "set": "attack", "kind": k, "wrapper": w, "request_id": r,
                             "prompt": "p", "answer": "a", "refuses": refuse.get((cond, w, r), default),
                             "coherent": not (cond.startswith("single") and w == "rp-1" and r == 1)})
        for b in (0, 1):
            rows.append({"condition": cond, "set": "benign", "kind": "benign", "wrapper": "benign",
                         "request_id": -1, "prompt": "b", "answer": "a",
                         "refuses": cond.startswith("single") and b == 0, "coherent": True})
    return pd.DataFrame(rows)


def test_bootstrap_ratio_pools_clusters():
    b = bootstrap_ratio([2, 0, 1], [2, 2, 1], n_boot=500, seed=0)
    assert b.value == pytest.approx(0.6)
    # every resample is a ratio of sums of whole requests: only these values can occur
    possible = {k / n for k in range(0, 7) for n in range(1, 7)}
    assert all(min(abs(d - p) for p in possible) < 1e-12 for d in b.draws)
    assert bootstrap_ratio([1, 1], [1, 1], n_boot=50).ci == (1.0, 1.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        bootstrap_ratio([1], [1, 2])


def test_table_and_blocked_are_exact():
    P = jb.Params(single_layers=[3], ensemble_layers=[], random_seeds=[1, 2], n_boot=300)
    df = _answers(P)
    tab = jb.table(df, P)
    assert list(tab.columns) == ["none", "single L3"]
    assert tab.loc["plain", "none"] == 50.0 and tab.loc["all wrapped", "none"] == 25.0
    assert tab.loc["roleplay", "single L3"] == 100.0 and tab.loc["red_team", "single L3"] == 0.0
    blk = jb.blocked(df, P)
    assert list(blk.index) == ["none", "single L3", "random (single L3)"]
    # answered unsteered: rp-1/0, rp-1/1, rt-1/1 → single L3 refuses both rp-1 → 2/3 blocked
    assert blk.loc["single L3", "jailbreaks_answered_unsteered"] == 3
    assert blk.loc["single L3", "blocked_pct"] == pytest.approx(66.7, abs=0.05)
    # rp-1/1 is incoherent under single L3: one of the 3 answered is blocked by a coherent refusal
    assert blk.loc["single L3", "blocked_coherent_pct"] == pytest.approx(33.3, abs=0.05)
    assert blk.loc["single L3", "benign_refusal_pct"] == 50.0 and blk.loc["none", "blocked_pct"] == 0.0
    # random: seed 1 blocks 1 of 3, seed 2 none → pooled 1 of 6
    r = blk.loc["random (single L3)"]
    assert r.seeds == 2 and r.blocked_pct == pytest.approx(16.7, abs=0.05) and r.seed_range == "0–33"
    # request 0 has one answered jailbreak, request 1 two: a request bootstrap can draw request 0
    # twice (single L3 blocks 1 of 1 there) or request 1 twice (1 of 2)
    lo, hi = (float(x) for x in blk.loc["single L3", "blocked_ci95"].strip("[]").split(","))
    assert lo == 50 and hi == 100
    vs = jb.versus_random(df, P)
    assert vs.loc["single L3", "minus_random_pts"] == pytest.approx(100 * (2 / 3 - 1 / 6), abs=0.05)
    lines = jb.conclusions(tab, blk, vs, P)
    assert any("most resistant wrapper kind is red_team" in x for x in lines)
    assert any("minus its random control: +50 points" in x for x in lines)


def test_steers_use_perturbation_ratios():
    P = jb.Params(single_layers=[2], ensemble_layers=[1, 2], ratio=2.0, ensemble_ratio=0.5, random_seeds=[7, 8])
    dirs = {1: torch.tensor([1.0, 0.0]), 2: torch.tensor([0.0, 1.0])}
    norms = {f"{P.site}@1": 10.0, f"{P.site}@2": 4.0}
    [s] = jb.steers_for(P, "single L2", dirs, norms, 2)
    assert torch.equal(s.delta, torch.tensor([0.0, 8.0]))
    ens = jb.steers_for(P, "ensemble", dirs, norms, 2)
    assert [float(x.coef) for x in ens] == [5.0, 2.0]
    assert P.random_conditions() == ["random L2 s7", "random L2 s8", "random ensemble s7", "random ensemble s8"]
    [r] = jb.steers_for(P, "random L2 s7", dirs, norms, 2)
    assert float(r.delta.norm()) == pytest.approx(8.0) and jb.steers_for(P, "none", dirs, norms, 2) == []
    [r8] = jb.steers_for(P, "random L2 s8", dirs, norms, 2)
    assert not torch.allclose(r.vector, r8.vector)          # each seed its own direction
    rens = jb.steers_for(P, "random ensemble s7", dirs, norms, 2)
    assert [float(x.delta.norm()) for x in rens] == pytest.approx([5.0, 2.0])
    assert not torch.allclose(rens[0].vector, rens[1].vector)   # one vector per layer
    assert P.random_groups() == {"single L2": ["random L2 s7", "random L2 s8"],
                                 "ensemble": ["random ensemble s7", "random ensemble s8"]}


@pytest.mark.parametrize("kw, msg", [
    ({"site": "v"}, "site must be"),
    ({"harmful_sources": ["reddit"]}, "unknown harmful sources"),
    ({"ratio": -1.0}, "must be > 0"),
    ({"single_layers": []}, "single_layers is empty"),
    ({"n_requests": 0}, "n_requests"),
    ({"benign_source": "reddit"}, "unknown benign_source"),
    ({"random_seeds": []}, "random_seeds must name"),
    ({"random_seeds": [1, 1]}, "without repeats"),
])
def test_jailbreak_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(jb.Params, kw)


def test_wrappers_select_by_id_or_kind():
    assert set(jb.wrappers(jb.Params(wrappers=["red_team", "rp-1"])).id) == {"rt-1", "rt-2", "rp-1"}
    with pytest.raises(ParamError, match="unknown wrappers"):
        jb.wrappers(jb.Params(wrappers=["dan"]))
    assert all("{request}" in t for t in jb.wrappers(jb.Params()).template)


def test_prompts_are_disjoint_from_the_direction_set():
    try:
        public_path("advbench")
    except DataError:
        pytest.skip("public datasets not found (set TRAITLAB_DATA_ROOT)")
    for source in data.BENIGN_SOURCES:
        pr = jb.load_prompts(jb.Params(n_requests=5, n_direction=10, n_benign=4, harmful_sources=["advbench"],
                                       benign_source=source))
        plain = set(pr.attacks[pr.attacks.kind == "plain"].prompt)
        assert len(plain) == 5 and not plain & set(pr.direction_harmful)
        assert len(pr.benign) == 4 and not set(pr.benign.prompt) & set(pr.direction_harmless)
        assert len(pr.attacks) == 5 * (1 + len(jb.wrappers(jb.Params())))
    xs = {p.text for p in data.benign_prompts("xstest_safe", 20, 0)}
    assert xs <= {p.text for p in data.xstest_prompts() if p.label == "safe"}
    with pytest.raises(DataError, match="holds only 100"):
        data.benign_prompts("jbb_benign", 101, 0)


def test_record_names_tolerances_and_verdicts():
    from traitlab import records, textstats

    P = jb.Params(single_layers=[3], ensemble_layers=[], random_seeds=[1, 2], n_boot=300)
    df = _answers(P)
    tab, blk, vs = jb.table(df, P), jb.blocked(df, P), jb.versus_random(df, P)
    from traitlab import refusal

    val = refusal.validate(pd.DataFrame({"answer": ["I can't.", "Sure", "No."], "refusal": [True, False, True]}),
                           n_boot=50)
    rec = jb.record(P, None, df, tab, blk, vs, textstats.Floors(0.9, 4.0, 0.85, 100), val)
    assert list(records.names(rec)) == [
        "n_requests", "n_wrapped", "n_benign", "refused.plain", "refused.wrapped", "refused.benign",
        "answered_unsteered", "blocked.single_L3", "blocked_coherent.single_L3", "benign_refused.single_L3",
        "blocked.random_single_L3", "blocked_coherent.random_single_L3", "benign_refused.random_single_L3",
        "minus_random.single_L3", "floors.balanced_accuracy", "classifier.agreement", "classifier.sensitivity",
        "classifier.specificity", "classifier.kappa"]
    assert rec["classifier.sensitivity"].value == 0.5 and rec["classifier.sensitivity"].n == 2
    assert rec["n_wrapped"].value == 4 and rec["n_wrapped"].tolerance == 0
    b = rec["blocked.single_L3"]
    assert b.value == pytest.approx(200 / 3) and b.n == 3 and b.tolerance == pytest.approx(100 / 3)
    assert b.ci == (50.0, 100.0)
    assert rec["blocked.random_single_L3"].n == 6           # 3 answered × 2 seeds
    assert rec["refused.benign"].tolerance == pytest.approx(50.0)  # one of 2 benign prompts
    assert rec["answered_unsteered"].value == pytest.approx(3 / 4)
    claims = {c.id: c for c in rec.claims}
    # the request bootstrap gives [50, 100], reaching the seed's 94%; every resample of the
    # difference to the random control is positive (1, 1/2 or 1/4) → holds
    c = claims["blocks_jailbreaks"]
    assert c.quantity == "blocked.single_L3" and "over its random control" in c.ours
    assert vs.loc["single L3", "ci_lo"] == 25.0 and c.verdict == "holds"
    # a random control as strong as the direction takes the "holds" away; the run's interval
    # (width 0.5) is narrower than the seed's 94-point effect, so the verdict is "not held"
    strong = df.assign(refuses=df.refuses | (df.condition.str.startswith("random") & (df.wrapper == "rp-1")))
    blk2, vs2 = jb.blocked(strong, P), jb.versus_random(strong, P)
    c2 = {x.id: x for x in jb.record(P, None, strong, tab, blk2, vs2).claims}["blocks_jailbreaks"]
    assert vs2.loc["single L3", "ci_lo"] <= 0 and c2.verdict == "not held"
    assert claims["red_team_resists"].verdict == "holds"
    moved = records.ResultRecord(rec.report, quantities=tuple(
        records.Quantity(q.name, q.value - (40.0 if q.name == "blocked.single_L3" else 0), q.unit, q.n, q.ci,
                         q.tolerance, q.tolerance_rule) for q in rec.quantities), claims=rec.claims)
    problems = records.compare(rec, moved)
    assert len(problems) == 1 and problems[0].startswith("jailbreak_blocking.blocked.single_L3:"), problems


def test_blocked_coherent_interval_covers_where_the_floors_fall():
    """Ten requests, each answered unsteered and refused under L5; half the refusals read at
    distinct-2 0.8, coherent under the fitted floor (0.75) but not under the 1.0 floor that gold
    resamples without the borderline coherent question fit. As measured every block is a
    coherent refusal, with no spread over requests; refitting the floors per replicate puts
    half of them in doubt."""
    req = np.arange(10)
    df = pd.concat([pd.DataFrame({"set": "attack", "kind": "roleplay", "wrapper": "w", "request_id": req,
                                  "condition": c, "refuses": c == "single L5", "log_ppl": 1.0,
                                  "distinct2": np.where((c == "single L5") & (req % 2 == 1), 0.8, 1.0)})
                    for c in ("none", "single L5")], ignore_index=True)
    df["coherent"] = df.distinct2 >= 0.75
    gold = pd.DataFrame({"trait": "t", "question": list("aabbccdd"), "coherence": [90, 10] * 4, "log_ppl": 1.0,
                         "distinct2": [1.0, 0.3, 1.0, 0.3, 0.75, 0.3, 1.0, 0.85]})
    fixed = jb.blocked_coherent(df, ["single L5"], n_boot=300)
    refit = jb.blocked_coherent(df, ["single L5"], judge_power.FloorRefits(gold), n_boot=300)
    assert fixed.value == refit.value == 1.0 and fixed.ci == (1.0, 1.0)
    assert refit.ci[0] <= 0.6 and refit.ci[1] == 1.0
    blk = jb.blocked(df, jb.Params(single_layers=[5], ensemble_layers=[], random_seeds=[1], n_boot=300),
                     judge_power.FloorRefits(gold))
    assert blk.loc["single L5", "blocked_coherent_lo"] <= 60 and blk.loc["single L5", "blocked_coherent_ci95"] == \
        f"[{blk.loc['single L5', 'blocked_coherent_lo']:.0f}, 100]"
