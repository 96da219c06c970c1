"""The probe reader: ridge in closed form, folds of whole questions, the layer and penalty chosen
on training rows only, features from a tiny model, and the calibration's use of it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from traitlab import judge_power as JP
from traitlab import probe_reader as PR
from traitlab.judge import JudgeConfig
from traitlab.models import load_model


def test_ridge_equals_the_normal_equations_for_every_penalty():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(12, 30))  # wider than tall, as activations are
    z -= z.mean(0)
    y = rng.normal(size=12)
    y -= y.mean()
    alphas = [0.1, 3.0, 1e4]
    got = PR.ridge(z, y, alphas)
    for a, w in zip(alphas, got, strict=True):
        np.testing.assert_allclose(w, np.linalg.solve(z.T @ z + a * np.eye(30), z.T @ y), rtol=1e-8, atol=1e-10)


def test_folds_keep_each_question_whole_and_deal_questions_round_robin():
    groups = ["q3", "q1", "q3", "q2", "q4", "q1", "q5", "q6"]
    f = PR.group_folds(groups, 3)
    assert f.tolist() == [0, 1, 0, 2, 0, 1, 1, 2]
    for g in set(groups):
        assert len({f[i] for i, x in enumerate(groups) if x == g}) == 1


def _signal(n=60, d=10, layer_with_signal=2, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = {la: rng.normal(size=(n, d)) for la in range(4)}
    y = 50 + 15 * x[layer_with_signal][:, 3] - 5 * x[layer_with_signal][:, 7] + noise * rng.normal(size=n)
    return x, y, np.arange(n) // 5  # 12 questions of 5 answers


def test_fit_finds_the_layer_that_carries_the_label_and_reads_it_back():
    x, y, g = _signal()
    p = PR.fit(x, y, g, target="optimism", reader="toy")
    assert (p.layer, p.n_train, p.n_groups) == (2, 60, 12)
    assert p.cv_r > 0.99 and p.alpha == PR.ALPHAS[0]
    assert np.corrcoef(p.predict(x[2]), y)[0, 1] > 0.999  # up to the α = 1 shrinkage
    # the refit is ridge on standardised features at the chosen penalty, intercept the label mean
    mean, scale = x[2].mean(0), x[2].std(0)
    w = PR.ridge((x[2] - mean) / scale, y - y.mean(), [p.alpha])[0]
    np.testing.assert_allclose(p.weights, w)
    assert p.intercept == pytest.approx(y.mean())
    assert "resid_post@2" in p.text() and "60 answers to 12 questions" in p.text()


def test_labels_the_features_do_not_carry_get_a_cross_validated_r_that_says_so():
    x, _, g = _signal()
    y = 50 + 20 * np.random.default_rng(7).normal(size=60)  # unrelated to every feature
    assert PR.fit(x, y, g, target="t", reader="toy").cv_r < 0.5
    assert PR.fit(*_signal()[:2], g, target="t", reader="toy").cv_r > 0.99


def test_rows_with_a_nan_feature_or_label_are_left_out_of_the_fit():
    x, y, g = _signal()
    x_nan = {la: v.copy() for la, v in x.items()}
    x_nan[0][4] = np.nan  # an empty answer: NaN at every layer in practice, one is enough
    y_nan = y.copy()
    y_nan[9] = np.nan
    keep = np.ones(60, bool)
    keep[[4, 9]] = False
    a = PR.fit(x_nan, y_nan, g, target="t", reader="toy")
    b = PR.fit({la: v[keep] for la, v in x.items()}, y[keep], g[keep], target="t", reader="toy")
    assert (a.layer, a.alpha, a.n_train) == (b.layer, b.alpha, 58)
    np.testing.assert_allclose(a.weights, b.weights)
    assert np.isnan(a.predict(x_nan[a.layer])[4]) if a.layer == 0 else True


def test_fit_errors_are_one_line_and_say_what_to_do():
    x, y, _ = _signal()
    with pytest.raises(PR.ProbeError, match="at least 5 questions.*got 3 .*tune split"):
        PR.fit(x, y, np.arange(60) % 3, target="refusal", reader="toy")
    with pytest.raises(PR.ProbeError, match="labels do not vary"):
        PR.fit(x, np.full(60, 40.0), np.arange(60) // 5, target="refusal", reader="toy")
    with pytest.raises(PR.ProbeError, match="no layers"):
        PR.fit({}, y, np.arange(60) // 5, target="refusal", reader="toy")


def test_answer_features_are_the_mean_residual_over_the_answer_and_nan_for_an_empty_one():
    from traitlab.activations import extract
    from traitlab.sites import Site

    m = load_model("tiny-qwen2")
    items = [("Is it going to rain?", "Probably not, enjoy the day."), ("Will it work?", ""),
             ("Will it work?", "It will, with a little care.")]
    f = PR.answer_features(m, items, [0, 1], progress=False, cache=False)
    assert set(f) == {0, 1} and f[1].shape == (3, m.d_model)
    assert np.isnan(f[1][1]).all() and np.isfinite(f[1][[0, 2]]).all()
    one = extract(m, [m.chat.encode(*items[2])], [Site("resid_post", 1)], position="mean", cache=False,
                  progress=False)[Site("resid_post", 1)]
    np.testing.assert_allclose(f[1][2], one[0].float().numpy(), rtol=1e-4, atol=1e-5)


def test_a_probe_reads_only_through_the_model_it_was_fitted_on():
    m = load_model("tiny-qwen2")
    x, y, g = _signal(d=m.d_model)
    p = PR.fit(x, y, g, target="optimism", reader="someone-else@abc:float32")
    with pytest.raises(PR.ProbeError, match="fitted on someone-else@abc:float32's activations"):
        PR.read(p, m, [("q", "a")], progress=False, cache=False)


def test_calibration_probes_are_fitted_on_tune_and_become_a_method_and_a_coherence_measure(tmp_path, monkeypatch):
    from traitlab.experiments import judge_calibration as jc

    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path))
    m = load_model("tiny-qwen2")
    P = jc.Params(n_boot=50, anchored=False, gold_traits=["optimism", "refusal"], max_gold_questions=2)
    probes = PR.fit_gold(m, P.gold_traits, progress=False)
    assert set(probes) == {"optimism", "refusal", "coherence"}
    tune = {t: JP.load_gold(t, "tune") for t in P.gold_traits}
    assert probes["optimism"].n_train == len(tune["optimism"])
    assert probes["coherence"].n_train == sum(len(v) for v in tune.values())
    gold = jc.method_gold(P)
    g = jc.probe_columns(probes, m, gold, progress=False)
    assert g.trait_probe.notna().all() and g.coherence_probe.notna().all()
    opt = (g.trait == "optimism").to_numpy()
    feats = PR.answer_features(m, list(zip(gold.question[opt], gold.response[opt], strict=True)),
                               [probes["optimism"].layer], progress=False)
    np.testing.assert_allclose(g.trait_probe[opt], probes["optimism"].predict(feats[probes["optimism"].layer]))
    # read as one more scored method and one more coherence measure on the gold scale
    pairs = JP.gold_pairs(g)
    pairs["win_probe"] = JP.score_wins(g.trait_probe.to_numpy(float), pairs)
    sens = jc.method_sensitivity(g, pairs, P)
    assert ("optimism", "probe") in sens.index and np.isfinite(sens.loc[("refusal", "probe"), "pearson_r"])
    coh = jc.coherence_sensitivity(g, P)
    assert "probe" in coh.index and np.isfinite(coh.loc["probe", "word_salad_max"])
    assert any(q.name == "methods.refusal.probe.r" for q in jc.method_quantities(sens, coh, P))


def test_probe_model_judge_needs_a_local_judge():
    from traitlab.experiments import judge_calibration as jc
    from traitlab.params import ParamError

    with pytest.raises(ParamError, match="probe_model: judge needs judge_backend: local"):
        jc.Params(judge_backend="openai", judge_model="gpt-4.1-mini")
    assert jc.Params(judge_backend="openai", judge_model="gpt-4.1-mini", probe_model=None).probe_model is None


class _Blank:
    """A judge that gives no reading at all: only the probe reads the control."""

    config = JudgeConfig()  # ours: no gold folder, no opposites of its own

    def _none(self, items):
        from traitlab.judge import Score
        return [Score(value=None, mass=None, mode="logprob", text="") for _ in items]

    def score_many(self, metric, items, **k):
        return self._none(items)

    def yesno_many(self, metric, items, **k):
        return self._none(items)

    def opposite_many(self, items, **k):
        return self._none(items)

    def prefer_many(self, items, **k):
        from traitlab.judge import Preference
        return [Preference(None, None, None, 0.0) for _ in items]


def test_the_probe_is_read_on_the_control_answers_when_given():
    from traitlab.experiments import judge_calibration as jc

    m = load_model("tiny-qwen2")
    x, y, g = _signal(d=m.d_model)
    p = PR.fit({0: x[2]}, y, g, target="optimism", reader=PR.reader_identity(m))
    P = jc.Params(n_boot=50, anchored=False, control_questions=2, control_ratio=0.5)
    answers = pd.DataFrame({"question": ["a", "b"] * 3, "ratio": [-0.5, -0.5, 0.0, 0.0, 0.5, 0.5],
                            "answer": ["no.", "bad.", "maybe.", "fine.", "yes!", "great!"]})
    read = {r: PR.read(p, m, list(zip(answers.question[answers.ratio == r], answers.answer[answers.ratio == r],
                                      strict=True)), progress=False, cache=False) for r in (-0.5, 0.0, 0.5)}
    got = jc.control_wins(_Blank(), answers, P, anchored=False, progress=False, probe=(p, m))
    for contrast, hi, lo in (("more", 0.5, 0.0), ("less", 0.0, -0.5)):
        rows = got[(got.contrast == contrast) & (got.method == "probe")]
        np.testing.assert_allclose(rows.difference, read[hi] - read[lo], rtol=1e-6)
        assert rows.win.tolist() == ((np.sign(read[hi] - read[lo]) + 1) / 2).tolist()
    assert got[got.method != "probe"].win.isna().all()  # the blank judge read nothing


def test_steered_answers_are_read_by_each_rows_trait_probe_and_the_coherence_probe():
    from traitlab.steered_eval import paired_effects, probe_answers

    m = load_model("tiny-qwen2")
    ident = PR.reader_identity(m)
    x, y, g = _signal(d=m.d_model)
    probes = {name: PR.fit({0: x[la]}, y, g, target=name, reader=ident)
              for name, la in (("optimism", 1), ("refusal", 2), ("coherence", 3))}
    answers = pd.DataFrame({"trait": ["optimism"] * 3 + ["refusal"] * 3, "question": ["a", "b", "c"] * 2,
                            "ratio": [0.0, 0.0, 0.5] * 2,
                            "answer": ["Sure thing.", "", "Great news!", "I can't.", "Here it is.", "No."]})
    got = probe_answers(probes, m, answers, ["trait", "coherence"], progress=False)
    for t in ("optimism", "refusal"):
        rows = answers[answers.trait == t]
        items = list(zip(rows.question, rows.answer, strict=True))
        np.testing.assert_allclose(got.trait[rows.index], PR.read(probes[t], m, items, progress=False), equal_nan=True)
    np.testing.assert_allclose(got.coherence, PR.read(probes["coherence"], m, list(zip(
        answers.question, answers.answer, strict=True)), progress=False), equal_nan=True)
    assert np.isnan(got.trait[1]) and got.trait.drop(index=1).notna().all()  # the empty answer has no reading
    refusal = answers[answers.trait == "refusal"].drop(columns="trait")
    fixed = probe_answers(probes, m, refusal, {"trait": "score"}, trait="refusal", progress=False)
    assert list(fixed.columns) == ["question", "ratio", "answer", "score"]
    np.testing.assert_allclose(fixed.score, got.trait[refusal.index])
    assert paired_effects(fixed, by=["ratio"], baseline=fixed.ratio == 0.0).shape[0] == 1
    with pytest.raises(KeyError, match="no probe for 'uncertainty' .*have: optimism, refusal, coherence"):
        probe_answers(probes, m, answers.assign(trait="uncertainty"), progress=False)


def test_judge_answers_read_by_probe_fit_the_gold_through_the_local_judges_own_model(tmp_path, monkeypatch):
    from traitlab.judge import Judge, JudgeConfig, LocalBackend
    from traitlab.steered_eval import judge_answers, judge_probes, probe_answers

    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path))
    m = load_model("tiny-qwen2")
    judge = Judge(JudgeConfig(backend="local", model="tiny-qwen2"), backend=LocalBackend(m), cache=None)
    answers = pd.DataFrame({"trait": ["optimism", "optimism", "refusal", "refusal"], "question": ["a", "b"] * 2,
                            "answer": ["Great news!", "", "I can't.", "Here it is."]})
    got = judge_answers(judge, answers, ["trait", "coherence"], reading="probe")
    probes = PR.fit_gold(m, ["optimism", "refusal"], progress=False)  # on the tune part, as judge_probes
    want = probe_answers(probes, m, answers, ["trait", "coherence"])
    pd.testing.assert_frame_equal(got, want)
    assert np.isnan(got.trait[1]) and got.trait.drop(index=1).notna().all()
    one = judge_answers(judge, answers[answers.trait == "refusal"], {"trait": "score"}, trait="refusal",
                        reading="probe")
    np.testing.assert_allclose(one.score, want.trait[2:], rtol=1e-5)  # another batch: float rounding
    assert set(judge_probes(judge, ["refusal"], coherence=False)) == {"refusal"}


def test_reading_by_probe_needs_a_local_judge_and_a_gold_set():
    from traitlab.data import DataError
    from traitlab.judge import Judge, JudgeConfig, LocalBackend
    from traitlab.steered_eval import judge_answers

    answers = pd.DataFrame({"question": ["a"], "answer": ["fine"]})
    http = Judge(JudgeConfig(backend="openai", model="gpt-4.1-mini", base_url="http://localhost:1"), cache=None)
    with pytest.raises(ValueError, match="shows none: use a local judge"):
        judge_answers(http, answers, trait="optimism", reading="probe")
    local = Judge(JudgeConfig(backend="local", model="tiny-qwen2"), backend=LocalBackend(load_model("tiny-qwen2")),
                  cache=None)
    with pytest.raises(DataError, match=r"no gold set for \['candour'\]: write gold_candour\.jsonl in a folder .* gold_dir"):
        judge_answers(local, answers, trait="candour", reading="probe")


def test_a_new_traits_probe_fits_on_the_gold_set_in_the_judges_gold_dir(tmp_path, monkeypatch):
    """A trait of one's own, read by probe: its gold set comes from the judge config's gold_dir,
    the others from ours. Relabelling our optimism set as 'candour' must give the optimism probe."""
    from traitlab.judge import Judge, JudgeConfig, LocalBackend
    from traitlab.steered_eval import judge_probes

    monkeypatch.setenv("TRAITLAB_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "gold"
    mine.mkdir()
    rows = [json.loads(x) for x in JP.gold_path("optimism").read_text().splitlines()]
    (mine / "gold_candour.jsonl").write_text("".join(
        json.dumps({("candour" if k == "optimism" else k): v for k, v in r.items()}) + "\n" for r in rows))
    m = load_model("tiny-qwen2")
    judge = Judge(JudgeConfig(backend="local", model="tiny-qwen2", gold_dir=str(mine),
                              descriptions=(("candour", "saying plainly what one thinks."),)),
                  backend=LocalBackend(m), cache=None)
    got = judge_probes(judge, ["candour", "refusal"], coherence=False)
    ours = PR.fit_gold(m, ["optimism", "refusal"], coherence=False, progress=False)
    assert got["candour"].target == "candour" and got["candour"].layer == ours["optimism"].layer
    np.testing.assert_allclose(got["candour"].weights, ours["optimism"].weights, rtol=1e-6)
    np.testing.assert_allclose(got["refusal"].weights, ours["refusal"].weights, rtol=1e-6)


def test_a_gold_set_a_probe_cannot_fit_on_fails_before_model_work(tmp_path):
    from traitlab.params import ParamError
    from traitlab.steered_eval import check_reading

    rows = [json.loads(x) for x in JP.gold_path("optimism").read_text().splitlines()]
    tune = [r for r in rows if r["split"] == "tune"]
    few = [r for r in tune if r["question"] in list(dict.fromkeys(x["question"] for x in tune))[:3]]
    (tmp_path / "gold_optimism.jsonl").write_text("".join(json.dumps(r) + "\n" for r in few))
    with pytest.raises(ParamError, match=r"reading 'probe': .*gold_optimism\.jsonl: a probe needs answers to at "
                                         r"least 5 questions in its tune split to cross-validate; it has 3"):
        check_reading("probe", "local", ["optimism"], gold_dir=str(tmp_path))
    (tmp_path / "gold_optimism.jsonl").write_text("".join(json.dumps({**r, "optimism": 50}) + "\n" for r in tune))
    with pytest.raises(ParamError, match="the optimism labels of the tune split do not vary"):
        check_reading("probe", "local", ["optimism"], gold_dir=str(tmp_path))
    check_reading("probe", "local", ["optimism"])  # ours fits
    flat = [{**r, "coherence": 90} for r in tune]
    (tmp_path / "gold_optimism.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    check_reading("probe", "local", ["optimism"], gold_dir=str(tmp_path))  # the trait probe needs no coherence
    with pytest.raises(PR.ProbeError, match="coherence labels .* do not vary"):
        PR.check_gold_fit(["optimism"], folder=tmp_path)
