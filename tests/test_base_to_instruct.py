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
