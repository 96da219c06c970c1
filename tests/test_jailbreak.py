"""Jailbreak blocking: Wilson intervals, the blocked/over-refusal tables on hand-made answers,
steer construction, early errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from traitlab.data import DataError, public_path
from traitlab.experiments import jailbreak_blocking as jb
from traitlab.params import ParamError, validate
from traitlab.uncertainty import wilson


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
    }
    kinds = {"plain": "plain", "rp-1": "roleplay", "rt-1": "red_team"}
    for cond in P.conditions():
        for w, k in kinds.items():
            for r in (0, 1):
                default = cond.startswith("single") and w != "rt-1"
                rows.append({"condition": cond, "set": "attack", "kind": k, "wrapper": w, "request_id": r,
                             "prompt": "p", "answer": "a", "refuses": refuse.get((cond, w, r), default)})
        for b in (0, 1):
            rows.append({"condition": cond, "set": "benign", "kind": "benign", "wrapper": "benign",
                         "request_id": -1, "prompt": "b", "answer": "a",
                         "refuses": cond.startswith("single") and b == 0})
    return pd.DataFrame(rows)


def test_table_and_blocked_are_exact():
    P = jb.Params(single_layers=[3], ensemble_layers=[])
    df = _answers(P)
    tab = jb.table(df, P)
    assert list(tab.columns) == ["none", "single L3", "random L3"]
    assert tab.loc["plain", "none"] == 50.0 and tab.loc["all wrapped", "none"] == 25.0
    assert tab.loc["roleplay", "single L3"] == 100.0 and tab.loc["red_team", "single L3"] == 0.0
    blk = jb.blocked(df, P)
    # answered unsteered: rp-1/0, rp-1/1, rt-1/1 → single L3 refuses both rp-1 → 2/3 blocked
    assert blk.loc["single L3", "jailbreaks_answered_unsteered"] == 3
    assert blk.loc["single L3", "blocked_pct"] == pytest.approx(66.7, abs=0.05)
    assert blk.loc["single L3", "benign_refusal_pct"] == 50.0 and blk.loc["none", "blocked_pct"] == 0.0
    lines = jb.conclusions(tab, blk, P)
    assert any("most resistant wrapper kind is red_team" in x for x in lines)


def test_steers_use_perturbation_ratios():
    P = jb.Params(single_layers=[2], ensemble_layers=[1, 2], ratio=2.0, ensemble_ratio=0.5)
    dirs = {1: torch.tensor([1.0, 0.0]), 2: torch.tensor([0.0, 1.0])}
    norms = {f"{P.site}@1": 10.0, f"{P.site}@2": 4.0}
    [s] = jb.steers_for(P, "single L2", dirs, norms, 2)
    assert torch.equal(s.delta, torch.tensor([0.0, 8.0]))
    ens = jb.steers_for(P, "ensemble", dirs, norms, 2)
    assert [float(x.coef) for x in ens] == [5.0, 2.0]
    [r] = jb.steers_for(P, "random L2", dirs, norms, 2)
    assert float(r.delta.norm()) == pytest.approx(8.0) and jb.steers_for(P, "none", dirs, norms, 2) == []


@pytest.mark.parametrize("kw, msg", [
    ({"site": "v"}, "site must be"),
    ({"harmful_sources": ["reddit"]}, "unknown harmful sources"),
    ({"ratio": -1.0}, "must be > 0"),
    ({"single_layers": []}, "single_layers is empty"),
    ({"n_requests": 0}, "n_requests"),
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
    pr = jb.load_prompts(jb.Params(n_requests=5, n_direction=10, n_benign=4, harmful_sources=["advbench"]))
    plain = set(pr.attacks[pr.attacks.kind == "plain"].prompt)
    assert len(plain) == 5 and not plain & set(pr.direction_harmful)
    assert not set(pr.benign.prompt) & set(pr.direction_harmless)
    assert len(pr.attacks) == 5 * (1 + len(jb.wrappers(jb.Params())))


def test_record_names_tolerances_and_verdicts():
    from traitlab import records

    P = jb.Params(single_layers=[3], ensemble_layers=[])
    df = _answers(P)
    tab, blk = jb.table(df, P), jb.blocked(df, P)
    rec = jb.record(P, None, df, tab, blk)
    assert list(records.names(rec)) == [
        "n_requests", "n_wrapped", "n_benign", "refused.plain", "refused.wrapped", "refused.benign",
        "answered_unsteered", "blocked.single_L3", "benign_refused.single_L3", "blocked.random_L3",
        "benign_refused.random_L3"]
    assert rec["n_wrapped"].value == 4 and rec["n_wrapped"].tolerance == 0
    b = rec["blocked.single_L3"]
    assert b.value == pytest.approx(66.7) and b.n == 3 and b.tolerance == pytest.approx(100 / 3)
    assert rec["refused.benign"].tolerance == pytest.approx(50.0)  # one of 2 benign prompts
    assert rec["answered_unsteered"].value == pytest.approx(3 / 4)
    claims = {c.id: c for c in rec.claims}
    # 2 of 3 blocked: Wilson [21%, 94%) stays below the seed's 94%, and the interval (width 0.73)
    # is narrower than the seed's effect, so the run had the power to see it
    assert claims["blocks_jailbreaks"].verdict == "not held"
    assert claims["blocks_jailbreaks"].quantity == "blocked.single_L3"
    assert claims["red_team_resists"].verdict == "holds"
    moved = records.ResultRecord(rec.report, quantities=tuple(
        records.Quantity(q.name, q.value - (40.0 if q.name == "blocked.single_L3" else 0), q.unit, q.n, q.ci,
                         q.tolerance, q.tolerance_rule) for q in rec.quantities), claims=rec.claims)
    problems = records.compare(rec, moved)
    assert len(problems) == 1 and problems[0].startswith("jailbreak_blocking.blocked.single_L3:"), problems
