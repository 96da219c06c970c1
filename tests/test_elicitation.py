"""Elicitation: vectors from a tiny model, exact comparison and steering-effect maths, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from traitlab.experiments import elicitation as el
from traitlab.models import load_model
from traitlab.params import ParamError, validate
from traitlab.sites import Site


def test_vectors_and_comparison_on_a_tiny_model():
    lm = load_model("tiny-qwen2")
    P = el.Params(model="tiny-qwen2", layers=[0, 1], steer_layers=[1], n_instruction_questions=2,
                  n_test_questions=2, max_new_tokens=3)
    sites = [Site("resid_pre", 0), Site("resid_pre", 1)]
    tv = el.trait_vectors(P, lm, "sycophancy", sites, progress=False)
    assert set(tv.natural) == set(tv.instruction) == {0, 1}
    assert len(tv.instruction_answers) == 2 * 2 * 2  # splits × questions × polarities
    cmp = el.compare("sycophancy", tv)
    n, i = tv.natural[1], tv.instruction[1]
    assert cmp.loc[("sycophancy", 1), "cosine"] == pytest.approx(float(n @ i / (n.norm() * i.norm())), abs=1e-6)
    assert 0 <= cmp.loc[("sycophancy", 1), "instruction_on_natural_acc"] <= 100
    ans = el.steer(P, lm, "sycophancy", tv, progress=False)
    assert list(ans.vector.unique()) == ["none", "natural", "instruction"] and len(ans) == 2 * 3


def test_steering_effect_is_a_paired_difference():
    rows = [{"trait": "optimism", "vector": "none", "layer": -1, "question": f"q{k}", "answer": "", "score": s}
            for k, s in enumerate([50.0, 40.0, 60.0])]
    rows += [{"trait": "optimism", "vector": "natural", "layer": 8, "question": f"q{k}", "answer": "", "score": s}
             for k, s in enumerate([70.0, 55.0, 90.0])]
    eff = el.steering_effect(pd.DataFrame(rows))
    r = eff.loc[("optimism", "natural", 8)]
    d = np.array([20.0, 15.0, 30.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert r.delta == pytest.approx(d.mean()) and r.delta_ci95 == f"[{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"
    assert r.steers == bool(d.mean() - half > 0)


def test_questions_and_instructions():
    assert set(el.instructions()) == {"optimism", "sycophancy"}
    tr, te = el.questions("sycophancy", "train", None), el.questions("sycophancy", "test", None)
    assert len(tr) == len(te) == 10 and not set(tr.question) & set(te.question)


@pytest.mark.parametrize("kw, msg", [
    ({"traits": ["whimsy"]}, "no judge description"),
    ({"steer_layers": [9]}, "subset of layers"),
    ({"method": "random"}, "method"),
    ({"n_test_questions": 1}, "n_test_questions"),
])
def test_elicitation_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(el.Params, kw)


def test_missing_system_prompts_are_named():
    with pytest.raises(ParamError, match="no system prompts for 'humor'"):
        el.Params(model="smollm2-135m-instruct", traits=["humor"], layers=[1], steer_layers=[1]).check()


def _tv(cos_noise=0.0):
    import torch

    g = torch.Generator().manual_seed(0)
    nat = torch.randn(8, generator=g)
    ins = nat + cos_noise * torch.randn(8, generator=g)
    pos, neg = torch.randn(4, 8, generator=g) + nat, torch.randn(4, 8, generator=g) - nat
    return el.TraitVectors({1: nat}, {1: ins}, {1: (pos, neg)}, {1: (pos, neg)}, pd.DataFrame())


def _judged(deltas):
    rows = []
    for trait, by_src in deltas.items():
        rows += [{"trait": trait, "vector": "none", "layer": -1, "question": f"q{k}", "answer": "", "score": 50.0}
                 for k in range(4)]
        for src, d in by_src.items():
            rows += [{"trait": trait, "vector": src, "layer": 1, "question": f"q{k}", "answer": "", "score": 50.0 + x}
                     for k, x in enumerate(d)]
    return pd.DataFrame(rows)


def test_record_quantities_claims_and_golden_check():
    from traitlab import records

    P = el.Params(model="smollm2-135m-instruct", layers=[1], steer_layers=[1])
    vecs = {"optimism": _tv(0.1), "sycophancy": _tv(3.0)}
    judged = _judged({"optimism": {"natural": [20, 22, 18, 21], "instruction": [10, 12, 9, 11]},
                      "sycophancy": {"natural": [1, -2, 0, 1], "instruction": [15, 14, 16, 13]}})
    cmp = pd.concat([el.compare(t, vecs[t]) for t in P.traits])
    eff = el.steering_effect(judged)
    vs = el.versus_seed(cmp, eff)
    rec = el.record(P, vecs, cmp, judged, eff, vs)
    assert rec["optimism_cosine_mean"].value == pytest.approx(cmp.loc[("optimism", 1), "cosine"])
    assert rec["optimism_cosine_mean"].tolerance >= 0.03  # 3 × split-sample SE, at least 0.01
    assert rec["optimism_natural_detect"].tolerance == pytest.approx(100 / 8)  # one of 8 held-out examples, in %
    assert rec["optimism_natural_best_delta"].value == pytest.approx(20.25)
    v = {c.id: c.verdict for c in rec.claims}
    assert v["optimism_natural_steers"] == v["optimism_instruction_steers"] == "holds"
    assert v["sycophancy_instruction_steers"] == "holds"
    assert v["sycophancy_natural_no_steer"] == "holds"  # the instruction vector is the positive control
    assert records.compare(rec, rec) == []
    moved = _judged({"optimism": {"natural": [0, 2, -2, 1], "instruction": [10, 12, 9, 11]},
                     "sycophancy": {"natural": [1, -2, 0, 1], "instruction": [15, 14, 16, 13]}})
    eff2 = el.steering_effect(moved)
    rec2 = el.record(P, vecs, cmp, moved, eff2, el.versus_seed(cmp, eff2))
    problems = records.compare(rec, rec2)
    assert any(p.startswith("elicitation.optimism_natural_best_delta:") for p in problems)
    assert any("claim optimism_natural_steers: verdict 'not held'" in p for p in problems)  # positive control
