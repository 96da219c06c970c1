"""Token-dynamics experiment: exact per-prompt and group maths on hand-made traces; a tiny-model run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab.experiments import token_dynamics as td
from traitlab.models import load_model
from traitlab.monitor import TokenTrace
from traitlab.params import ParamError, validate
from traitlab.sites import Site


def _traces():
    df = pd.DataFrame({"group": ["harmful", "harmful", "benign", "benign"], "id": list("abcd"),
                       "prompt": ["p"] * 4})
    vals = [np.array([3.0, 2.0, 1.0, 0.0]), np.array([1.0, 1.0]), np.array([-1.0, -1.0, -1.0, 1.0]),
            np.array([0.0, 0.0, 0.0])]
    texts = ["I'm sorry, I can't help with that.", "Sure", "def f():\n    return 1", "Hello there"]
    traces = [TokenTrace("p", ["x"] * len(v), t, list(range(len(v))), {"refusal@resid_post@3": v})
              for v, t in zip(vals, texts, strict=True)]
    return df, traces


def test_per_prompt_and_group_summary_are_exact():
    P = td.Params(n_boot=100, first_k=3, max_new_tokens=8)
    df, traces = _traces()
    pp = td.per_prompt(df, traces, P)
    a = pp.set_index("id")
    assert a.loc["a", "mean"] == 1.5 and a.loc["a", "first_k"] == 2.0 and a.loc["a", "rest"] == 0.0
    assert a.loc["b", "first_k"] == 1.0 and np.isnan(a.loc["b", "rest"])
    assert a.loc["a", "refuses"] and not a.loc["b", "refuses"] and a.loc["c", "code"]
    s = td.group_summary(pp, P)
    assert s.loc[(3, "harmful"), "mean"] == pytest.approx(1.25)
    assert s.loc[(3, "benign"), "mean"] == pytest.approx(-0.25)
    sep = td.separation(pp, P)
    assert sep.loc[3, "difference"] == pytest.approx(1.5) and sep.loc[3, "auroc"] == 1.0
    cvt = td.code_vs_text(pp)
    assert cvt.loc[3, "code"] == pytest.approx(-0.5) and cvt.loc[3, "text"] == pytest.approx(0.0)
    lines = td.conclusions(s, sep, cvt, P)
    assert lines[0].startswith("L3: harmful − benign mean projection over the answer +1.50") and "not testable" in lines[-1]
    fr = td.tokens_frame(df, traces)
    assert len(fr) == 4 + 2 + 4 + 3 and set(fr.layer) == {3}


def test_looks_like_code():
    assert td.looks_like_code("```python\nprint(1)\n```")
    assert td.looks_like_code("import os\nos.listdir()")
    assert not td.looks_like_code("I would wish for world peace.")


def test_run_on_a_tiny_model():
    P = td.Params(model="tiny-qwen2", layers=[0, 1], max_new_tokens=4, first_k=1, trait="refusal")
    lm = load_model("tiny-qwen2")
    sites = [Site("resid_post", 0), Site("resid_post", 1)]
    g = torch.Generator().manual_seed(0)
    vectors = {s: torch.randn(lm.d_model, generator=g) for s in sites}
    df = pd.DataFrame({"group": ["code", "open"], "id": ["c", "o"], "prompt": ["Write code", "Hi"]})
    traces = td.run(P, lm, vectors, df, progress=False)
    pp = td.per_prompt(df, traces, P)
    assert set(pp.layer) == {0, 1} and (pp.n_tokens <= 4).all()


@pytest.mark.parametrize("kw, msg", [
    ({"groups": ["harmful", "evil"]}, "unknown groups"),
    ({"score": "z"}, "score"),
    ({"first_k": 50}, "first_k"),
    ({"harmful_sources": ["mmlu"]}, "unknown harmful sources"),
    ({"vector_method": "random"}, "vector_method"),
    ({"layers": []}, "layers is empty"),
])
def test_token_dynamics_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(td.Params, kw)


def test_written_prompts_and_groups():
    df = td.prompts(td.Params(groups=["code", "open"], n_harmful=0, n_benign=0))
    assert set(df.group) == {"code", "open"} and df.id.is_unique and len(df) == 24
    with pytest.raises(ParamError, match="no prompts for groups"):
        td.prompts(td.Params(groups=["harmful", "code"], n_harmful=0))


def test_record_names_tolerances_and_verdicts():
    from traitlab import records
    from traitlab.experiments.base_to_instruct import auroc_se

    P = td.Params(n_boot=100, first_k=3, max_new_tokens=8, groups=["harmful", "benign"])
    df, traces = _traces()
    pp = td.per_prompt(df, traces, P)
    sep = td.separation(pp, P)
    rec = td.record(P, None, pp, td.group_summary(pp, P), sep, td.code_vs_text(pp))
    assert list(records.names(rec)) == ["n_prompts.harmful", "n_prompts.benign", "difference.L3", "auroc.L3"]
    assert rec["n_prompts.harmful"].value == 2 and rec["n_prompts.harmful"].tolerance == 0
    d = rec["difference.L3"]  # harmful means 1.5, 1.0; benign -0.5, 0.0
    assert d.value == pytest.approx(1.5)
    assert d.tolerance == pytest.approx(2 * np.sqrt(0.125 / 2 + 0.125 / 2))
    assert rec["auroc.L3"].value == 1.0 and rec["auroc.L3"].tolerance == pytest.approx(2 * auroc_se(1.0, 2, 2))
    assert rec["auroc.L3"].tolerance > 0
    assert {c.id: c.verdict for c in rec.claims} == {"code_mode_drop": "not comparable",
                                                     "misaligned_text_spikes": "not comparable"}
    moved = records.ResultRecord(rec.report, quantities=tuple(
        records.Quantity(q.name, q.value + (1.1 * q.tolerance if q.name == "difference.L3" else 0), q.unit,
                         q.n, q.ci, q.tolerance, q.tolerance_rule) for q in rec.quantities), claims=rec.claims)
    problems = records.compare(rec, moved)
    assert len(problems) == 1 and problems[0].startswith("token_dynamics.difference.L3:"), problems
