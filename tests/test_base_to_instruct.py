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
