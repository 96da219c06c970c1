"""Components experiment: per-site extraction on a tiny model, exact paired maths, early errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from traitlab.experiments import components as comp
from traitlab.experiments import method_comparison as mc
from traitlab.models import load_model
from traitlab.params import ParamError, validate


def test_every_site_of_a_tiny_model_is_extracted_and_scored():
    p = comp.Params(model="tiny-qwen2", traits=["refusal"], layers=[0, 1], max_pairs_per_split=4,
                    n_random_seeds=2, n_boot=50)
    sites = p.check()
    assert [str(s) for s in sites[:5]] == ["resid_pre@0", "v@0", "attn_out@0", "mlp_out@0", "resid_post@0"]
    lm = load_model("tiny-qwen2")
    acts = mc.extract_traits(p, lm, sites)
    df = comp.run(p, acts, sites, progress=False)
    # 10 cells × (probe + mean_diff + 2 random seeds)
    assert len(df) == 10 * 4 and set(df.site) == set(p.sites)
    kv = lm.hf.config.num_key_value_heads * (lm.hf.config.hidden_size // lm.hf.config.num_attention_heads)
    assert df[df.site == "v"].dim.unique().tolist() == [kv]
    assert df[df.site == "attn_out"].dim.unique().tolist() == [lm.d_model]
    s = comp.summarize(df, p)
    assert s.loc[("random", "v"), "cells"] == 2 * 2  # two layers × two seeds
    assert comp.versus_seed(s, p).shape[0] == 2


def _cells() -> pd.DataFrame:
    rows = []
    for trait in ("a", "b"):
        for layer in (0, 1):
            for site, acc, au in (("resid_post", 0.8, 0.9), ("attn_out", 0.9, 0.95), ("v", 0.7, 0.92)):
                bump = 0.05 if (trait, layer) == ("b", 1) else 0.0
                rows.append({"trait": trait, "layer": layer, "site": site, "method": "probe", "seed": 0,
                             "dim": 8, "val_accuracy": acc + bump * (site == "v"), "auroc": au,
                             "polarity_correct": True, "effect_size": 1.0})
    return pd.DataFrame(rows)


def test_paired_differences_are_exact():
    p = comp.Params(sites=["resid_post", "attn_out", "v"], methods=["probe"], n_boot=100)
    paired = comp.paired_vs_reference(_cells(), p)
    assert paired.loc[("probe", "attn_out"), "d_accuracy_pts"] == pytest.approx(10.0)
    assert paired.loc[("probe", "attn_out"), "d_acc_ci95"] == "[+10.0, +10.0]"
    assert paired.loc[("probe", "v"), "d_accuracy_pts"] == pytest.approx(np.mean([-10, -10, -10, -5]))
    assert paired.loc[("probe", "v"), "d_auroc"] == pytest.approx(0.02)
    assert paired.loc[("probe", "attn_out"), "site_wins_pct"] == 100.0
    best = comp.best_layers(_cells())
    assert best.loc[("probe", "v"), "layer"] == 1
    lines = comp.conclusions(comp.summarize(_cells().assign(method="probe"), p).rename(index={"probe": "probe"})
                             .pipe(lambda s: pd.concat([s, s.rename(index={"probe": "random"}, level=0)])),
                             paired, p)
    assert any("attn_out is better than resid_post: +10.0 pts" in x for x in lines)


@pytest.mark.parametrize("kw, msg", [
    ({"sites": ["resid", "v"]}, "unknown sites"),
    ({"reference_site": "mlp_out", "sites": ["v", "attn_out"]}, "reference_site"),
    ({"methods": ["random"]}, "not allowed"),
    ({"traits": []}, "traits is empty"),
    ({"n_boot": 0}, "n_boot"),
])
def test_components_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(comp.Params, kw)


def test_layers_checked_before_weights():
    with pytest.raises(ParamError, match="layer"):
        comp.Params(model="smollm2-135m-instruct", layers=[99]).check()
