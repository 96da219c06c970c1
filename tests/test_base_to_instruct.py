"""Base → instruct detection: exact detection maths, a tiny-model read, early errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab.chat import ChatFormat
from traitlab.experiments import base_to_instruct as bi
from traitlab.models import load_model
from traitlab.params import ParamError, validate
from traitlab.sites import Site


def test_detection_is_exact():
    rows = [{"model": "sft", "group": g, "prompt": f"{g}{i}", "layer": 8, "mean": v, "refuses": g == "harmful" and i == 0,
             "answer": ""} for g, vals in (("harmful", [3.0, 2.0, 1.0]), ("benign", [0.0, 1.5, -1.0]))
            for i, v in enumerate(vals)]
    det = bi.detection(pd.DataFrame(rows), bi.Params(n_boot=200))
    r = det.loc[("sft", 8)]
    assert r.separation == pytest.approx(2.0 - 1 / 6)
    assert r.auroc == pytest.approx(8 / 9)  # benign 1.5 beats harmful 1.0: one loss among 9 pairs
    sd = np.sqrt((np.var([3, 2, 1], ddof=1) + np.var([0, 1.5, -1], ddof=1)) / 2)
    assert r.separation_sd == pytest.approx((2.0 - 1 / 6) / sd)
    assert r.harmful_refused_pct == pytest.approx(100 / 3) and r.benign_refused_pct == 0
    assert "sft: best layer L8" in bi.conclusions(det)[0]


def test_read_on_a_tiny_model():
    lm = load_model("tiny-llama")
    P = bi.Params(max_new_tokens=3)
    req = pd.DataFrame({"group": ["harmful", "benign"], "prompt": ["Do harm", "Say hi"]})
    v = {Site("attn_out", 1): torch.ones(lm.d_model)}
    traces = bi.read(P, lm, ChatFormat.plain(lm.tokenizer), v, req)
    pp = bi.per_prompt("base", req, traces)
    assert set(pp.group) <= {"harmful", "benign"} and (pp.layer == 1).all()
    tr = bi.trajectories("base", req, traces)
    assert len(tr) == sum(len(t.tokens) for t in traces)


@pytest.mark.parametrize("kw, msg", [
    ({"method": "random"}, "method"),
    ({"site": "v"}, "site must be"),
    ({"models": {"sft": "x"}}, "must name base"),
    ({"n_harmful": 0}, "n_harmful"),
    ({"steer_ratios": [1.0], "steer_claim_ratio": 1.0}, "needs claim_layer"),
    ({"steer_ratios": [1.0], "claim_layer": 4, "steer_claim_ratio": 2.0}, "must be one of steer_ratios"),
    ({"steer_ratios": [-1.0], "claim_layer": 4, "steer_claim_ratio": -1.0}, "positive"),
    ({"steer_random": 3}, "need steer_ratios"),
])
def test_base_to_instruct_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(bi.Params, kw)


def test_layers_checked_for_every_model():
    with pytest.raises(ParamError, match="qwen2.5-coder-0.5b-instruct"):
        bi.Params(chain_profile="ci", layers=[10], template_layers=[40]).check()


def _pp(n: int, shift: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model, s in shift.items():
        for layer in (4, 8):
            for g in ("harmful", "benign"):
                for i in range(n):
                    rows.append({"model": model, "group": g, "prompt": f"{g}{i}", "layer": layer,
                                 "mean": rng.normal() + (s * (layer / 8) if g == "harmful" else 0.0),
                                 "refuses": g == "harmful" and i == 0, "answer": ""})
    return pd.DataFrame(rows)


def test_record_names_tolerances_and_verdicts():
    from traitlab import records

    P = bi.Params(n_boot=100)
    pp = _pp(16, {"base": 0.0, "sft": 0.0, "dpo": 3.0, "instruct, chat template": 0.0})
    rec = bi.record(P, None, bi.detection(pp, P), pp)
    names = records.names(rec)
    assert {"n_harmful", "n_benign", "auroc.dpo", "accuracy.dpo", "separation_sd.dpo",
            "harmful_refused.dpo", "auroc.instruct__chat_template"} <= set(names)
    assert rec["n_harmful"].value == 16 and rec["n_harmful"].tolerance == 0
    a = rec["auroc.dpo"]
    assert a.tolerance == pytest.approx(2 * bi.auroc_se(a.value, 16, 16)) and a.tolerance > 0
    assert rec["accuracy.dpo"].tolerance == pytest.approx(200 / 32)  # two of 32 items, in %
    assert rec["harmful_refused.dpo"].tolerance == pytest.approx(100 / 16)
    claims = {c.id: c for c in rec.claims}
    assert claims["base_vector_detects_chain"].verdict == "holds"  # dpo separates by 3 SD
    # the instruct model does not separate; at 16+16 prompts the MDE (0.29) is below the seed's 0.4
    assert claims["base_vector_detects_template"].verdict == "not held"
    assert claims["raw_separation"].verdict == "not comparable"
    assert bi.auroc_se(1.0, 3, 3) == pytest.approx(1 / 9)  # never a tolerance of 0
    moved = records.ResultRecord(rec.report, quantities=tuple(
        records.Quantity(q.name, q.value - (1.5 * q.tolerance if q.name == "auroc.dpo" else 0), q.unit, q.n,
                         q.ci, q.tolerance, q.tolerance_rule) for q in rec.quantities), claims=rec.claims)
    problems = records.compare(rec, moved)
    assert len(problems) == 1 and problems[0].startswith("base_to_instruct.auroc.dpo:"), problems
    assert records.compare(rec, rec) == []


def test_refused_vs_complied_and_the_random_null_are_exact():
    """Among harmful answers, refused vs complied gets its own AUROC; random directions give a
    folded-AUROC null; too few refusals give NaN, not a number from two answers."""
    rows = []
    refused = [3.0, 2.5, 2.0, 1.0]
    complied = [0.5, 1.5, -1.0, 0.0]
    for i, v in enumerate(refused + complied):
        rows.append({"model": "dpo", "group": "harmful", "prompt": f"h{i}", "direction": "refusal", "layer": 6,
                     "mean": v, "refuses": i < 4, "answer": ""})
    for i, v in enumerate([0.0, -0.5, 0.2, -1.0]):
        rows.append({"model": "dpo", "group": "benign", "prompt": f"b{i}", "direction": "refusal", "layer": 6,
                     "mean": v, "refuses": False, "answer": ""})
    # two random directions: one anti-aligned with the harmful group (folds to its mirror), one flat
    for k, sign in ((0, -1.0), (1, 0.0)):
        for r in [dict(x) for x in rows if x["direction"] == "refusal"]:
            r["direction"], r["mean"] = f"random{k}", sign * r["mean"]
            rows.append(r)
    pp = pd.DataFrame(rows)
    P = bi.Params(n_boot=100, layers=[6], claim_layer=6, n_random=2)
    det = bi.detection(pp, P)
    r = det.loc[("dpo", 6)]
    assert (r.n_refused, r.n_complied) == (4, 4)
    assert r.refusal_auroc == pytest.approx(15 / 16)  # complied 1.5 beats refused 1.0: one of 16 pairs
    assert r.auroc == pytest.approx(bi.auroc(np.array(refused + complied), np.array([0.0, -0.5, 0.2, -1.0])))
    null = bi.null_aurocs(pp, P)
    folded = max(r.auroc, 1 - r.auroc)  # random0 is the mirror image: folds back to the vector's AUROC
    assert null.loc[("dpo", 6), "n_random"] == 2
    assert null.loc[("dpo", 6), "null_p95"] == pytest.approx(np.quantile([folded, 0.5], 0.95))
    few = pp[(pp.direction == "refusal") & ~((pp.group == "harmful") & pp.refuses & (pp.prompt != "h0"))]
    assert np.isnan(bi.detection(few, P).loc[("dpo", 6), "refusal_auroc"])  # 1 refusal < MIN_CLASS


def test_record_reads_the_layer_fixed_in_advance_and_the_refusal_claim():
    from traitlab import records

    pp = _pp(16, {"base": 0.0, "sft": 0.0, "dpo": 3.0})
    pp["direction"] = "refusal"
    P = bi.Params(n_boot=100, layers=[4, 8], claim_layer=4, template_model=None)
    det = bi.detection(pp, P)
    rec = bi.record(P, None, det, pp)
    assert rec["auroc.dpo"].value == pytest.approx(det.loc[("dpo", 4)].auroc)  # not the better layer 8
    assert rec.tables["best_layers"].chosen.tolist() == ["fixed in advance"] * 3
    c = {c.id: c for c in rec.claims}
    assert "layer 4 fixed in advance" in c["base_vector_detects_chain"].ours
    assert c["base_vector_detects_refusal"].verdict == "inconclusive"  # one refusal per model: too few
    assert "refused 1 and complied with 15" in c["base_vector_detects_refusal"].reason
    # a model that refuses half the harmful requests, its vector reading the refusals
    pp2 = pp.copy()
    h = (pp2.model == "dpo") & (pp2.group == "harmful")
    pp2.loc[h, "refuses"] = pp2.loc[h, "prompt"].str[-1].astype(int) % 2 == 0
    pp2.loc[h & pp2.refuses, "mean"] += 5.0
    rec2 = bi.record(P, None, bi.detection(pp2, P), pp2)
    c2 = {c.id: c for c in rec2.claims}
    assert c2["base_vector_detects_refusal"].verdict == "holds"
    assert c2["base_vector_detects_refusal"].quantity == "refusal_auroc.dpo" and "refusal_auroc.dpo" in records.names(rec2)


def test_claim_layer_must_be_read():
    with pytest.raises(ParamError, match="claim_layer 5 must be one of layers"):
        bi.Params(layers=[4, 8], claim_layer=5)


def test_the_refusing_chain_is_checked_and_keyed_apart():
    from traitlab import chain

    with pytest.raises(ParamError, match="needs refusal_sources"):
        chain.ChainParams(n_refusal=8)
    with pytest.raises(ParamError, match="unknown refusal_sources"):
        chain.ChainParams(n_refusal=8, refusal_sources=["reddit"])
    assert chain.ChainParams().n_refusal == 0  # the default chain keeps its cache key
    try:
        req = chain.refusal_requests(chain.ChainParams(n_refusal=5, refusal_sources=["strongreject"]))
    except Exception as err:  # no data root here
        pytest.skip(f"public datasets not found: {err}")
    assert len(req) == 5 and req.id.is_unique and set(req.category) == {"refusal"} and set(req.split) == {"train"}
    assert req.id.str.startswith("refusal-strongreject-").all()


def test_a_null_that_separates_as_well_makes_the_verdict_inconclusive():
    """Refused answers that are one fixed sentence differ from compliant text along every
    direction: when random directions reach AUROC ≥ NULL_CEILING, no verdict either way."""
    pp = _pp(16, {"base": 0.0, "dpo": 3.0})
    pp["direction"] = "refusal"
    h = (pp.model == "dpo") & (pp.group == "harmful")
    pp.loc[h, "refuses"] = pp.loc[h, "prompt"].str[-1].astype(int) % 2 == 0
    pp.loc[h & pp.refuses, "mean"] += 5.0
    rnd = pp.copy()
    rnd["direction"] = "random0"  # a random direction that sees the same separation
    both = pd.concat([pp, rnd], ignore_index=True)
    P = bi.Params(n_boot=100, layers=[4, 8], claim_layer=8, template_model=None, n_random=1)
    rec = bi.record(P, None, bi.detection(both, P), both, bi.null_aurocs(both, P))
    c = {c.id: c for c in rec.claims}
    assert c["base_vector_detects_refusal"].verdict == "inconclusive"
    assert "random directions separate these answers as well" in c["base_vector_detects_refusal"].reason
    assert c["base_vector_detects_chain"].verdict == "inconclusive"  # the harmful/benign null is as high


def _steer(base: list[float], tuned: list[float], random_shift: float = 0.0) -> pd.DataFrame:
    rows = []
    for model, xs in (("base", base), ("dpo", tuned)):
        for i, x in enumerate(xs):
            rows.append({"model": model, "direction": "refusal", "ratio": 1.0, "group": "harmful",
                         "prompt": f"p{i}", "lo0": 0.0, "lo_plus": x + 0.5, "lo_minus": -x + 0.5,
                         "specific": x, "common": 0.5})
            rows.append({"model": model, "direction": "random0", "ratio": 1.0, "group": "harmful",
                         "prompt": f"p{i}", "lo0": 0.0, "lo_plus": random_shift, "lo_minus": -random_shift,
                         "specific": random_shift, "common": 0.0})
    return pd.DataFrame(rows)


def test_steering_verdict_reads_the_paired_difference_and_needs_the_base_to_steer():
    P = bi.Params(layers=[4], claim_layer=4, steer_ratios=[1.0], steer_claim_ratio=1.0, steer_random=1)
    stats, (verdict, _) = bi.steering_verdict(_steer([1.0, 1.2, 0.8, 1.0], [0.3, 0.4, 0.2, 0.3]), P, "dpo")
    assert verdict == "holds" and stats["diff"] == pytest.approx(0.7) and stats["base"] == pytest.approx(1.0)
    summ = bi.steering_summary(_steer([1.0, 1.2, 0.8, 1.0], [0.3, 0.4, 0.2, 0.3]))
    assert summ.loc[("dpo", "refusal", 1.0), "specific"] == pytest.approx(0.3)
    assert summ.loc[("base", "refusal", 1.0), "common"] == pytest.approx(0.5)
    # the tuned model steers as strongly, and the test had the power to see 2/3 of the base shift
    _, (verdict, why) = bi.steering_verdict(_steer([1.0, 1.1, 0.9, 1.0], [1.0, 1.1, 0.9, 1.0]), P, "dpo")
    assert verdict == "not held" and "minimum detectable" in why
    # a random direction steers the base as much: no positive control
    _, (verdict, why) = bi.steering_verdict(_steer([1.0, 1.2, 0.8, 1.0], [0.3, 0.4, 0.2, 0.3], 1.5), P, "dpo")
    assert verdict == "inconclusive" and "random directions reach 1.500" in why


def test_the_record_carries_the_steering_claim():
    P = bi.Params(n_boot=100, layers=[4, 8], claim_layer=4, steer_ratios=[1.0], steer_claim_ratio=1.0,
                  steer_random=1)
    pp = _pp(16, {"base": 0.0, "dpo": 3.0})
    rec = bi.record(P, None, bi.detection(pp, P), pp, steer=_steer([1.0, 1.2, 0.8, 1.0], [0.3, 0.4, 0.2, 0.3]))
    claim = next(c for c in rec.claims if c.id == "steering_weaker_in_tuned")
    assert claim.verdict == "holds" and claim.quantity == "steer.base_minus_dpo" and "3.3× weaker" in claim.ours
    assert rec["steer.base_minus_dpo"].value == pytest.approx(0.7) and rec["steer.specific.dpo"].n == 4
    assert "steering" in rec.tables
