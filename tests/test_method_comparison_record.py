"""Method comparison's result record: names, tolerance rules, verdicts, and a moved field failing by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from toys import pair_scores

from traitlab import records
from traitlab.experiments import method_comparison as mc

LEVEL = {"probe": 0.97, "gradient": 0.90, "mean_diff": 0.80, "pca_diff": 0.62, "ica": 0.55, "random": 0.55}


def _results(p: mc.Params, level: dict[str, float] = LEVEL) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for t in p.traits:
        for layer in range(6):
            for m in p.methods:
                for seed in (range(p.n_random_seeds) if m == "random" else [0]):
                    acc = float(np.clip(level[m] + rng.normal(0, 0.03), 0, 1))
                    rows.append({"trait": t, "layer": layer, "method": m, "seed": seed, "val_accuracy": acc,
                                 "polarity_correct": bool(m != "random" or rng.random() > 0.3),
                                 "effect_size": 4 * (acc - 0.5), "auroc": acc, "raw_norm": 1.0})
    return pd.DataFrame(rows)


def _record(level: dict[str, float] = LEVEL) -> records.ResultRecord:
    p = mc.Params(traits=["refusal", "humor", "optimism"], n_random_seeds=10, n_boot=50)
    df = _results(p, level)
    boot = mc.draws(p, pair_scores(df, ["trait", "layer", "method", "seed"]))
    return mc.record(p, None, df, mc.summarize(df, p, boot), mc.random_null(df), boot)


def test_record_names_rules_and_verdicts():
    rec = _record()
    names = records.names(rec)
    for m in mc.Params().methods:
        assert {f"{m}.mean_accuracy_pct", f"{m}.mean_effect_size", f"{m}.polarity_fail_rate"} <= set(names)
    assert rec["cells_per_method"].value == 18 and rec["cells_per_method"].tolerance == 0
    assert rec["probe.mean_accuracy_pct"].tolerance_rule.startswith("2 standard errors")
    assert rec["ica.mean_accuracy_pct"].tolerance_rule.startswith("3 standard errors")  # chaotic across CPUs
    assert rec["probe.polarity_fail_rate"].tolerance == pytest.approx(2 / 18)
    assert all(q.tolerance > 0 for q in rec.quantities if q.tolerance_rule != "exact")
    verdicts = {c.id: c.verdict for c in rec.claims}
    assert verdicts["probe_beats_random"] == "holds" and verdicts["gradient_beats_random"] == "holds"
    assert verdicts["pca_diff_like_random"] == "not held"  # 62% clears the null; the probe is the control
    assert verdicts["ica_like_random"] == "holds"
    assert verdicts["ordering"] == "holds" and verdicts["probe_polarity"] == "holds"
    assert list(records.verdict_table(rec).columns) == ["claim", "seed", "ours", "verdict", "why"]


def test_ordering_out_of_order_with_power_is_not_held():
    rec = _record({**LEVEL, "probe": 0.85, "gradient": 0.93})
    c = {c.id: c for c in rec.claims}["ordering"]
    assert c.verdict == "not held" and "probe − gradient" in c.reason


def test_a_moved_headline_fails_naming_the_field():
    rec = _record()
    moved = _record({**LEVEL, "mean_diff": 0.72})
    problems = records.compare(rec, moved)
    assert any(p.startswith("method_comparison.mean_diff.mean_accuracy_pct:") for p in problems), problems
    assert not any("probe.mean_accuracy_pct" in p for p in problems)
    assert records.compare(rec, _record()) == []


def _acts(signal: float, traits=("refusal", "humor"), n_train: int = 40, n_val: int = 20, d: int = 16):
    """Synthetic activations: positives shifted by ``signal`` along the first axis."""
    import torch

    from traitlab.sites import Site

    g = torch.Generator().manual_seed(0)
    site = Site("resid_post", 3)
    shift = torch.zeros(d)
    shift[0] = signal
    out = {}
    for t in traits:
        out[t] = {split: {site: (torch.randn(n, d, generator=g) + shift, torch.randn(n, d, generator=g))}
                  for split, n in (("train", n_train), ("val", n_val))}
    return out, [site]


def test_learning_curve_subsamples_train_pairs_and_scores_the_full_val_split():
    p = mc.Params(traits=["refusal", "humor"], methods=["probe", "mean_diff", "random"], curve_sizes=[4, 16, 99],
                  curve_repeats=3, n_boot=50)
    acts, sites = _acts(5.0)  # the best threshold's accuracy is Φ(2.5) = 99.4%
    curve = mc.learning_curve(p, acts, sites, progress=False)
    assert len(curve) == 2 * 3 * 3 * 3  # traits × sizes × repeats × methods
    assert sorted(curve.n_train.unique()) == [4, 16, 40]  # a size above the train split is capped
    cs = mc.curve_summary(curve)
    assert cs.loc[("mean_diff", 40), "accuracy_pct"] > 90 > cs.loc[("random", 40), "accuracy_pct"]
    assert cs.loc[("probe", 4), "traits"] == 2
    again = mc.learning_curve(p, acts, sites, progress=False)
    pd.testing.assert_frame_equal(curve, again)  # seeded subsamples
    assert mc.curve_conclusion(cs).startswith("With 4 training pairs per trait:")
    rec = mc.record(p, None, *_record_inputs(p), curve=cs)
    assert rec["curve.mean_diff.n4.accuracy_pct"].value == pytest.approx(cs.loc[("mean_diff", 4), "accuracy_pct"])
    assert "learning_curve" in rec.tables


def _record_inputs(p):
    df = _results(mc.Params(traits=list(p.traits), methods=list(p.methods), n_random_seeds=p.n_random_seeds))
    boot = mc.draws(p, pair_scores(df, ["trait", "layer", "method", "seed"]))
    return df, mc.summarize(df, p, boot), mc.random_null(df), boot


def test_curve_layers_must_be_among_the_layers():
    from traitlab.params import ParamError
    from traitlab.sites import Site

    sites = [Site("resid_post", x) for x in (2, 4, 6)]
    assert mc.Params().curve_sites(sites) == [sites[1]]
    assert mc.Params(curve_layers=[6, 2]).curve_sites(sites) == [sites[2], sites[0]]
    with pytest.raises(ParamError, match=r"curve_layers \[5\]"):
        mc.Params(curve_layers=[5]).curve_sites(sites)
    with pytest.raises(ParamError, match="curve_sizes"):
        mc.Params(curve_sizes=[1])
