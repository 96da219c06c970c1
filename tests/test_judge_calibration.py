"""Judge calibration and model-chain experiment code: data, agreement maths, parameters."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from traitlab import chain
from traitlab.experiments import judge_calibration as jc
from traitlab.experiments import model_chain as mcn
from traitlab.params import ParamError, validate


def test_gold_set_design():
    g = jc.load_gold()
    assert len(g) == 72 and g.question.nunique() == 12 and g.id.is_unique
    assert g.level.value_counts().to_dict() == {"coherent": 36, "degraded": 24, "word salad": 12}
    assert g.optimism.between(0, 100).all() and g.coherence.between(0, 100).all()
    coherent = g[g.level == "coherent"]
    assert coherent.optimism.min() <= 15 and coherent.optimism.max() >= 85
    small = jc.load_gold("optimism", 12, seed=0)
    assert len(small) == 12 and small.equals(jc.load_gold("optimism", 12, seed=0))


def test_questions_are_held_out():
    from traitlab.data import opinion_questions

    q = opinion_questions("test")
    assert len(q) == 40 and q.domain.nunique() == 10
    assert len(opinion_questions("train")) == 20
    assert len(opinion_questions("test", 5)) == 5
    assert not set(q.id) & set(opinion_questions("train").id)


def _frame(trait_lp, trait_tx, gold_t, coh_lp, coh_tx, gold_c):
    return pd.DataFrame({"trait_logprob": trait_lp, "trait_text": trait_tx, "optimism": gold_t,
                         "coherence_logprob": coh_lp, "coherence_text": coh_tx, "coherence": gold_c})


def test_agreement_is_exact():
    rng = np.random.default_rng(0)
    gold_t = rng.integers(0, 100, 30).astype(float)
    gold_c = rng.integers(0, 100, 30).astype(float)
    lp = gold_t + rng.normal(0, 10, 30)
    tx = np.where(np.arange(30) < 5, np.nan, gold_t + 5)
    df = _frame(lp, tx, gold_t, gold_c, gold_c, gold_c)
    a = jc.agreement(df, {"trait": "optimism", "coherence": "coherence"}, ["logprob", "text"], n_boot=50)
    assert a.loc[("trait", "logprob"), "pearson_r"] == pytest.approx(stats.pearsonr(lp, gold_t)[0], abs=1e-3)
    assert a.loc[("trait", "logprob"), "mae"] == pytest.approx(np.abs(lp - gold_t).mean(), abs=1e-3)
    assert a.loc[("trait", "text"), "scored"] == "25/30"
    assert a.loc[("trait", "text"), "mae"] == pytest.approx(5.0)
    assert a.loc[("coherence", "logprob"), "pearson_r"] == pytest.approx(1.0)
    m = jc.mode_agreement(df)
    assert m.loc["trait", "both_scored"] == 25
    assert m.loc["trait", "mean_logprob_minus_text"] == pytest.approx((lp[5:] - gold_t[5:] - 5).mean(), abs=1e-3)


@pytest.mark.parametrize("kw, msg", [
    ({"trait": "whimsy"}, "no judge description"),
    ({"gold_traits": []}, "at least one"),
    ({"gold_split": "test"}, "gold_split"),
    ({"top_logprobs": 40}, "top_logprobs"),
    ({"max_gold": 1}, "max_gold"),
    ({"judge_backend": "anthropic"}, "judge_backend"),
])
def test_calibration_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(jc.Params, kw)


def test_a_trait_without_a_gold_set_fails_naming_the_file_and_the_sets_there():
    with pytest.raises(ParamError, match=r"trait 'candour' has no judge description"):
        jc.Params(gold_traits=["candour"])
    with pytest.raises(ParamError, match=r"no gold set for \['candour'\]: write gold_candour\.jsonl .* \(formality, humor, optimism"):
        jc.Params(gold_traits=["candour"], trait_descriptions={"candour": "saying plainly what one thinks."})


def test_a_new_trait_calibrates_on_its_own_gold_set_and_anchors_from_gold_dir(tmp_path):
    from traitlab import judge_power

    cheer = {"cheer": "bright, upbeat and encouraging."}
    rows = judge_power.gold_path("optimism").read_text().replace('"optimism":', '"cheer":')
    (tmp_path / "gold_cheer.jsonl").write_text(rows)
    with pytest.raises(ParamError, match=r"anchored: true needs anchors for 'cheer'.*no anchors for 'cheer'"):
        jc.Params(trait="cheer", gold_traits=["cheer"], trait_descriptions=cheer, gold_dir=str(tmp_path))
    (tmp_path / "anchors.jsonl").write_text("".join(
        json.dumps({"trait": "cheer", "score": s, "question": "How was your day?", "answer": a}) + "\n"
        for s, a in ((10, "Awful, as usual."), (50, "Fine."), (90, "Wonderful, thanks!"))))
    P = jc.Params(trait="cheer", gold_traits=["cheer", "refusal"], trait_descriptions=cheer, gold_dir=str(tmp_path))
    assert P.judge_config("logprob").gold_dir == str(tmp_path)
    g = jc.method_gold(P)
    assert set(g.trait) == {"cheer", "refusal"} and len(g[g.trait == "cheer"]) == len(jc.load_gold("optimism").query(
        "split == 'heldout'"))
    assert jc.load_gold("cheer", folder=str(tmp_path)).cheer.tolist() == jc.load_gold("optimism").optimism.tolist()


def test_a_gold_set_the_comparison_or_the_probe_cannot_use_fails_before_model_work(tmp_path):
    from traitlab import judge_power

    cheer = {"cheer": "bright, upbeat and encouraging."}
    rows = [json.loads(x.replace('"optimism":', '"cheer":'))
            for x in judge_power.gold_path("optimism").read_text().splitlines()]
    tune = [r for r in rows if r["split"] == "tune"]
    (tmp_path / "gold_cheer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tune))
    kw = {"gold_traits": ["cheer"], "trait_descriptions": cheer, "gold_dir": str(tmp_path), "anchored": False}
    with pytest.raises(ParamError, match=r"gold_cheer\.jsonl: the method comparison reads its heldout part, which "
                                         r"has answers to 0 question\(s\); it needs 2 or more \(or set gold_split\)"):
        jc.Params(**kw)
    assert jc.Params(**kw, gold_split="tune").gold_split == "tune"
    heldout = [r for r in rows if r["split"] == "heldout"]
    few = [r for r in tune if r["question"] in list(dict.fromkeys(x["question"] for x in tune))[:3]]
    (tmp_path / "gold_cheer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in few + heldout))
    with pytest.raises(ParamError, match=r"a probe needs answers to at least 5 questions in its tune split"):
        jc.Params(**kw)
    assert jc.Params(**kw, probe_model=None, perplexity=False).probe_model is None  # nothing fitted on tune


def test_a_traits_opposite_from_the_parameters_reaches_the_judge_config():
    P = jc.Params(trait_opposites={"optimism": ["pessimism", "a gloomy outlook expecting the worst."]})
    assert P.judge_config("logprob").opposite("optimism") == ("pessimism", "a gloomy outlook expecting the worst.")
    assert P.judge_config("text").opposite("refusal")[0] == "compliance"
    with pytest.raises(ParamError, match=r"trait_opposites\['optimism'\] must be"):
        jc.Params(trait_opposites={"optimism": ["pessimism", ""]})


def test_judge_config_carries_every_knob():
    p = jc.Params(judge_backend="openai", judge_model="m", judge_base_url="http://x/v1", min_mass=0.3, probe_model=None)
    c = p.judge_config("text")
    assert (c.backend, c.model, c.base_url, c.mode, c.min_mass) == ("openai", "m", "http://x/v1", "text", 0.3)


def test_instructions_split_and_stratified_sample():
    train, held = chain.load_instructions("train"), chain.load_instructions("eval")
    assert len(train) == 256 and len(held) == 64
    assert not set(train.instruction) & set(held.instruction)
    small = chain.load_instructions("train", 16)
    assert len(small) == 16 and small.category.nunique() == 16


@pytest.mark.parametrize("kw, msg", [({"n_train": 1}, "n_train"), ({"dpo_beta": 0.0}, "dpo_beta"),
                                     ({"warmup_frac": 1.0}, "warmup_frac")])
def test_chain_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(mcn.Params, kw)


def _calibration_frames(n_gold=20, n_base=10, harsh=-8.0):
    rng = np.random.default_rng(1)
    gold_t, gold_c = rng.uniform(0, 100, n_gold), rng.uniform(0, 100, n_gold)
    scored = pd.DataFrame({"optimism": gold_t, "coherence": gold_c,
                           "trait_logprob": gold_t + rng.normal(0, 5, n_gold),
                           "trait_text": np.round(gold_t + rng.normal(0, 25, n_gold), -1),
                           "coherence_logprob": gold_c + rng.normal(0, 5, n_gold),
                           "coherence_text": gold_c})
    text = rng.uniform(20, 40, n_base)
    base = pd.DataFrame({"trait_logprob": text + harsh + rng.normal(0, 1, n_base), "trait_text": text,
                         "coherence_logprob": np.full(n_base, 80.0), "coherence_text": np.full(n_base, 80.0)})
    return scored, base


def test_record_quantities_tolerances_and_verdicts():
    from traitlab import records

    P = jc.Params(n_boot=200)
    scored, base = _calibration_frames()
    agree = jc.agreement(scored, {"trait": "optimism", "coherence": "coherence"}, ["logprob", "text"], n_boot=20)
    rec = jc.record(P, scored, base, agree, jc.mode_agreement(scored))
    assert rec["n_gold"].value == 20 and rec["n_gold"].tolerance == 0
    assert rec["trait_text_scored"].tolerance == pytest.approx(1 / 20)
    r = rec["trait_logprob_r"]
    assert r.value == pytest.approx(stats.pearsonr(scored.trait_logprob, scored.optimism)[0])
    assert r.tolerance == pytest.approx(2 * (1 - r.value ** 2) / np.sqrt(17))  # k = 2: fixed text
    assert rec["trait_text_r"].tolerance_rule.startswith("3 standard errors")  # generated integer
    assert rec["baseline_coherence_logprob"].tolerance > 0  # constant scores: the SE floor, never 0
    # logprob 8 points harsher, SE ≈ 0.3: detectable and seen, as the seed's 6.1 vs 10.0
    verdicts = {c.id: c.verdict for c in rec.claims}
    assert verdicts == {"logprob_harsher_baseline": "holds", "logprob_agrees_better": "holds"}
    # no gap at all, with power to see the seed's 3.9 points: not held
    scored2, base2 = _calibration_frames(harsh=0.0)
    rec2 = jc.record(P, scored2, base2, agree, jc.mode_agreement(scored2))
    assert {c.id: c.verdict for c in rec2.claims}["logprob_harsher_baseline"] == "not held"
    # two baseline answers: no power, inconclusive
    rec3 = jc.record(P, scored, base.head(2).assign(trait_logprob=[30.0, 31.0], trait_text=[30.0, 29.0]),
                     agree, jc.mode_agreement(scored))
    assert {c.id: c.verdict for c in rec3.claims}["logprob_harsher_baseline"] == "inconclusive"
    assert records.compare(rec, rec) == []
    moved = base.assign(trait_text=base.trait_text + 20)  # tolerance: 3 SEs ≈ 5.5 points
    problems = records.compare(rec, jc.record(P, scored, moved, agree, jc.mode_agreement(scored)))
    assert any(p.startswith("judge_calibration.baseline_trait_text:") for p in problems)
    assert not any("trait_logprob_r" in p for p in problems)
