"""Generalization experiments: exact maths of the transfer matrix, the null, the bootstrap; data quality."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from traitlab.data import DataError, load_group, load_trait
from traitlab.experiments import PARAMS
from traitlab.experiments import generalization as gen
from traitlab.params import ParamError, validate


def _group(shift: torch.Tensor, n: int = 20, seed: int = 0, offset: float = 0.0) -> gen.GroupActs:
    g = torch.Generator().manual_seed(seed)
    d = shift.numel()
    pos = torch.randn(n, d, generator=g) * 0.3 + shift + offset
    neg = torch.randn(n, d, generator=g) * 0.3 - shift + offset
    return gen.GroupActs(pos, neg, is_val=torch.arange(n) % 5 == 4)


def test_cells_match_a_hand_computation():
    v = torch.zeros(6)
    v[0] = 1.0
    acts = {3: {"a": _group(v, seed=1), "b": _group(v, seed=2)}}
    cells, scores = gen.transfer(acts, ["mean_diff"], keep_scores=[3])
    assert len(cells) == 4 and set(cells.n_eval) == {4, 20}  # val split on the diagonal, all pairs off it
    a, b = acts[3]["a"], acts[3]["b"]
    tr_pos, tr_neg = a.train()
    w = tr_pos.mean(0) - tr_neg.mean(0)
    w = w / w.norm()
    cos = lambda x: ((x.double() @ w.double()) / x.double().norm(dim=1)).numpy()  # noqa: E731
    ps, ns = cos(b.pos), cos(b.neg)
    thr = (ps.mean() + ns.mean()) / 2
    expect = ((ps > thr).sum() + (ns <= thr).sum()) / 40
    row = cells[(cells.train == "a") & (cells.test == "b")].iloc[0]
    assert row.acc == pytest.approx(expect, abs=1e-12)
    np.testing.assert_allclose(scores[(3, "mean_diff", "a", "b")][0], ps, atol=1e-6)


def test_transferred_threshold_catches_a_group_offset():
    """A test group shifted along the trait axis stays separable (acc, AUROC) while a threshold
    carried over from training fails: the two accuracies answer different questions."""
    v = torch.zeros(6)
    v[0] = 1.0
    shifted = _group(v, seed=2)
    shifted = gen.GroupActs(shifted.pos + 3 * v + 5 * torch.eye(6)[1], shifted.neg + 3 * v + 5 * torch.eye(6)[1],
                            shifted.is_val)
    acts = {0: {"a": _group(v, seed=1), "b": shifted}}
    cells, _ = gen.transfer(acts, ["mean_diff"])
    row = cells[(cells.train == "a") & (cells.test == "b")].iloc[0]
    assert row.acc == 1.0 and row.auroc == 1.0
    assert row.acc_transfer == 0.5  # everything lands on the positive side


def test_shuffled_labels_are_a_permutation_and_seeded():
    v = torch.zeros(6)
    v[0] = 1.0
    acts = {0: {"a": _group(v, seed=1), "b": _group(v, seed=2)}}
    one, _ = gen.transfer(acts, ["mean_diff"], shuffle_seed=7)
    two, _ = gen.transfer(acts, ["mean_diff"], shuffle_seed=7)
    real, _ = gen.transfer(acts, ["mean_diff"])
    assert one.equals(two)
    assert one.acc.mean() < real.acc.mean()


def _params(**kw):
    base = {"model": "tiny-llama", "layers": [0, 1], "matrix_layers": [0, 1], "methods": ["mean_diff", "probe"],
            "n_boot": 50, "n_shuffle": 2, "max_pairs_per_split": 6}
    base.update(kw)
    return validate(gen.CrossDistribution, base)


def test_bootstrap_draws_are_shared_so_identical_methods_differ_by_zero():
    v = torch.zeros(6)
    v[0] = 1.0
    p = _params()
    acts = {layer: {"A": _group(v, seed=1), "B": _group(v, seed=2)} for layer in (0, 1)}
    _, scores = gen.transfer(acts, ["mean_diff"], keep_scores=[0, 1])
    scores.update({(layer, "probe", g, h): s for (layer, _, g, h), s in scores.items()})  # a clone of mean_diff
    boots = gen.bootstrap(p, scores)
    diff = gen.method_difference(p, boots)
    assert (diff.iloc[:, 0] == 0).all() and (diff.ci_lo == 0).all() and (diff.ci_hi == 0).all()
    assert boots[(0, "mean_diff", "A", "B")].shape == (50,)


def test_summary_and_null_on_a_tiny_model():
    from traitlab.models import load_model

    p = _params()
    lm = load_model(p.model)
    sites = p.check()
    acts = gen.extract_groups(p, lm, sites, progress=False)
    cells, scores = gen.run(p, acts, progress=False)
    null = gen.shuffled_null(p, acts, progress=False)
    summary = gen.summarize(p, cells, gen.bootstrap(p, scores), null)
    assert list(summary.index) == [(m, layer) for m in p.methods for layer in p.matrix_layers]
    assert len(null) == p.n_shuffle * len(cells)
    d = cells[(cells.method == "mean_diff") & (cells.layer == 0)]
    assert summary.loc[("mean_diff", 0), "cross_pct"] == pytest.approx(100 * d[~d.same].acc.mean())


@pytest.mark.parametrize("kw, msg", [
    ({"groups": {"A": "optimism"}}, "at least two"),
    ({"matrix_layers": [5]}, "must be among layers"),
    ({"position": "all"}, "position"),
    ({"methods": ["pca"]}, "unknown methods"),
])
def test_bad_params(kw, msg):
    with pytest.raises(ParamError, match=msg):
        _params(**kw)


def test_unknown_group_and_missing_trait_fail_before_model_work():
    with pytest.raises(DataError, match="unknown groups"):
        _params(groups={"A": "optimism:tech", "B": "optimism:sport"}).check()
    with pytest.raises(DataError, match="no prompt set"):
        _params(groups={"A": "optimism", "B": "pessimism"}).check()


# ---- the prompt sets we wrote for these findings -------------------------------------

_CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("name, spec, minimum", [
    ("cross_language", "uncertainty", 100), ("cross_language", "uncertainty_es", 50),
    ("cross_language", "uncertainty_fr", 50), ("cross_language", "uncertainty_zh", 50),
    ("cross_topic", "uncertainty_science", 100), ("cross_topic", "uncertainty_coding", 100),
    ("cross_topic", "uncertainty_history", 100), ("cross_topic", "uncertainty_creative", 100),
    ("cross_distribution", "optimism:tech,economics,healthcare,education,science", 50),
    ("cross_distribution", "optimism:environment,career,relationships,civic,global", 50),
])
def test_prompt_sets_are_large_enough_and_clean(name, spec, minimum):
    assert spec in PARAMS[name]().groups.values()
    ds = load_group(spec)
    assert len(ds.pairs) >= minimum
    for side in ("pos_prompt", "neg_prompt"):  # optimism pairs share a prompt across sides by design
        prompts = [getattr(p, side).lower() for p in ds.pairs]
        assert len(set(prompts)) == len(prompts), f"duplicate {side}s"
    assert [p.split == "val" for p in ds.pairs].count(True) >= len(ds.pairs) // 5 - 1
    text = " ".join(p.pos_response + p.neg_response for p in ds.pairs)
    if spec.endswith("_zh"):
        assert len(_CJK.findall(text)) > 0.5 * len(text.replace(" ", ""))
    elif spec.endswith("_es"):
        assert text.count("¿") + sum(p.pos_prompt.count("¿") for p in ds.pairs) >= len(ds.pairs)
    elif spec.endswith("_fr"):
        assert len(re.findall(r"\b(le|la|les|des|est)\b", text)) > 3 * len(ds.pairs)
    else:
        assert not _CJK.search(text)


def test_topic_sets_do_not_repeat_the_english_set():
    english = {p.pos_prompt.lower() for p in load_trait("uncertainty").pairs}
    for topic in ("science", "coding", "history", "creative"):
        assert not english & {p.pos_prompt.lower() for p in load_trait(f"uncertainty_{topic}").pairs}


def _record_inputs():
    """A 3-group toy: probe and mean_diff fitted for real on synthetic activations."""
    v = torch.zeros(6)
    v[0] = 1.0
    acts = {2: {"a": _group(v, seed=1), "b": _group(v, seed=2), "c": _group(v, seed=3)}}
    p = gen.CrossDistribution(groups={"a": "x", "b": "y", "c": "z"}, layers=[2], matrix_layers=[2],
                              methods=["probe", "mean_diff"], n_shuffle=3, n_boot=200)
    cells, scores = gen.transfer(acts, p.methods, keep_scores=[2])
    null = gen.shuffled_null(p, acts, progress=False)
    boots = gen.bootstrap(p, scores)
    summary = gen.summarize(p, cells, boots, null)
    return p, cells, summary, boots, gen.null_exceedance(p, cells, null)


def test_record_names_rules_and_verdicts():
    from traitlab import records

    p, cells, summary, boots, exceed = _record_inputs()
    rec = gen.record(p, None, "cross_distribution", cells, summary, boots, exceed, compare_layer=2)
    names = set(records.names(rec))
    assert {"probe.L2.same_pct", "probe.L2.cross_pct", "mean_diff.L2.cross_pct", "probe.L2.beats_null_rate",
            "probe_minus_mean_diff.L2_pts", "n_groups", "cross_cells", "compare_layer"} <= names
    assert rec["cross_cells"].value == 6 and rec["cross_cells"].tolerance == 0
    cross = rec["probe.L2.cross_pct"]
    assert cross.tolerance_rule.startswith("2 standard errors") and cross.tolerance >= 100 / 40 / 6  # >= one item
    assert rec["probe.L2.beats_null_rate"].tolerance == pytest.approx(1 / 6)  # one of 6 cells (fewer than 8)
    verdicts = {c.id: c.verdict for c in rec.claims}
    # separable toy: probe ≈ 100% everywhere (seed 100 / 97.5 hold); probe − mean_diff ≈ 0 with a
    # tight CI, so the seed's +25 pts would have been seen: not held
    assert verdicts == {"probe_same_group": "holds", "probe_cross_group": "holds", "probe_beats_mean_diff": "not held"}


def test_record_moved_field_is_named():
    from traitlab import records

    p, cells, summary, boots, exceed = _record_inputs()
    rec = gen.record(p, None, "cross_distribution", cells, summary, boots, exceed, compare_layer=2)
    moved = cells.assign(acc=np.where((cells.method == "mean_diff") & ~cells.same, cells.acc - 0.2, cells.acc))
    summary2 = summary.copy()
    summary2.loc[("mean_diff", 2), "cross_pct"] -= 20
    rec2 = gen.record(p, None, "cross_distribution", moved, summary2, boots, exceed, compare_layer=2)
    problems = records.compare(rec, rec2)
    assert any(x.startswith("cross_distribution.mean_diff.L2.cross_pct:") for x in problems), problems
    assert not any(x.startswith("cross_distribution.probe.L2.cross_pct:") for x in problems)
