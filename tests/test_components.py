"""Components experiment: per-site extraction on a tiny model, exact paired maths, early errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from toys import pair_scores

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
    df, scores = comp.run(p, acts, sites, progress=False)
    assert set(scores) == {(r.trait, r.site, r.layer, r.method, r.seed) for r in df.itertuples()}
    # 10 cells × (probe + mean_diff + 2 random seeds)
    assert len(df) == 10 * 4 and set(df.site) == set(p.sites)
    kv = lm.hf.config.num_key_value_heads * (lm.hf.config.hidden_size // lm.hf.config.num_attention_heads)
    assert df[df.site == "v"].dim.unique().tolist() == [kv]
    assert df[df.site == "attn_out"].dim.unique().tolist() == [lm.d_model]
    s = comp.summarize(df, p, comp.draws(p, scores))
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


def _exact_scores(cells: pd.DataFrame) -> dict:
    """Pair scores whose midpoint accuracy is exactly the row's (20 pairs: accuracy in 1/40 steps)."""
    out = {}
    for r in cells.itertuples():
        n_wrong = round((1 - r.val_accuracy) * 40)  # misclassified examples of 40
        ps, ns = np.ones(20), -np.ones(20)
        ps[:n_wrong // 2], ns[:n_wrong - n_wrong // 2] = -0.5, 0.5
        out[(r.trait, r.site, r.layer, r.method, r.seed)] = (ps, ns)
    return out


def test_paired_differences_are_exact():
    p = comp.Params(sites=["resid_post", "attn_out", "v"], methods=["probe"], n_boot=100)
    cells = _cells()
    paired = comp.paired_vs_reference(cells, p, comp.draws(p, _exact_scores(cells)))
    assert paired.loc[("probe", "attn_out"), "d_accuracy_pts"] == pytest.approx(10.0)
    # the CI resamples each trait's held-out pairs (not the four cells, whose differences all equal 10)
    lo, hi = (float(x) for x in paired.loc[("probe", "attn_out"), "d_acc_ci95"].strip("[]").split(","))
    assert lo < 10.0 < hi
    same = comp.draws(p, {k: v for k, v in _exact_scores(cells.assign(val_accuracy=0.8)).items()})
    assert comp.paired_vs_reference(cells, p, same).loc[("probe", "attn_out"), "d_acc_ci95"] == "[+0.0, +0.0]"
    assert paired.loc[("probe", "v"), "d_accuracy_pts"] == pytest.approx(np.mean([-10, -10, -10, -5]))
    assert paired.loc[("probe", "v"), "d_auroc"] == pytest.approx(0.02)
    assert paired.loc[("probe", "attn_out"), "site_wins_pct"] == 100.0
    best = comp.best_layers(_cells())
    assert best.loc[("probe", "v"), "layer"] == 1
    lines = comp.conclusions(comp.summarize(cells, p, comp.draws(p, _exact_scores(cells))).rename(index={"probe": "probe"})
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


def _toy_results(p: comp.Params, attn_shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    level = {"resid_pre": 0.9, "attn_out": 0.85, "mlp_out": 0.9, "v": 0.96, "resid_post": 0.9}
    rows = []
    for t in p.traits:
        for layer in (3, 6, 9):
            for site in p.sites:
                for m in [*p.methods, "random"]:
                    for seed in (range(p.n_random_seeds) if m == "random" else [0]):
                        base = 0.55 if m == "random" else level[site] + (attn_shift if site == "attn_out" else 0)
                        acc = float(np.clip(base + rng.normal(0, 0.02), 0, 1))
                        rows.append({"trait": t, "site": site, "layer": layer, "method": m, "seed": seed,
                                     "dim": 8, "val_accuracy": acc, "polarity_correct": True,
                                     "effect_size": 3 * (acc - 0.5), "auroc": acc - 0.02})
    return pd.DataFrame(rows)


def _toy_record(attn_shift: float = 0.0):
    p = comp.Params(traits=["refusal", "humor", "optimism"], n_random_seeds=2, n_boot=100)
    df = _toy_results(p, attn_shift)
    boot = comp.draws(p, pair_scores(df, ["trait", "site", "layer", "method", "seed"]))
    return comp.record(p, None, df, comp.summarize(df, p, boot), boot)


def test_record_names_rules_and_verdicts():
    from traitlab import records

    rec = _toy_record()
    names = set(records.names(rec))
    assert {"probe.attn_out.accuracy_pct", "probe.v.auroc", "random.v.accuracy_pct",
            "probe.attn_out_minus_resid_post.accuracy_pts", "mean_diff.v_minus_resid_post.auroc",
            "n_traits", "n_layers", "n_sites"} <= names
    assert rec["n_sites"].value == 5 and rec["n_sites"].tolerance == 0
    q = rec["probe.attn_out_minus_resid_post.accuracy_pts"]
    assert q.tolerance_rule.startswith("2 standard errors") and q.tolerance > 0 and q.n == 9
    c = {c.id: c for c in rec.claims}
    # attn_out 5 pts below resid_post with an SE of ~1 pt: the seed's +10 pts would have been seen
    assert c["attn_out_beats_resid"].verdict == "not held"
    # v +6 pts, AUROC +0.06 with a tight CI: the seed's direction holds
    assert c["v_beats_resid"].verdict == "holds"
    assert rec["probe.attn_out_minus_resid_post.accuracy_pts"].value < 0


def test_record_moved_field_is_named():
    from traitlab import records

    problems = records.compare(_toy_record(), _toy_record(attn_shift=0.1))
    assert any(x.startswith("components.probe.attn_out.accuracy_pct:") for x in problems), problems
    assert any(x.startswith("components.claim attn_out_beats_resid: verdict") for x in problems), problems
    assert not any(x.startswith("components.probe.v.") for x in problems)


def test_matched_width_rotates_a_site_already_that_wide_and_shrinks_the_rest():
    """At its own width a site is only rotated: cosine scores, hence every metric, are unchanged;
    a wider site ends up exactly that wide; widths are capped at the train rank."""
    import torch

    from traitlab.metrics import evaluate

    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(6)
    shift[0] = 2.0
    acts = {"t": {split: {"narrow": (torch.randn(12, 6, generator=g) + shift, torch.randn(12, 6, generator=g)),
                          "wide": (torch.randn(12, 20, generator=g), torch.randn(12, 20, generator=g))}
                  for split in ("train", "val")}}
    m = comp.match_dimension(acts, 6)
    assert m["t"]["val"]["wide"][0].shape == (12, 6) and m["t"]["train"]["narrow"][1].shape == (12, 6)
    v = torch.randn(6, generator=g)
    tr_p, tr_n = acts["t"]["train"]["narrow"]
    x = torch.cat([tr_p, tr_n]).double()
    basis = torch.linalg.svd(x - x.mean(0), full_matrices=False)[2].T  # the rotation used
    raw = evaluate(v, *acts["t"]["val"]["narrow"])
    rot = evaluate((v.double() @ basis).float(), *m["t"]["val"]["narrow"])
    assert raw.auroc == rot.auroc and raw.val_accuracy == rot.val_accuracy
    assert abs(raw.effect_size - rot.effect_size) < 1e-5
    assert comp.match_dimension(acts, 100)["t"]["val"]["wide"][0].shape == (12, 20)  # rank cap: 24 rows, 20 wide
    p = comp.Params()
    assert comp.matched_width(p, {"v": 128, "resid_post": 896}) == 128
    assert comp.matched_width(comp.Params(matched_dim=0), {"v": 128}) == 0


def test_record_with_the_matched_space_prefixes_its_quantities_and_claims():
    from traitlab import records

    p = comp.Params(traits=["refusal", "humor", "optimism"], n_random_seeds=2, n_boot=100)
    df = _toy_results(p)
    boot = comp.draws(p, pair_scores(df, ["trait", "site", "layer", "method", "seed"]))
    dfm = _toy_results(p, attn_shift=0.1)
    boot_m = comp.draws(p, pair_scores(dfm, ["trait", "site", "layer", "method", "seed"]))
    matched = comp.Space("matched", dfm, comp.summarize(dfm, p, boot_m), boot_m, 8)
    rec = comp.record(p, None, df, comp.summarize(df, p, boot), boot, matched)
    names = set(records.names(rec))
    assert {"probe.attn_out.accuracy_pct", "matched.probe.attn_out.accuracy_pct", "matched.width"} <= names
    assert rec["matched.width"].value == 8
    c = {c.id: c for c in rec.claims}
    assert c["attn_out_beats_resid"].verdict == "not held"  # raw: 5 pts below
    assert c["attn_out_beats_resid.matched"].verdict == "holds"  # matched toy: 5 pts above
    assert c["attn_out_beats_resid.matched"].quantity == "matched.probe.attn_out_minus_resid_post.accuracy_pts"
    assert "matched.paired" in rec.tables


def test_a_site_where_every_example_reads_one_vector_scores_chance_and_is_marked():
    # position "last" on a chat template: at resid_pre@0 every prompt's last token is the same
    # template token, so its activation is one vector; no fit is possible there.
    import torch

    p = comp.Params(model="tiny-qwen2", traits=["refusal"], layers=[0], sites=["resid_pre", "attn_out"], reference_site="attn_out",
                    n_random_seeds=2, n_boot=50)
    sites = p.check()
    g = torch.Generator().manual_seed(0)
    flat = torch.ones(6, 8)
    live = (torch.randn(6, 8, generator=g) + 1, torch.randn(6, 8, generator=g) - 1)
    acts = {"refusal": {split: {sites[0]: (flat, flat.clone()), sites[1]: live} for split in ("train", "val")}}
    df, _ = comp.run(p, acts, sites, progress=False, log=False)
    dead = df[df.site == "resid_pre"]
    assert dead.degenerate.all() and not df[df.site == "attn_out"].degenerate.any()
    assert (dead.val_accuracy == 0.5).all() and (dead.auroc == 0.5).all()
