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
                  n_test_questions=2, max_new_tokens=3, n_system_prompts=3, n_boot=20)
    sites = [Site("resid_pre", 0), Site("resid_pre", 1)]
    tv = el.trait_vectors(P, lm, "sycophancy", sites, progress=False)
    assert set(tv.natural) == set(tv.instruction) == {0, 1}
    a = tv.instruction_answers
    # train: every question under every paraphrase and polarity; test: question i under paraphrase i mod 3
    assert (a.split == "train").sum() == 2 * 3 * 2 and (a.split == "test").sum() == 2 * 2
    assert sorted(a[a.split == "test"].prompt.unique()) == [0, 1]
    assert len(tv.instruction_train[1]) == 12 and np.bincount(tv.instruction_train_question).tolist() == [6, 6]
    boot = el.cosine_bootstrap(P, tv)
    cmp = el.compare("sycophancy", tv, boot)
    n, i = tv.natural[1], tv.instruction[1]
    assert cmp.loc[("sycophancy", 1), "cosine"] == pytest.approx(float(n @ i / (n.norm() * i.norm())), abs=1e-6)
    assert boot[1].value == pytest.approx(cmp.loc[("sycophancy", 1), "cosine"])
    assert boot["mean"].draws == pytest.approx((boot[0].draws + boot[1].draws) / 2)  # the mean over layers, per draw
    r = cmp.loc[("sycophancy", 1)]
    assert 0 <= r.instruction_on_natural_lo <= r.instruction_on_natural_acc <= r.instruction_on_natural_hi <= 100
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
    assert {"optimism", "sycophancy", "formality", "humor"} <= set(el.instructions())
    tr, te = el.questions("sycophancy", "train", None), el.questions("sycophancy", "test", None)
    assert len(tr) == 10 and len(te) >= 20 and not set(tr.question) & set(te.question)
    for t, pols in el.instructions().items():
        assert len(pols["positive"]) >= 5 and len(pols["negative"]) >= 5, t  # paraphrases per polarity
        assert len(set(pols["positive"] + pols["negative"])) == len(pols["positive"]) + len(pols["negative"])


@pytest.mark.parametrize("kw, msg", [
    ({"traits": ["whimsy"]}, "no judge description"),
    ({"steer_layers": [9]}, "subset of layers"),
    ({"method": "random"}, "method"),
    ({"n_test_questions": 1}, "n_test_questions"),
    ({"n_system_prompts": 0}, "n_system_prompts"),
])
def test_elicitation_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(el.Params, kw)


def test_missing_system_prompts_are_named():
    with pytest.raises(ParamError, match="no system prompts for 'uncertainty'"):
        el.Params(model="smollm2-135m-instruct", traits=["uncertainty"], layers=[1], steer_layers=[1]).check()


def test_too_many_system_prompts_are_named():
    with pytest.raises(ParamError, match="n_system_prompts asks for 9"):
        el.Params(model="smollm2-135m-instruct", layers=[1], steer_layers=[1], n_system_prompts=9).check()


def _tv(cos_noise=0.0, n_q=6, sep=2.0):
    """Vectors whose training data agree up to ``cos_noise``: natural pairs along ``nat``,
    instructed answers (n_q questions × 2 paraphrases × 2 polarities) along ``nat + noise``."""
    import torch

    g = torch.Generator().manual_seed(0)
    d = 8
    nat = torch.randn(d, generator=g)
    ins = nat + cos_noise * torch.randn(d, generator=g)
    pos, neg = torch.randn(6, d, generator=g) + sep * nat, torch.randn(6, d, generator=g) - sep * nat
    rows_q = np.repeat(np.arange(n_q), 4)
    is_pos = np.tile([True, False], 2 * n_q)
    a = torch.randn(4 * n_q, d, generator=g) + sep * torch.from_numpy(np.where(is_pos, 1.0, -1.0))[:, None].float() * ins
    ip, ineg = a[torch.from_numpy(is_pos)], a[~torch.from_numpy(is_pos)]
    v_nat = (pos.mean(0) - neg.mean(0)) / (pos.mean(0) - neg.mean(0)).norm()
    v_ins = (ip.mean(0) - ineg.mean(0)) / (ip.mean(0) - ineg.mean(0)).norm()
    return el.TraitVectors({1: v_nat}, {1: v_ins}, {1: (pos, neg)}, {1: (ip, ineg)}, pd.DataFrame(),
                           {1: (pos, neg)}, {1: a}, rows_q, is_pos)


def _judged(deltas):
    rows = []
    for trait, by_src in deltas.items():
        rows += [{"trait": trait, "vector": "none", "layer": -1, "question": f"q{k}", "answer": "", "score": 50.0}
                 for k in range(4)]
        for src, d in by_src.items():
            rows += [{"trait": trait, "vector": src, "layer": 1, "question": f"q{k}", "answer": "", "score": 50.0 + x}
                     for k, x in enumerate(d)]
    return pd.DataFrame(rows)


def _instructed(deltas):
    """Judged instructed answers: per trait, positive minus negative = ``deltas[trait]`` per question."""
    rows = []
    for trait, d in deltas.items():
        for k, x in enumerate(d):
            rows += [{"trait": trait, "question": f"q{k}", "polarity": "negative", "prompt": 0, "answer": "",
                      "score": 40.0},
                     {"trait": trait, "question": f"q{k}", "polarity": "positive", "prompt": 0, "answer": "",
                      "score": 40.0 + x}]
    return pd.DataFrame(rows)


def _results(P, vecs, steered, instructed):
    cos = {t: el.cosine_bootstrap(P, vecs[t]) for t in P.traits}
    cmp = pd.concat([el.compare(t, vecs[t], cos[t]) for t in P.traits])
    return el.Results(vecs, cos, cmp, instructed, steered)


def test_instructed_effect_is_a_paired_difference():
    e = el.instructed_effect(_instructed({"optimism": [20.0, 18.0, 22.0], "sycophancy": [1.0, -1.0, 0.0]}))
    d = np.array([20.0, 18.0, 22.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    r = e.loc["optimism"]
    assert (r.positive, r.negative, r.delta, r.n) == (60.0, 40.0, 20.0, 3)
    assert r.ci_lo == pytest.approx(20 - half) and r.differ
    assert r.mde == pytest.approx((stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * d.std(ddof=1) / np.sqrt(3))
    assert not e.loc["sycophancy"].differ


def test_record_quantities_claims_and_golden_check():
    from traitlab import records

    P = el.Params(model="smollm2-135m-instruct", layers=[1], steer_layers=[1], n_boot=200)
    vecs = {"optimism": _tv(0.1), "sycophancy": _tv(3.0)}
    strong = {"optimism": [30, 32, 29, 31], "sycophancy": [25, 27, 26, 24]}
    steered = _judged({"optimism": {"natural": [20, 22, 18, 21], "instruction": [10, 12, 9, 11]},
                       "sycophancy": {"natural": [1, -2, 0, 1], "instruction": [15, 14, 16, 13]}})
    res = _results(P, vecs, steered, _instructed(strong))
    rec = el.record(P, res)
    cb = res.cosines["optimism"]["mean"]
    assert rec["optimism_cosine_mean"].value == pytest.approx(res.comparison.loc[("optimism", 1), "cosine"])
    assert rec["optimism_cosine_mean"].ci == pytest.approx(cb.ci)
    assert rec["optimism_cosine_mean"].tolerance == pytest.approx(3 * max(cb.se, 0.005))
    assert rec["optimism_natural_detect"].tolerance == pytest.approx(100 / 12)  # one of 12 held-out examples, in %
    assert rec["optimism_natural_best_delta"].value == pytest.approx(20.25)
    assert rec["sycophancy_instructed_delta"].value == pytest.approx(25.5)
    v = {c.id: c.verdict for c in rec.claims}
    assert v["optimism_natural_steers"] == v["optimism_instruction_steers"] == "holds"
    assert v["sycophancy_instruction_steers"] == "holds"
    assert v["sycophancy_natural_no_steer"] == "holds"  # the instruction vector is the positive control
    assert v["cosine_cognitive_vs_behavioural"] == "holds" and v["optimism_cosine_above_0.5"] == "holds"
    assert v["optimism_cross_projection"] == "holds"  # aligned vectors, separated data
    assert records.compare(rec, rec) == []
    moved = _judged({"optimism": {"natural": [0, 2, -2, 1], "instruction": [10, 12, 9, 11]},
                     "sycophancy": {"natural": [1, -2, 0, 1], "instruction": [15, 14, 16, 13]}})
    rec2 = el.record(P, _results(P, vecs, moved, _instructed(strong)))
    problems = records.compare(rec, rec2)
    assert any(p.startswith("elicitation.optimism_natural_best_delta:") for p in problems)
    assert any("claim optimism_natural_steers: verdict 'not held'" in p for p in problems)  # positive control


def test_steering_nulls_need_power():
    """Nothing steers: a null is 'not held' only where the cell's minimum detectable effect is below
    the difference the instructions make; a judge that cannot tell the instructed answers apart
    leaves every steering claim inconclusive."""
    P = el.Params(model="smollm2-135m-instruct", layers=[1], steer_layers=[1], n_boot=50)
    vecs = {"optimism": _tv(0.1), "sycophancy": _tv(3.0)}
    flat = _judged({"optimism": {"natural": [1, -1, 0, 0], "instruction": [0, 1, -1, 0]},
                    "sycophancy": {"natural": [1, -1, 0, 0], "instruction": [0, 1, -1, 0]}})
    seen = el.record(P, _results(P, vecs, flat, _instructed({"optimism": [30, 32, 29, 31],
                                                             "sycophancy": [25, 27, 26, 24]})))
    v = {c.id: (c.verdict, c.reason) for c in seen.claims}
    assert v["optimism_natural_steers"][0] == "not held" and "could detect" in v["optimism_natural_steers"][1]
    assert v["sycophancy_natural_no_steer"][0] == "holds"
    blind = el.record(P, _results(P, vecs, flat, _instructed({"optimism": [2, -3, 1, 0], "sycophancy": [0, 1, -1, 0]})))
    v = {c.id: (c.verdict, c.reason) for c in blind.claims}
    for cid in ("optimism_natural_steers", "optimism_instruction_steers", "sycophancy_instruction_steers",
                "sycophancy_natural_no_steer"):
        assert v[cid][0] == "inconclusive" and "could not tell" in v[cid][1], cid
        assert "the instructions left 4/4 answer pairs word for word the same" in v[cid][1], cid  # all ""
    assert blind["optimism_instructed.same"].value == 1.0 and blind["sycophancy_instructed.similarity"].value == 1.0


def test_the_probe_reading_needs_a_local_judge_and_a_gold_set_per_trait():
    with pytest.raises(ParamError, match="reading 'probe' reads the judge model's activations"):
        el.Params(judge_backend="openai", judge_model="gpt-4.1-mini")
    assert el.Params(judge_backend="openai", judge_model="gpt-4.1-mini", reading="absolute").reading == "absolute"
    candour = {"candour": "saying plainly what one thinks."}  # a trait without gold
    with pytest.raises(ParamError, match=r"no gold set for \['candour'\]"):
        el.Params(traits=["optimism", "candour"], trait_descriptions=candour).check()
