"""The surface baseline: what a bag-of-words classifier on the same texts can do."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from traitlab.data import TraitDataset, TraitPair
from traitlab.surface import bag_of_words_scores, pair_texts, surface_metrics


def _set(pos: list[str], neg: list[str], n_val: int) -> TraitDataset:
    pairs = [TraitPair(f"x{i}", "g", "val" if i >= len(pos) - n_val else "train", "Q?", p, "Q?", n)
             for i, (p, n) in enumerate(zip(pos, neg, strict=True))]
    return TraitDataset("toy", tuple(pairs))


def test_words_that_carry_the_classes_separate_them():
    pos = [f"a bright hopeful outlook number {i}" for i in range(10)]
    neg = [f"a grim hopeless outlook number {i}" for i in range(10)]
    m, (ps, ns) = surface_metrics(_set(pos, neg, 4))
    assert m.val_accuracy == 1.0 and m.auroc == 1.0 and m.polarity_correct
    assert len(ps) == len(ns) == 4


def test_identical_texts_are_at_chance_exactly():
    texts = [f"the same words in sentence {i}" for i in range(10)]
    m, _ = surface_metrics(_set(texts, list(texts), 4))
    assert m.val_accuracy == 0.5 and m.auroc == 0.5 and m.effect_size == 0.0


def test_texts_follow_the_extraction_position():
    p = TraitPair("x", "g", "train", "Be hopeful. Q?", "Yes!", "Be gloomy. Q?", "No.")
    assert pair_texts([p], "mean") == (["Yes!"], ["No."])  # the mean is over response tokens
    assert pair_texts([p], "last") == (["Be hopeful. Q?\nYes!"], ["Be gloomy. Q?\nNo."])


def test_empty_classes_fail_clearly():
    with pytest.raises(ValueError, match="both classes"):
        bag_of_words_scores(["a"], [], ["b"], ["c"])


def test_method_comparison_surface_rows_per_trait():
    from traitlab.experiments import method_comparison as mc

    P = mc.Params(**yaml.safe_load(open("params/method_comparison/ci.yaml")))
    surf = mc.surface(P)
    assert list(surf.index) == list(P.traits)
    assert ((surf.accuracy_pct >= 0) & (surf.accuracy_pct <= 100)).all() and (surf.val_pairs > 0).all()
    line = mc.conclusions(mc.summarize(*_summary_inputs(P)), __import__("pandas").DataFrame(), surf)[1]
    assert line.startswith("Words alone") and f"{surf.accuracy_pct.mean():.1f}%" in line


def _summary_inputs(P):
    import pandas as pd

    rows = [{"trait": t, "layer": 0, "method": m, "seed": P.seed, "val_accuracy": 0.99, "polarity_correct": True,
             "effect_size": 3.0, "auroc": 1.0} for t in P.traits for m in P.methods]
    boot = {m: {"accuracy_pct": np.full(10, 99.0), "effect_size": np.full(10, 3.0)} for m in P.methods}
    return pd.DataFrame(rows), P, boot


def test_words_do_not_cross_languages_but_do_cross_topics():
    """Measured on the shipped sets: the English words of uncertainty do not occur in the Chinese
    set (so words cannot transfer there), while topic sets share the trait's English words."""
    from traitlab.experiments import generalization as gen

    lang = gen.CrossLanguage(**yaml.safe_load(open("params/cross_language/default.yaml")))
    w = gen.surface_transfer(lang)
    assert len(w) == len(lang.groups) ** 2 and w.same.sum() == len(lang.groups)
    s = gen.surface_summary(w).iloc[0]
    assert s.cross_pct < 70 < s.same_pct
    assert w.set_index(["train", "test"]).loc[("English", "Chinese"), "acc"] <= 0.6
    topic = gen.surface_summary(gen.surface_transfer(
        gen.CrossTopic(**yaml.safe_load(open("params/cross_topic/default.yaml"))))).iloc[0]
    assert topic.cross_pct > 90
