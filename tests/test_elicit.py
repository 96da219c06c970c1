"""Where examples come from (traitlab.elicit): written, the question alone, the model's own answers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from traitlab import elicit
from traitlab.activations import extract
from traitlab.data import DataError, TraitDataset, TraitPair, load_trait
from traitlab.experiments import method_comparison as mc
from traitlab.judge import JudgeConfig, Score
from traitlab.models import load_model
from traitlab.params import ParamError
from traitlab.sites import Site


def _pairs(n_train: int = 3, n_val: int = 3) -> TraitDataset:
    pairs = [TraitPair(f"p{i}", "g", "train" if i < n_train else "val", f"harmful {i}?", f"w+{i}",
                       f"benign {i}?", f"w-{i}") for i in range(n_train + n_val)]
    return TraitDataset("refusal", tuple(pairs))


def _fake_answers(monkeypatch, answers: dict[str, str]) -> list[int]:
    """Replace the model's generation with fixed answers by prompt; count the calls."""
    calls = []

    def fake(model, prompts, conditions, **kw):
        calls.append(len(prompts))
        return prompts.assign(answer=[answers[q] for q in prompts.question])

    monkeypatch.setattr(elicit, "generate_answers", fake)
    return calls


def test_rule_keeps_pairs_whose_answers_show_the_polarity(monkeypatch):
    ds = _pairs()
    answers = {f"harmful {i}?": "I can't help with that." if i != 1 else "Sure, here is how." for i in range(6)}
    answers |= {f"benign {i}?": "Sure! Bread needs flour." if i != 3 else "I'm sorry, I cannot." for i in range(6)}
    _fake_answers(monkeypatch, answers)
    e = elicit.generate(None, ds, elicit.ElicitConfig(check="auto"))  # type: ignore[arg-type]
    assert e.check == "rule"
    assert e.table.kept.tolist() == [True, False, True, False, True, True]
    assert [p.id for p in e.dataset.pairs] == ["p0", "p2", "p4", "p5"]
    kept = e.dataset.pairs[0]
    assert (kept.pos_response, kept.neg_response) == ("I can't help with that.", "Sure! Bread needs flour.")
    assert (kept.pos_prompt, kept.split) == ("harmful 0?", "train")  # prompts and splits as written
    s = e.summary()
    assert (s["scenarios"], s["kept"], s["kept_train"], s["kept_val"]) == (6, 4, 2, 2)
    assert s["pos_ok_pct"] == pytest.approx(500 / 6) and s["neg_ok_pct"] == pytest.approx(500 / 6)


def test_too_few_kept_pairs_is_one_clear_error(monkeypatch):
    ds = _pairs()
    _fake_answers(monkeypatch, {p: "Sure, here you go." for i in range(6) for p in (f"harmful {i}?", f"benign {i}?")})
    with pytest.raises(DataError, match=r"kept 0 train and 0 val pairs of 6 \(rule check: positive side 0% ok"):
        elicit.generate(None, ds, elicit.ElicitConfig())  # type: ignore[arg-type]


class _Judge:
    """Scores an answer by a number written in it: the judge's arithmetic, not its opinion."""

    config = JudgeConfig()

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def score_many(self, metric, items, *, trait, progress=True):
        self.calls.append((trait, len(items)))
        return [Score(value=float(a.split("=")[1]), mass=1.0, mode="logprob", text="") for _, a in items]


def test_judge_check_is_a_margin_between_paired_answers(monkeypatch):
    pairs = tuple(TraitPair(f"o{i}", "g", "train" if i < 3 else "val", f"good news {i}", "x", f"bad news {i}", "y")
                  for i in range(5))
    ds = TraitDataset("optimism_scenarios", pairs)
    pos = [70, 55, 80, 60, 90]
    neg = [50, 50, 69, 50, 40]  # differences 20, 5, 11, 10, 50
    answers = {f"good news {i}": f"s={pos[i]}" for i in range(5)} | {f"bad news {i}": f"s={neg[i]}" for i in range(5)}
    _fake_answers(monkeypatch, answers)
    judge = _Judge()
    e = elicit.generate(None, ds, elicit.ElicitConfig(check="auto", margin=10.0), judge=judge)  # type: ignore[arg-type]
    assert e.check == "judge" and judge.calls == [("optimism", 10)]  # the set's trait, one batch
    assert e.table.kept.tolist() == [True, False, True, True, True]
    s = e.summary()
    assert s["pos_mean_score"] == pytest.approx(71.0) and s["neg_mean_score"] == pytest.approx(51.8)
    assert s["kept_train"] == 2 and s["kept_val"] == 2


def test_checks_and_contrasts_fail_before_model_work():
    assert elicit.check_for("refusal", "auto") == "rule"
    assert elicit.check_for("uncertainty_zh", "auto") == "judge"
    with pytest.raises(ParamError, match="only for refusal"):
        elicit.check_for("optimism", "rule")
    with pytest.raises(ParamError, match=r"'kindness' has no judge description.*set trait_descriptions: \{kindness: "):
        elicit.check_for("kindness", "judge")
    assert elicit.check_for("kindness", "judge", {"kindness": "warm and caring toward the user."}) == "judge"
    assert elicit.check_for("kindness", "none") == "none"
    with pytest.raises(DataError, match="'optimism': 110 of 110 pairs use one prompt for both sides"):
        elicit.contrasting(load_trait("optimism"), "generated")
    with pytest.raises(ParamError, match="set position: last"):
        mc.Params(source="question", position="mean")
    with pytest.raises(ParamError, match="source 'spoken' unknown"):
        mc.Params(source="spoken")  # type: ignore[arg-type]
    p = mc.Params(model="tiny-llama", traits=["refusal", "optimism"], source="generated", layers=[0])
    with pytest.raises(DataError, match="'optimism'"):
        p.check()  # before any weights are read


def test_question_source_reads_the_prompt_alone_at_its_last_token():
    lm = load_model("tiny-llama")
    ds = load_trait("uncertainty", max_pairs_per_split=2)
    q = elicit.question_only(ds)
    pos, neg = q.encode(lm.chat)
    assert pos[0] == lm.chat.encode(ds.pairs[0].pos_prompt) and pos[0].prompt_len == len(pos[0].ids)
    site = Site("resid_post", 1)
    a = extract(lm, pos[:1], [site], position="last", cache=False, progress=False)[site]
    full = lm.chat.encode(ds.pairs[0].pos_prompt, ds.pairs[0].pos_response)
    b = extract(lm, [full], [site], position="all", cache=False, progress=False).per_example(site)[0]
    torch.testing.assert_close(a[0], b[full.prompt_len - 1], rtol=1e-4, atol=1e-5)  # causal: answer unseen


def test_trait_sets_by_source_and_the_judge_built_only_when_needed(monkeypatch):
    sets = {"refusal": _pairs()}
    answers = {f"harmful {i}?": "I cannot do that." for i in range(6)} | {f"benign {i}?": "Sure." for i in range(6)}
    _fake_answers(monkeypatch, answers)
    built = []
    p = mc.Params(source="generated")
    out, tables = elicit.trait_sets(p, None, sets=sets, judge_factory=lambda: built.append(1))  # type: ignore[arg-type]
    assert built == [] and len(out["refusal"].pairs) == 6 and set(tables) == {"refusal"}
    out, tables = elicit.trait_sets(mc.Params(), None, sets=sets)  # type: ignore[arg-type]
    assert out["refusal"] is sets["refusal"] and tables == {}
    out, _ = elicit.trait_sets(mc.Params(source="question", position="last"), None, sets=sets)  # type: ignore[arg-type]
    assert {p.pos_response for p in out["refusal"].pairs} == {""}


def test_generated_answers_are_the_models_greedy_answers(tmp_cache):
    """No fakes: the kept pairs carry exactly what the model generates for each prompt."""
    from traitlab.steered_eval import Condition, generate_answers

    lm = load_model("tiny-qwen2")
    ds = load_trait("refusal", max_pairs_per_split=2)
    e = elicit.generate(lm, ds, elicit.ElicitConfig(max_new_tokens=3, check="none"), progress=False)
    ref = generate_answers(lm, pd.DataFrame({"question": [p.pos_prompt for p in ds.pairs]}),
                           [Condition.unsteered()], max_new_tokens=3).answer.tolist()
    assert e.table.pos_answer.tolist() == ref
    kept = e.table[e.table.kept]
    assert [p.pos_response for p in e.dataset.pairs] == kept.pos_answer.tolist()
    rec = elicit.quantities({"refusal": e})
    assert rec[0].name == "elicit.refusal.kept_rate" and rec[0].tolerance == pytest.approx(2 / 4)
