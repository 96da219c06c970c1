"""Judge sensitivity: gold sets, pair wins, the noise fit and the minimum detectable effect."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from traitlab import judge_power as JP
from traitlab.data import DataError
from traitlab.judge import TRAIT_DESCRIPTIONS
from traitlab.paths import project_data
from traitlab.uncertainty import POWER_Z

SHIPPED = sorted(p.stem.removeprefix("gold_") for p in project_data("judge").glob("gold_*.jsonl"))
"""Every gold set we ship (a new one is checked the moment it lands in data/judge)."""


def test_the_gold_sets_we_ship_cover_the_traits_the_reports_read():
    assert {"optimism", "uncertainty", "refusal"} <= set(SHIPPED)
    assert set(SHIPPED) <= set(TRAIT_DESCRIPTIONS)  # the judge has a definition of each


@pytest.mark.parametrize("trait", SHIPPED)
def test_shipped_gold_sets_are_graded_split_by_question_and_show_failure_shapes(trait):
    g = JP.load_gold(trait)
    assert len(g) >= 60 and set(g.split) == {"tune", "heldout"}
    assert g.groupby("question").split.nunique().max() == 1
    held = JP.load_gold(trait, "heldout")
    assert 0 < len(held) < len(g) and held.question.nunique() >= 4
    # graded: every question spans at least 40 points, so held-out pairs >= 40 apart exist
    assert (g.groupby("question").label.agg(lambda s: s.max() - s.min()) >= 40).all()
    assert (JP.gold_pairs(held).gap >= JP.MIN_PAIR_GAP).sum() >= 10
    assert {"fluent", "word_salad"} <= set(g["shape"]) and g[g["shape"] == "word_salad"].coherence.max() <= 15


def _write(tmp_path, rows):
    (tmp_path / "gold_x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


GOOD = {"id": "1", "question": "q", "response": "r", "x": 50, "coherence": 90, "shape": "fluent", "split": "tune"}


@pytest.mark.parametrize("change, message", [
    ({"x": 140}, "gold_x.jsonl:1: x must be a number in 0..100, got 140"),
    ({"coherence": "high"}, "coherence must be a number"),
    ({"shape": "mumble"}, "shape 'mumble' is not one of"),
    ({"split": "test"}, "split 'test' is not one of"),
])
def test_a_bad_gold_row_fails_naming_file_line_and_key(tmp_path, change, message):
    _write(tmp_path, [{**GOOD, **change}])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JP.load_gold("x", folder=tmp_path)


def test_a_repeated_id_or_answer_fails_naming_both_lines(tmp_path):
    _write(tmp_path, [GOOD, {**GOOD, "response": "other"}])
    with pytest.raises(DataError, match=r"gold_x\.jsonl:2: id '1' already on line 1"):
        JP.load_gold("x", folder=tmp_path)
    _write(tmp_path, [GOOD, {**GOOD, "id": "2", "response": " r ", "x": 70}])
    with pytest.raises(DataError, match=r"gold_x\.jsonl:2: the same question and response already on line 1"):
        JP.load_gold("x", folder=tmp_path)


def test_a_missing_key_and_a_question_in_both_splits_fail(tmp_path):
    _write(tmp_path, [{k: v for k, v in GOOD.items() if k != "shape"}])
    with pytest.raises(DataError, match="gold_x.jsonl:1: missing key"):
        JP.load_gold("x", folder=tmp_path)
    _write(tmp_path, [GOOD, {**GOOD, "id": "2", "response": "another", "split": "heldout"}])
    with pytest.raises(DataError, match="in both splits"):
        JP.load_gold("x", folder=tmp_path)
    with pytest.raises(DataError, match="is missing"):
        JP.load_gold("nothing", folder=tmp_path)


def test_ones_own_gold_folder_adds_and_replaces_gold_sets_and_falls_back_to_ours(tmp_path):
    mine = {**GOOD, "cheer": 80}
    del mine["x"]
    (tmp_path / "gold_cheer.jsonl").write_text(json.dumps(mine) + "\n")
    shipped = JP.load_gold("optimism")
    relabelled = [{**r, "optimism": 100 - r["optimism"]} for r in map(json.loads, open(JP.gold_path("optimism")))]
    (tmp_path / "gold_optimism.jsonl").write_text("".join(json.dumps(r) + "\n" for r in relabelled))
    assert JP.gold_path("cheer", tmp_path) == tmp_path / "gold_cheer.jsonl"
    assert JP.gold_path("refusal", tmp_path) == JP.gold_path("refusal")  # not in the folder: ours
    assert JP.load_gold("cheer", folder=tmp_path).label.tolist() == [80]
    np.testing.assert_array_equal(JP.load_gold("optimism", folder=tmp_path).label, 100 - shipped.label)
    assert JP.missing_gold(["cheer", "refusal"], tmp_path) is None
    JP.check_gold(["cheer", "refusal"], tmp_path)
    assert JP.missing_gold(["cheer"]).startswith("no gold set for ['cheer']: write gold_cheer.jsonl in a folder "
                                                 "of your own and name it with gold_dir, or use a trait with one")
    with pytest.raises(DataError, match=f"write {tmp_path}/gold_awe.jsonl"):
        JP.check_gold(["cheer", "awe"], tmp_path)
    (tmp_path / "gold_refusl.jsonl").write_text("")  # a typo would silently read our refusal set
    with pytest.raises(DataError, match=r"gold_refusl\.jsonl: no trait 'refusl' is read here; did you mean "
                                        r"gold_refusal\.jsonl\?"):
        JP.check_gold(["cheer", "refusal"], tmp_path)
    (tmp_path / "gold_refusl.jsonl").unlink()
    (tmp_path / "gold_cheer.jsonl").write_text(json.dumps({**mine, "cheer": 120}) + "\n")
    with pytest.raises(DataError, match="gold_cheer.jsonl:1: cheer must be a number in 0..100"):
        JP.check_gold(["cheer"], tmp_path)


def test_pairs_are_within_question_and_oriented():
    g = pd.DataFrame({"trait": ["t"] * 4, "question": ["a", "a", "a", "b"], "label": [10, 90, 50, 70]})
    p = JP.gold_pairs(g)
    assert len(p) == 3 and (p.question == "a").all()  # question b has one row: no pair
    assert all(g.label[h] > g.label[lo] for h, lo in zip(p.hi, p.lo, strict=True))
    assert sorted(p.gap) == [40, 40, 80] and len(JP.gold_pairs(g, min_gap=40)) == 1
    wins = JP.score_wins(np.array([20.0, 20.0, np.nan, 0.0]), p)
    by = dict(zip(zip(p.hi, p.lo, strict=True), wins, strict=True))
    assert by[(1, 0)] == 0.5 and np.isnan(by[(2, 0)]) and np.isnan(by[(1, 2)])  # a tie is ½, unscored NaN


def test_fit_noise_recovers_the_noise_of_a_gaussian_absolute_judge():
    """An absolute score = label + N(0, s): the pair win is Φ(Δ / (√2 s)), so σ = √2 s."""
    rng = np.random.default_rng(0)
    s = 15.0
    labels = np.tile([10.0, 30, 50, 70, 90], 400)
    scores = labels + rng.normal(0, s, labels.size)
    g = pd.DataFrame({"trait": "t", "question": np.repeat(np.arange(400), 5), "label": labels})
    p = JP.gold_pairs(g)
    sigma = JP.fit_noise(p.gap.to_numpy(), JP.score_wins(scores, p))
    assert sigma == pytest.approx(math.sqrt(2) * s, rel=0.08)


def test_mde_is_the_gap_whose_win_rate_clears_the_power_threshold():
    sigma, n = 20.0, 16
    d = JP.mde_gap(sigma, n)
    from scipy.stats import norm
    assert norm.cdf(d / sigma) - 0.5 == pytest.approx(POWER_Z * 0.5 / math.sqrt(n))
    assert JP.mde_gap(sigma, 64) < d < JP.mde_gap(sigma, 8)  # more questions, smaller effects
    assert JP.mde_gap(sigma, 1) == math.inf  # one question can never reach 80% power
    assert JP.mde_gap(math.inf, 100) == math.inf


def test_a_blind_judge_has_infinite_noise_and_a_perfect_one_small():
    gap = np.array([10.0, 40, 80, 20, 60])
    assert JP.fit_noise(gap, np.full(5, 0.5)) == math.inf
    assert JP.fit_noise(gap, np.full(5, 0.3)) == math.inf
    assert JP.fit_noise(gap, np.ones(5)) < 2.0
    assert JP.fit_noise([10.0, 40.0, 60.0], [1.0, None, 1.0]) < 2.0  # a list with a missing judgement
    assert JP.accuracy_at(gap, np.array([1, 0, 1, np.nan, 0.5])) == (0.5, 3)  # gaps 40, 80, 60


# --- anchored rubric, pairwise decisions, the method to read a trait with -----------------------

def test_prompts_without_anchors_are_unchanged_so_replay_keys_stay_valid():
    from traitlab.atomic import stable_hash
    from traitlab.judge import judge_messages

    q, a = "Will it rain?", "Sunny days ahead!"
    # hashes of the plain prompts before anchors existed: a change here orphans every cached reply
    assert stable_hash(judge_messages("trait", q, a), 16) == "33f7c4095973f9bf"
    assert stable_hash(judge_messages("coherence", q, a), 16) == "40c6c07e42ba945e"


def test_anchored_prompt_shows_the_examples_in_score_order_before_the_question():
    from traitlab.judge import Anchor, judge_messages

    anchors = (Anchor(90, "Other?", "Great!"), Anchor(10, "Other?", "Awful."))
    text = judge_messages("trait", "Will it rain?", "Sunny!", anchors=anchors)[0]["content"]
    assert text.index("SCORE 10") < text.index("SCORE 90") < text.index("Will it rain?")
    assert "Awful." in text and "Great!" in text
    plain = judge_messages("trait", "Will it rain?", "Sunny!")[0]["content"]
    assert text.replace(text[text.index("Scored examples"):text.index("Here is the question")], "") == plain


def test_shipped_anchors_cover_the_gold_traits_and_coherence_on_other_questions():
    gold_questions = set()
    for t in SHIPPED:
        gold_questions |= set(JP.load_gold(t).question)
        assert [a.score for a in JP.load_anchors(t)] == [10, 50, 90]
    assert [a.score for a in JP.load_anchors("coherence")] == [10, 50, 90]
    assert not gold_questions & {a.question for t in [*SHIPPED, "coherence"] for a in JP.load_anchors(t)}


@pytest.mark.parametrize(("line", "message"), [
    ({"trait": "x", "score": 10, "question": "q"}, "answer"),
    ({"trait": "x", "score": 150, "question": "q", "answer": "a"}, "integer 0-100"),
    ({"trait": "y", "score": 10, "question": "q", "answer": "a"}, "no anchors for 'x'"),
])
def test_bad_anchors_fail_naming_file_and_fix(tmp_path, line, message):
    (tmp_path / "anchors.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=message):
        JP.load_anchors("x", tmp_path)


def test_ones_own_anchors_replace_ours_for_their_traits_only(tmp_path):
    mine = [{"trait": t, "score": s, "question": "q", "answer": f"{t} {s}"} for t in ("cheer", "optimism")
            for s in (90, 10)]
    (tmp_path / "anchors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))
    assert [(a.score, a.answer) for a in JP.load_anchors("cheer", tmp_path)] == [(10, "cheer 10"), (90, "cheer 90")]
    assert [a.answer for a in JP.load_anchors("optimism", tmp_path)] == ["optimism 10", "optimism 90"]
    assert JP.load_anchors("refusal", tmp_path) == JP.load_anchors("refusal")  # not in the folder: ours
    assert JP.load_anchors("coherence", tmp_path / "none") == JP.load_anchors("coherence")
    with pytest.raises(DataError, match=f"{tmp_path}/anchors.jsonl: no anchors for 'awe' \\(have: cheer, coherence"):
        JP.load_anchors("awe", tmp_path)


def test_floors_need_gold_answers_on_both_sides_of_the_coherence_cut(tmp_path):
    rows = [{**r, "coherence": max(r["coherence"], 60)} for r in map(json.loads, open(JP.gold_path("optimism")))]
    (tmp_path / "gold_optimism.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"every answer in the gold sets of \['optimism'\] is labelled at or above "
                                        r"coherence 50: the text-coherence floors need labelled answers on both sides"):
        JP.check_floor_gold(["optimism"], tmp_path)
    JP.check_floor_gold(["optimism", "refusal"], tmp_path)  # ours for refusal brings the incoherent ones


def test_a_pairwise_win_is_the_decision_not_the_compressed_probability():
    from traitlab.judge import Preference

    # a judge whose label probabilities hug ½ (as measured for small judges) but always lean right
    prefs = [Preference(0.5 + e, 0.58 + e, 0.42 + e, 0.99) for e in (0.01, 0.02, 0.005)]
    assert [p.win for p in prefs] == [1.0, 1.0, 1.0]
    assert Preference(0.45, 0.5, 0.4, 0.99).win == 0.0
    assert Preference(None, None, None, 0.0).win is None
    gap = np.array([50.0, 60, 70])
    assert JP.fit_noise(gap, [p.win for p in prefs]) < JP.fit_noise(gap, [p.p_first for p in prefs])


def _method_tables(win_pairwise: np.ndarray):
    """Gold rows of 8 questions × 3 levels; absolute scores with noise, pairwise wins given."""
    from traitlab.experiments import judge_calibration as jc

    rng = np.random.default_rng(0)
    rows = [{"trait": "optimism", "question": f"q{i}", "label": lab, "coherence": 90.0, "shape": "fluent",
             "response": f"r{i}-{lab}"} for i in range(8) for lab in (10.0, 50.0, 90.0)]
    g = pd.DataFrame(rows)
    g["trait_absolute"] = g.label + rng.normal(0, 40, len(g))
    g["coherence_judge"] = g.coherence
    pairs = JP.gold_pairs(g)
    pairs["win_absolute"] = JP.score_wins(g.trait_absolute.to_numpy(float), pairs)
    pairs["win_pairwise"] = win_pairwise[:len(pairs)]
    P = jc.Params(n_boot=50, mde_questions=16, anchored=False)
    return jc.method_sensitivity(g, pairs, P), P


def test_best_method_is_the_one_with_the_smallest_mde_and_none_when_all_are_blind():
    from traitlab.experiments import judge_calibration as jc

    sens, P = _method_tables(np.ones(24))
    assert list(sens.index.get_level_values(1)) == ["absolute", "pairwise"]  # no anchored column: no row
    assert sens.loc[("optimism", "pairwise"), "accuracy_gap40"] == 1.0
    assert jc.best_methods(sens, P) == {"optimism": "pairwise"}
    assert "pairwise sees the smallest effects" in jc.method_conclusions(sens, jc.coherence_sensitivity(
        pd.DataFrame({"trait": ["optimism"] * 4, "question": ["a", "a", "b", "b"], "coherence": [10.0, 90, 10, 90],
                      "shape": ["word_salad", "fluent"] * 2, "coherence_judge": [20.0, 80, 30, 70]}), P), P)[0]
    blind = sens.copy()
    blind[f"mde_n{P.mde_questions}"] = jc.MDE_CAP
    assert jc.best_methods(blind, P) == {"optimism": None}


def test_text_fit_is_fitted_on_the_tune_part_and_checked_against_the_floor():
    from traitlab.experiments import judge_calibration as jc
    from traitlab.models import load_model

    P = jc.Params(n_boot=50, anchored=False, gold_traits=["optimism"])
    fit = jc.text_fit(P, load_model("tiny-qwen2"))
    assert fit.n == len(JP.load_gold("optimism", "tune")) and fit.features == jc.TEXT_FIT_FEATURES
    # read as a measure on the 0–100 scale: word salad is checked against the coherence floor
    df = pd.DataFrame({"trait": ["optimism"] * 4, "question": ["a", "a", "b", "b"], "coherence": [10.0, 90, 10, 90],
                       "shape": ["word_salad", "fluent"] * 2, "coherence_text_fit": [55.0, 80, 30, 70]})
    coh = jc.coherence_sensitivity(df, P)
    assert list(coh.index) == ["text_fit"]
    assert coh.loc["text_fit", "word_salad_max"] == 55.0 and coh.loc["text_fit", "word_salad_above_floor"] == 1
    assert any("text_fit" in q.name and "word_salad_max" in q.name for q in jc.method_quantities(
        _method_tables(np.ones(24))[0], coh, P))


def test_positive_control_table_sees_an_effect_only_when_its_ci_clears_half():
    from traitlab.experiments import judge_calibration as jc

    P = jc.Params(n_boot=200, anchored=False, control_questions=16)
    rows = []
    for c in ("more", "less"):
        for q in range(16):
            rows.append({"contrast": c, "method": "pairwise", "question": f"q{q}", "win": 1.0, "difference": np.nan})
            rows.append({"contrast": c, "method": "absolute", "question": f"q{q}", "win": float(q % 2),
                         "difference": 5.0 if q % 2 else -5.0})
    table = jc.control_table(pd.DataFrame(rows), P)
    assert table.loc[("more", "pairwise"), "win_rate"] == 1.0 and table.loc[("more", "pairwise"), "seen"]
    assert table.loc[("less", "absolute"), "win_rate"] == 0.5 and not table.loc[("less", "absolute"), "seen"]
    assert table.loc[("more", "absolute"), "mean_difference"] == 0.0

    sens, P2 = _method_tables(np.ones(24))  # pairwise is optimism's best method
    claim = jc.control_claim(table, sens, P)
    assert claim.verdict == "holds" and claim.quantity == "control.more.pairwise.win_rate"
    worse = table.copy()
    worse.loc[("less", "pairwise"), "seen"] = False
    assert jc.control_claim(worse, sens, P).verdict == "inconclusive"
    lines = jc.control_conclusions(table, P)
    assert lines[0].startswith("pairwise: +r vs 0: 100% [100%, 100%]") and "not seen" in lines[1]


def test_control_params_fail_early():
    from traitlab.experiments import judge_calibration as jc
    from traitlab.params import ParamError

    with pytest.raises(ParamError, match="control_ratio"):
        jc.Params(control_ratio=0.0)
    with pytest.raises(ParamError, match="control_method"):
        jc.Params(control_method="pca2")
    with pytest.raises(ParamError, match="control_layer 99"):
        jc.Params(control_layer=99).check()


def test_the_opposite_reading_is_a_method_only_for_traits_that_have_one():
    """``trait_opposite`` is NaN for a trait without an entry in ``judge.TRAIT_OPPOSITES``: that
    trait gets no ``opposite`` row; a trait with readings gets one, scored like any 0–100 method."""
    from traitlab.experiments import judge_calibration as jc

    rows = [{"trait": t, "question": f"{t}{i}", "label": lab, "coherence": 90.0, "shape": "fluent",
             "response": f"r{i}-{lab}"} for t in ("optimism", "refusal") for i in range(6) for lab in (10.0, 50.0, 90.0)]
    g = pd.DataFrame(rows)
    g["trait_absolute"] = 100.0 - g.label  # read backwards, as the 1.5B judge reads refusal
    g["trait_opposite"] = np.where(g.trait == "refusal", g.label, np.nan)
    pairs = JP.gold_pairs(g)
    for m in ("absolute", "opposite"):
        pairs[f"win_{m}"] = JP.score_wins(g[f"trait_{m}"].to_numpy(float), pairs)
    pairs["p_pairwise_opposite"] = np.where(pairs.trait == "refusal", 0.6, np.nan)  # right, close to ½
    pairs["win_pairwise_opposite"] = np.where(pairs.trait == "refusal", 1.0, np.nan)
    P = jc.Params(n_boot=50, mde_questions=16, anchored=False)
    sens = jc.method_sensitivity(g, pairs, P)
    assert list(sens.loc["optimism"].index) == ["absolute"]
    assert list(sens.loc["refusal"].index) == ["absolute", "opposite", "pairwise_opposite"]
    assert sens.loc[("refusal", "pairwise_opposite"), "accuracy_gap40"] == 1.0
    assert sens.loc[("refusal", "pairwise_opposite"), "p_right_gap40"] == pytest.approx(0.6)  # its mean P(right)
    assert sens.loc[("refusal", "absolute"), "pearson_r"] == pytest.approx(-1.0)
    assert sens.loc[("refusal", "opposite"), "pearson_r"] == pytest.approx(1.0)
    assert jc.best_methods(sens, P)["refusal"] == "opposite"
    coh = jc.coherence_sensitivity(g.assign(coherence_judge=g.coherence), P)
    lines = jc.method_conclusions(sens, coh, P)
    assert "→ opposite sees the smallest effects; absolute reads refusal backwards (the whole r CI below 0)." in lines[1]
    assert "backwards" in lines[0]  # optimism's absolute is backwards here too
