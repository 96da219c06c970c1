"""The shared steered-evaluation loop: conditions, ratios, generation, judging, paired effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab import steered_eval as se
from traitlab import steering
from traitlab.judge import Score
from traitlab.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_generate_answers_equals_per_condition_generation_and_shares_duplicates(tiny, tmp_cache, monkeypatch):
    qs = pd.DataFrame({"question_id": ["a", "b"], "question": ["Hello there", "What is up?"]})
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    steer = se.at_ratio("resid_pre@1", v, 2.0, {"resid_pre@1": 5.0})
    conds = [se.Condition.unsteered(trait="x", layer=-1), se.Condition.unsteered(trait="y", layer=-1),
             se.Condition((steer,), trait="x", layer=1)]
    calls = []
    real = steering.generate_steered

    def counting(model, examples, conditions, **k):
        calls.append([len(c) for c in conditions])
        return steering.generate_steered_grid(model, examples, conditions, **k)

    monkeypatch.setattr(se, "generate_steered_grid", counting)
    df = se.generate_answers(tiny, qs, conds, max_new_tokens=4)
    assert calls == [[0, 1]]  # the two unsteered conditions share one generation
    assert list(df.columns) == ["trait", "layer", "question_id", "question", "answer"]
    assert df.trait.tolist() == ["x", "x", "y", "y", "x", "x"] and df.question_id.tolist() == ["a", "b"] * 3
    ex = [tiny.chat.encode(q) for q in qs.question]
    assert df.answer.tolist()[4:] == [t.strip() for t in real(tiny, ex, [steer], max_new_tokens=4)]
    assert df.answer.tolist()[:2] == df.answer.tolist()[2:4] == [t.strip() for t in real(tiny, ex, [], max_new_tokens=4)]
    with pytest.raises(KeyError, match="no 'prompt' column"):
        se.generate_answers(tiny, qs, conds, text="prompt", max_new_tokens=1)


def test_rows_decoded_together_are_a_speed_knob_not_a_cache_key(tiny, tmp_cache, monkeypatch):
    """``max_rows`` reaches the grid, leaves the answers alone, and a cached answer made with other
    rows per step is served (it can differ only in float rounding, like the CPU's)."""
    qs = pd.DataFrame({"question": ["Hello there", "What is up?", "Tell me more"]})
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(2))
    conds = [se.Condition((se.at_ratio("resid_pre@1", v, r, {"resid_pre@1": 5.0}),), ratio=r) for r in (1.0, 2.0)]
    seen = []
    real = steering.generate_steered_grid

    def spy(*a, **k):
        seen.append(k["max_rows"])
        return real(*a, **k)

    monkeypatch.setattr(se, "generate_steered_grid", spy)
    few = se.generate_answers(tiny, qs, conds, max_new_tokens=4, batch_size=2, max_rows=2)
    assert seen == [2]
    many = se.generate_answers(tiny, qs, conds, max_new_tokens=4, batch_size=2, max_rows=64)
    assert seen == [2]  # served from the cache
    assert many.answer.tolist() == few.answer.tolist()
    fresh = se.generate_answers(tiny, qs, conds, max_new_tokens=4, batch_size=2, cache=False)
    assert seen == [2, steering.DECODE_ROWS] and fresh.answer.tolist() == few.answer.tolist()
    with pytest.raises(ValueError, match="max_rows must be >= 1, got 2 and 0"):
        se.generate_answers(tiny, qs, conds, max_new_tokens=4, batch_size=2, max_rows=0, cache=False)


def test_grid_generation_equals_per_condition_generation(tiny):
    """Conditions decoded together (rows of one batch, per-row additions at one or two sites, all
    or response positions, greedy or sampled) give each condition's own generate_steered texts."""
    ex = [tiny.chat.encode(t) for t in ("Hello there", "What is up?", "A much longer prompt than the others here")]
    g = torch.Generator().manual_seed(1)
    v, w = torch.randn(tiny.d_model, generator=g), torch.randn(tiny.d_model, generator=g)
    conds = [[], [steering.Steer("resid_pre@1", v, 3.0)], [steering.Steer("resid_pre@1", v, -3.0)],
             [steering.Steer("resid_post@0", w, 2.0), steering.Steer("resid_pre@1", v, 1.0)]]
    for positions, sampling in (("response", None), ("all", None),
                                ("response", steering.Sampling(temperature=1.0, seed=3))):
        grid = steering.generate_steered_grid(tiny, ex, conds, max_new_tokens=5, positions=positions,
                                              batch_size=2, max_rows=4, sampling=sampling)
        each = [steering.generate_steered(tiny, ex, c, max_new_tokens=5, positions=positions, batch_size=2,
                                          sampling=sampling) for c in conds]
        assert grid == each, (positions, sampling)
    assert len({tuple(t) for t in grid}) > 1  # the conditions do differ


def test_at_ratio_scales_a_unit_direction_by_the_activation_norm():
    s = se.at_ratio("resid_pre@3", torch.tensor([0.0, 2.0]), 0.5, {"resid_pre@3": 8.0})
    assert torch.equal(s.delta, torch.tensor([0.0, 4.0]))  # norm 0.5 × 8, direction kept
    unit = torch.tensor([0.6, 0.8])
    assert se.at_ratio("resid_pre@3", unit, 1.0, {"resid_pre@3": 2.0}).vector is unit
    with pytest.raises(KeyError, match="no activation norm for resid_pre@4"):
        se.at_ratio("resid_pre@4", unit, 1.0, {"resid_pre@3": 2.0})
    with pytest.raises(ValueError, match="zero vector"):
        se.at_ratio("resid_pre@3", torch.zeros(2), 1.0, {"resid_pre@3": 2.0})


class _Judge:
    """Scores an answer by its length, so each (trait, answer) has a known score."""

    def __init__(self):
        self.calls = []

    def score_many(self, metric, items, trait="optimism", progress=False):
        self.calls.append((metric, trait, len(items)))
        return [Score(None if a == "" else float(len(a)) + (100 if metric == "coherence" else 0), None,
                      "logprob", "") for _, a in items]

    def yesno_many(self, metric, items, trait="optimism", progress=False):
        self.calls.append(("yesno", metric, trait, len(items)))
        return [Score(50.0, 1.0, "logprob", "Yes") for _ in items]

    def opposite_many(self, items, trait="refusal", progress=False):
        self.calls.append(("opposite", trait, len(items)))
        return [Score(25.0, 1.0, "logprob", "75") for _ in items]


def test_judge_answers_judges_each_row_for_its_own_trait_and_keeps_order():
    df = pd.DataFrame({"trait": ["b", "a", "b"], "question": ["q1", "q2", "q3"], "answer": ["xx", "yyy", ""]})
    j = _Judge()
    out = se.judge_answers(j, df, {"trait": "score"})
    assert out.score.tolist()[:2] == [2.0, 3.0] and np.isnan(out.score.iloc[2])
    assert sorted(j.calls) == [("trait", "a", 1), ("trait", "b", 2)]
    both = se.judge_answers(_Judge(), df.drop(columns="trait"), ("trait", "coherence"), trait="optimism")
    assert both.coherence.tolist()[:2] == [102.0, 103.0]
    with pytest.raises(KeyError, match="pass trait="):
        se.judge_answers(j, df.drop(columns="trait"))
    yn = _Judge()
    assert se.judge_answers(yn, df, {"trait": "score"}, reading="yesno").score.tolist() == [50.0] * 3
    assert sorted(yn.calls) == [("yesno", "trait", "a", 1), ("yesno", "trait", "b", 2)]
    op = _Judge()  # the trait through its opposite; coherence (no opposite) by its score
    both = se.judge_answers(op, df, ("trait", "coherence"), reading="opposite")
    assert both.trait.tolist() == [25.0] * 3 and both.coherence.tolist()[:2] == [102.0, 103.0]
    assert sorted(op.calls, key=str) == sorted([("opposite", "a", 1), ("opposite", "b", 2), ("coherence", "a", 1),
                                               ("coherence", "b", 2)], key=str)
    with pytest.raises(ValueError, match="reading must be one of absolute, yesno, opposite"):
        se.judge_answers(j, df, reading="pairwise")


def test_paired_effects_pair_by_question_within_trait():
    rows = []
    for trait, base in (("a", [10.0, 20.0, 30.0]), ("b", [50.0, 50.0, 50.0])):
        rows += [{"trait": trait, "cond": "none", "question": i, "score": s} for i, s in enumerate(base)]
        rows += [{"trait": trait, "cond": "up", "question": i, "score": s + d}
                 for i, (s, d) in enumerate(zip(base, [5.0, 7.0, np.nan], strict=True))]
    df = pd.DataFrame(rows)
    e = se.paired_effects(df, by=["trait", "cond"], baseline=df.cond == "none", within=["trait"])
    a = e.loc[("a", "up")]
    assert a.delta == 6.0 and a.n == 2 and a.baseline == 15.0 and a.steered == 21.0  # question 2 unscored
    assert a.se == pytest.approx(1.0) and a.ci_lo < 6.0 < a.ci_hi
    with pytest.raises(ValueError, match="several rows per"):
        se.paired_effects(df, by=["cond"], baseline=df.cond == "none")  # trait forgotten: ambiguous baseline
    wide, strata = se.unit_matrix(df, by=["trait", "cond"], baseline=df.cond == "none", within=["trait"])
    assert wide.shape == (2, 6) and sorted(strata) == ["a", "b"] and len(strata["a"]) == 3


def test_generations_are_cached_by_every_input(tiny, tmp_cache, monkeypatch):
    qs = pd.DataFrame({"question": ["Hello there", "What is up?"]})
    v = torch.ones(tiny.d_model)
    conds = [se.Condition.unsteered(kind="base"), se.Condition((steering.Steer("resid_pre@1", v, 2.0),), kind="up")]
    first = se.generate_answers(tiny, qs, conds, max_new_tokens=3)
    files = sorted(tmp_cache.rglob("*.json"))
    assert len(files) == 2  # one entry per condition

    def boom(*a, **k):
        raise AssertionError("generated although cached")

    monkeypatch.setattr(se, "generate_steered_grid", boom)
    assert se.generate_answers(tiny, qs, conds, max_new_tokens=3).equals(first)  # replayed
    for changed in ({"max_new_tokens": 4}, {"positions": "all"}, {"batch_size": 1}):
        with pytest.raises(AssertionError, match="generated although cached"):
            se.generate_answers(tiny, qs, conds, **{"max_new_tokens": 3, **changed})
    other = [se.Condition((steering.Steer("resid_pre@1", v, 2.5),), kind="up")]
    with pytest.raises(AssertionError, match="generated although cached"):
        se.generate_answers(tiny, qs, other, max_new_tokens=3)  # another coefficient
    # a damaged entry is never served: it is regenerated, with a warning
    monkeypatch.undo()
    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_cache))
    files[0].write_text('{"key": "x", "texts": ["forged", "forged"]}')
    with pytest.warns(UserWarning, match="unreadable"):
        again = se.generate_answers(tiny, qs, conds, max_new_tokens=3)
    assert again.equals(first)
    assert not se.generate_answers(tiny, qs, conds, max_new_tokens=3, cache=False).empty


def test_instruction_change_pairs_answers_by_question_and_paraphrase():
    """Each positive answer meets the negative answer to the same question under the same
    paraphrase index; ``same`` counts word-for-word equal pairs, ``similarity`` is their mean."""
    rows = []
    for q, (pos, neg) in enumerate([("It will be great!", "it will be GREAT"),  # same words
                                    ("Sunny days ahead.", "Storms are coming."),  # nothing shared
                                    ("I do not know the answer", "I don't know the answer")]):
        for k in (0, 1):  # paraphrase 1 changes nothing: pairs must not cross paraphrases
            rows += [{"trait": "t", "question": q, "prompt": k, "polarity": "positive", "answer": pos if k == 0 else neg},
                     {"trait": "t", "question": q, "prompt": k, "polarity": "negative", "answer": neg}]
    df = pd.DataFrame(rows).assign(score=50.0)
    ch = se.instruction_change(df).loc["t"]
    assert ch.pairs == 6 and ch.same == pytest.approx(4 / 6)
    assert ch.similarity == pytest.approx((1 + 0 + 8 / 11 + 3) / 6)
    assert se.change_text(ch) == ("the instructions left 4/6 answer pairs word for word the same "
                                  "(mean word similarity 0.79)")
    q = {x.name: x for x in se.change_quantities("control.t", ch)}
    assert q["control.t.same"].value == pytest.approx(4 / 6) and q["control.t.same"].n == 6
    assert q["control.t.similarity"].value == pytest.approx(ch.similarity)
    one = df[df.prompt == 0]  # one answer per question and polarity, as the reports' controls have
    e = se.polarity_effects(one).loc["t"]  # the same columns beside the judged difference
    assert e.delta == 0.0 and e.pairs == 3 and e.same == pytest.approx(1 / 3)
    assert e.similarity == pytest.approx((1 + 0 + 8 / 11) / 3)
    # without answers (or pairs) there is nothing to say
    assert "same" not in se.polarity_effects(one.drop(columns="answer")).columns
    assert se.change_text(pd.Series({"delta": 1.0})) == "" and se.change_quantities("x", pd.Series({"pairs": 0.0})) == []


def test_rotate_spreads_draws_over_the_prompts():
    draws = [se.Condition(seed=s) for s in (7, 8, 9)]
    got = se.rotate(draws, 7, offset=2)
    assert [dict(c.labels)["seed"] for c in got] == [7, 8, 9]
    assert [c.only for c in got] == [(1, 4), (2, 5), (0, 3, 6)]  # prompt i under draw (i + 2) mod 3
    assert sorted(i for c in got for i in c.only) == list(range(7))  # each prompt answered once
    with pytest.raises(ValueError, match="at least as many prompts"):
        se.rotate(draws, 2)
    with pytest.raises(ValueError, match="already answer only some"):
        se.rotate(got, 7)
    with pytest.raises(ValueError, match="no draws"):
        se.rotate([], 3)


def test_conditions_that_answer_some_prompts(tiny, tmp_cache, monkeypatch):
    """A condition with ``only`` answers just those prompts, as a generation on them alone would;
    conditions with the same prompts are decoded together; a bad position fails before any model work."""
    qs = pd.DataFrame({"question_id": ["a", "b", "c"], "question": ["Hello there", "What is up?", "Tell me more"]})
    vs = [torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    steers = [se.at_ratio("resid_pre@1", v, 2.0, {"resid_pre@1": 5.0}) for v in vs]
    conds = [se.Condition.unsteered(kind="baseline"),
             *se.rotate([se.Condition((s,), kind="random", seed=k) for k, s in enumerate(steers)], 3),
             se.Condition((steers[0],), kind="learned", only=[0, 2])]
    calls = []
    real = steering.generate_steered_grid

    def counting(model, examples, conditions, **k):
        calls.append((len(examples), len(conditions)))
        return real(model, examples, conditions, **k)

    monkeypatch.setattr(se, "generate_steered_grid", counting)
    df = se.generate_answers(tiny, qs, conds, max_new_tokens=4)
    assert sorted(calls) == [(1, 1), (2, 1), (3, 1)]  # "learned" has seed 0's steers and prompts: made once
    assert df.kind.tolist() == ["baseline"] * 3 + ["random"] * 3 + ["learned"] * 2
    assert df.question_id.tolist() == ["a", "b", "c", "a", "c", "b", "a", "c"]
    ex = [tiny.chat.encode(q) for q in qs.question]
    alone = [t.strip() for t in steering.generate_steered(tiny, [ex[0], ex[2]], [steers[0]], max_new_tokens=4)]
    assert df.answer.tolist()[3:5] == df.answer.tolist()[6:] == alone
    assert df.answer.tolist()[5] == steering.generate_steered(tiny, [ex[1]], [steers[1]], max_new_tokens=4)[0].strip()
    calls.clear()
    for bad in ([0, 3], [1, 1], [-1]):
        with pytest.raises(ValueError, match="each must be one of 0..2, once"):
            se.generate_answers(tiny, qs, [se.Condition((steers[0],), kind="x", only=bad)], max_new_tokens=4)
    assert not calls
