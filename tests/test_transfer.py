"""Transfer-study tables and verdicts on a synthetic scored frame (exact), and parameter checks."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from traitlab import judge_power, records, textstats
from traitlab.experiments import sft_dpo_transfer as tr
from traitlab.params import ParamError, validate
from traitlab.steered_eval import Condition

N_Q = 8
EFFECT = {"base": 10.0, "sft": 12.0, "dpo": 4.0, "control": 15.0}


def _P(**kw) -> tr.Params:
    base = dict(layers=[3, 6], ratios=[0.1, 0.4, 1.6], multi_layers=[4, 5], multi_ratios=[0.1],
                random_seeds=[1, 2], random_layers=[6], random_ratios=[0.4], control_layers=[10],
                n_questions=N_Q)
    return tr.Params(**{**base, **kw})


def _scored(P: tr.Params, effect: dict[str, float] = EFFECT, wiggle: float = 1.0) -> pd.DataFrame:
    """Trait = 50 + q + the condition's effect ± ``wiggle`` by question parity; answers at ratio
    1.6 are incoherent except question 0; random directions move nothing."""
    rows = []
    for model in effect:
        control = model == tr.CONTROL
        for c in tr.conditions(P, control=control):
            for q in range(N_Q):
                sign = 1 if q % 2 else -1
                push = {"baseline": 0.0, "random": 0.0, "multi": 1.5 * effect[model]}[c["kind"]] \
                    if c["kind"] != "single" else effect[model] * (1 + c["layer"] / 10) * min(c["ratio"], 0.4) / 0.4
                rows.append({"model": model, **c, "coef": c["ratio"] * 10, "question_id": q,
                             "trait": 50.0 + q + push + (sign * wiggle if c["kind"] != "baseline" else 0.0),
                             "coherent": not (c["ratio"] >= 1.6 and q > 0)})
    return pd.DataFrame(rows)


def test_conditions_cover_the_grid():
    P = _P()
    c = tr.conditions(P)
    assert c[0]["kind"] == "baseline" and len(c) == 1 + 2 * 3 + 2 * 1 * 1 + 1
    assert [(x["seed"], x["layer"], x["ratio"]) for x in c if x["kind"] == "random"] == [(1, 6, 0.4), (2, 6, 0.4)]
    ctl = tr.conditions(P, control=True)
    assert [x["kind"] for x in ctl] == ["baseline"] + ["single"] * 3 and {x["layer"] for x in ctl[1:]} == {10}


def test_summary_deltas_coherence_and_broken():
    P = _P()
    summ = tr.summary(_scored(P), P)
    row = summ[(summ.model == "sft") & (summ.kind == "single") & (summ.layer == 6) & (summ.ratio == 0.4)].iloc[0]
    assert row.delta == pytest.approx(12.0 * 1.6) and row.n == N_Q
    assert row.ci_lo < row.delta < row.ci_hi and row.coherent == 1.0 and not row.broken
    hard = summ[(summ.kind == "single") & (summ.ratio == 1.6)]
    assert (hard.coherent == 1 / N_Q).all() and hard.broken.all()
    lo, hi = hard.iloc[0][["coherent_lo", "coherent_hi"]]
    assert lo < 1 / N_Q < hi  # a Wilson interval over questions
    base = summ[summ.kind == "baseline"]
    assert (base.delta == 0).all() and list(base.model) == list(EFFECT)
    rand = summ[summ.kind == "random"]
    assert len(rand) == 2 * 3 and set(rand.seed) == {1, 2}  # per seed, chain models only
    assert rand.delta.abs().max() < 1e-9  # ± wiggle cancels over the 8 questions


def test_best_skips_broken_and_learned_vs_random():
    P = _P()
    scored = _scored(P)
    summ = tr.summary(scored, P)
    best = tr.best_per_layer(summ)
    # 1.6 has the same push as 0.4 but is broken: the best unbroken ratio is 0.4 everywhere
    assert set(best.ratio) == {0.4}
    assert best.set_index(["model", "layer"]).delta[("dpo", 3)] == pytest.approx(4.0 * 1.3)
    lvr = tr.learned_vs_random(scored, P)
    assert list(lvr.model) == ["base", "sft", "dpo"]  # no random control in the positive control
    assert set(lvr.layer) == {6}
    r = lvr.set_index("model").loc["sft"]
    assert r.difference == pytest.approx(12.0 * 1.6) and r.random == pytest.approx(0.0) and r.ci_lo > 0
    assert (r.learned_coherent, r.random_coherent) == (1.0, 1.0)
    # at 1.6 both sides break (coherent only on question 0): the table says so beside the difference
    P16 = dataclasses.replace(P, random_ratios=[1.6])
    hard = tr.learned_vs_random(_scored(P16), P16).set_index("model")
    assert (hard.learned_coherent == 1 / N_Q).all() and (hard.random_coherent == 1 / N_Q).all()
    assert lvr.drop(columns=["learned_coherent", "random_coherent"]).equals(
        tr.learned_vs_random(scored.drop(columns="coherent"), P).drop(columns=["learned_coherent", "random_coherent"]))
    # random_layers null: the control at every steered layer, one row per (model, layer, ratio),
    # each learned cell against the random directions at its own layer
    Pall = dataclasses.replace(P, random_layers=None)
    every = tr.learned_vs_random(_scored(Pall), Pall).set_index(["model", "layer", "ratio"])
    assert len(every) == 3 * 2 * 1
    assert every.difference[("sft", 3, 0.4)] == pytest.approx(12.0 * 1.3)
    assert every.difference[("sft", 6, 0.4)] == pytest.approx(12.0 * 1.6)
    multi = tr.multi_vs_single(scored, summ).set_index("model")
    # multi 1.5 × 12 = 18 vs best single L6 r=0.4 1.6 × 12 = 19.2
    assert multi.loc["sft", "difference"] == pytest.approx(18.0 - 19.2)
    assert multi.loc["sft", "single_at"] == "L6 r=0.4"


def test_record_verdicts_follow_the_controls():
    P = _P()
    scored = _scored(P)
    summ = tr.summary(scored, P)
    best, lvr = tr.best_per_layer(summ), tr.learned_vs_random(scored, P)
    multi = tr.multi_vs_single(scored, summ)
    floors = textstats.Floors(0.5, 3.0, 0.9, 100)
    rec = tr.record(P, scored, summ, best, multi, lvr, {"slope": 0.5, "lo": 0.4, "hi": 0.6, "r": 0.9, "n": 72},
                    floors)
    assert (rec["n_questions"].value, rec["n_models"].value) == (N_Q, 4)
    assert rec["sft_best_delta"].value == pytest.approx(19.2)
    # the best cell's interval is Bonferroni-adjusted over the 6 single conditions it was picked from
    lo, hi = rec["sft_best_delta"].ci
    half = (hi - lo) / 2
    t95 = records.score_mean("x", [19.2 - 1, 19.2 + 1] * 4, k=3).ci
    assert half > (t95[1] - t95[0]) / 2
    assert rec["sft_minus_dpo_early"].value == pytest.approx((12.0 - 4.0) * 1.3 * (0.25 + 1) / 2)
    assert rec["dpo_coherent_max_push"].value == pytest.approx(1 / N_Q)
    assert rec["reading_slope"].value == 0.5 and rec["floors_balanced_accuracy"].value == 0.9
    assert rec["sft_learned_minus_random"].value == pytest.approx(12.0 * 1.6)  # the one random cell, L6 r=0.4
    v = {c.id: c.verdict for c in rec.claims}
    assert v == {"transfer_works": "holds", "dpo_resists_early": "holds", "optimal_layer_preserved": "holds",
                 "multi_beats_single": "inconclusive", "dpo_cliff": "holds"}
    # multi-layer is 0.4 points worse on every question, but the seed's +1.5 is 0.75 on our scale:
    # below what 8 questions can detect, so not "not held"
    assert "0.75" in next(c for c in rec.claims if c.id == "multi_beats_single").reason
    assert records.compare(rec, rec) == []


def test_learned_minus_random_pools_every_cell_of_the_random_grid():
    """With the control at every steered layer, the record's learned − random is the per-question
    mean over all of its (layer, ratio) cells, not the best one."""
    P = _P(random_layers=None, random_ratios=[0.1, 0.4])
    scored = _scored(P)
    summ = tr.summary(scored, P)
    lvr = tr.learned_vs_random(scored, P)
    rec = tr.record(P, scored, summ, tr.best_per_layer(summ), tr.multi_vs_single(scored, summ), lvr, None)
    cells = [12.0 * (1 + x / 10) * r / 0.4 for x in (3, 6) for r in (0.1, 0.4)]
    assert rec["sft_learned_minus_random"].value == pytest.approx(np.mean(cells))
    assert rec["sft_learned_minus_random"].value == pytest.approx(lvr[lvr.model == "sft"].difference.mean())


def test_rotated_random_control_gives_each_question_one_seed_per_cell():
    """Rotated (the default): in each random cell question i is answered under one seed,
    ``random_seeds[(i + j) mod n]`` at the j-th random layer; the tables then read that one
    seed's answer per question, and the summary keeps one row per seed over its questions."""
    P = _P(random_layers=None)  # random at L3 and L6, ratio 0.4, seeds 1 and 2
    conds = [Condition((), **c) for c in tr.conditions(P)]
    rot = tr._rotated(P, conds, N_Q)
    assert [c.labels for c in rot] == [c.labels for c in conds]  # same conditions, same order
    assert all(c.only is None for c in rot if dict(c.labels)["kind"] != "random")
    only = {(lab["layer"], lab["seed"]): c.only for c in rot if (lab := dict(c.labels))["kind"] == "random"}
    assert only[(3, 1)] == (0, 2, 4, 6) and only[(3, 2)] == (1, 3, 5, 7)
    assert only[(6, 1)] == (1, 3, 5, 7) and only[(6, 2)] == (0, 2, 4, 6)  # the next layer pairs other seeds
    full = _scored(P)
    full.loc[full.kind == "random", "trait"] += 2.0 * full.seed  # seed s pushes 2s points
    answered = pd.Series(False, index=full.index)  # the random rows the rotation generates
    for (x, s), q in only.items():
        answered |= (full.kind == "random") & (full.layer == x) & (full.seed == s) & full.question_id.isin(q)
    scored = full[(full.kind != "random") | answered]
    assert (scored.kind == "random").sum() == 3 * 2 * N_Q  # 3 chain models × 2 cells × one answer per question
    lvr = tr.learned_vs_random(scored, P).set_index(["model", "layer"])
    # L3: even questions under seed 1 (+2, wiggle −1), odd under seed 2 (+4, wiggle +1): random mean 3
    assert lvr.random[("sft", 3)] == pytest.approx(3.0) and lvr.n[("sft", 3)] == N_Q
    assert lvr.difference[("sft", 3)] == pytest.approx(12.0 * 1.3 - 3.0)
    assert lvr.random[("sft", 6)] == pytest.approx(3.0)  # the other pairing: seed 1 odd (+2+1), seed 2 even (+4−1)
    summ = tr.summary(scored, P)
    r = summ[(summ.model == "sft") & (summ.kind == "random")]
    assert len(r) == 4 and (r.n == N_Q // 2).all()
    assert tr.summary(full, dataclasses.replace(P, random_design="crossed"))[
        lambda d: d.kind == "random"].n.eq(N_Q).all()


def test_a_shared_best_layer_must_survive_resampling_the_questions():
    """SFT's two layers tie on average and split the questions between them: its best layer is a
    coin flip, so agreeing with DPO's (robustly L6) is inconclusive; a DPO model whose best layer
    is robustly another one makes the claim not held."""
    P = _P(n_boot=400)

    def verdict(scored):
        summ = tr.summary(scored, P)
        rec = tr.record(P, scored, summ, tr.best_per_layer(summ), tr.multi_vs_single(scored, summ),
                        tr.learned_vs_random(scored, P), None)
        return rec, next(c for c in rec.claims if c.id == "optimal_layer_preserved")

    rec, c = verdict(_scored(P))
    assert c.verdict == "holds" and rec["best_layer_agreement"].value == 1.0
    scored = _scored(P)
    q, at3 = scored.question_id.to_numpy(), scored.layer.to_numpy() == 3
    sft = ((scored.model == "sft") & (scored.kind == "single") & (scored.ratio == 0.4)).to_numpy()
    scored.loc[sft, "trait"] = (70.0 + q + np.where((q % 2 == 0) == at3, 5.0, -5.0))[sft]
    rec, c = verdict(scored)
    share = rec["best_layer_agreement"].value
    assert c.verdict == "inconclusive" and 0.3 < share < 0.7 and f"agree in {share:.0%}" in c.reason
    scored = _scored(P)
    dpo3 = ((scored.model == "dpo") & (scored.kind == "single") & (scored.layer == 3) & (scored.ratio == 0.4))
    scored.loc[dpo3, "trait"] += 10.0
    rec, c = verdict(scored)
    assert c.verdict == "not held" and rec["best_layer_agreement"].value == 0.0 and "differ in 100%" in c.reason


def test_a_shared_best_layer_must_survive_where_the_floor_falls():
    """SFT's best layer (L6) answers at distinct-2 0.8, coherent under the fitted floor (0.75) but
    not under the 1.0 floor that every gold resample missing the borderline coherent question
    fits: there SFT's best unbroken layer is L3, not DPO's L6. As measured the layers agree; with
    the floors refitted per replicate the agreement is inconclusive."""
    P = _P(n_boot=400)
    scored = _scored(P)
    sft6 = ((scored.model == "sft") & (scored.kind == "single") & (scored.layer == 6)).to_numpy()
    scored["distinct2"] = np.where(scored.coherent, np.where(sft6, 0.8, 1.0), 0.2)
    scored["log_ppl"] = 1.0
    gold = pd.DataFrame({"trait": "t", "question": list("aabbccdd"), "coherence": [90, 10] * 4, "log_ppl": 1.0,
                         "distinct2": [1.0, 0.3, 1.0, 0.3, 0.75, 0.3, 1.0, 0.85]})
    refits = judge_power.FloorRefits(gold)
    fitted = textstats.fit_floors(gold[["distinct2", "log_ppl"]], gold.coherence.to_numpy())
    assert fitted.distinct2_min == 0.75 and fitted.coherent(scored).equals(scored.coherent)
    assert refits.floors(np.array([0, 1, 3, 3])).distinct2_min == 1.0
    summ = tr.summary(scored, P)

    def claim(refits):
        rec = tr.record(P, scored, summ, tr.best_per_layer(summ), tr.multi_vs_single(scored, summ),
                        tr.learned_vs_random(scored, P), None, refits=refits)
        return rec, next(c for c in rec.claims if c.id == "optimal_layer_preserved")

    rec, c = claim(None)
    assert c.verdict == "holds" and rec["best_layer_agreement"].value == 1.0 and "of question resamples" in c.reason
    rec, c = claim(refits)
    agreement = tr.best_layer_agreement(scored, P, refits)
    assert c.verdict == "inconclusive" and rec["best_layer_agreement"].value == agreement.agree
    assert 0.3 < agreement.agree < 0.9 and agreement.agree + agreement.differ == 1.0 and agreement.undecided == 0.0
    assert "no unbroken condition" not in c.reason  # every replicate found a best layer in both models
    assert "question and gold-set resamples" in c.reason and c.ours == "SFT L6, DPO L6"


def _borderline(scored: pd.DataFrame, rows: np.ndarray) -> tuple[pd.DataFrame, judge_power.FloorRefits]:
    """``rows``' coherent answers at distinct-2 0.8: coherent under the fitted floor (0.75), not
    under the 1.0 floor that every gold resample missing the borderline coherent question fits
    (about a third of them)."""
    scored = scored.assign(distinct2=np.where(scored.coherent, np.where(rows, 0.8, 1.0), 0.2), log_ppl=1.0)
    gold = pd.DataFrame({"trait": "t", "question": list("aabbccdd"), "coherence": [90, 10] * 4, "log_ppl": 1.0,
                         "distinct2": [1.0, 0.3, 1.0, 0.3, 0.75, 0.3, 1.0, 0.85]})
    return scored, judge_power.FloorRefits(gold)


def _record(P: tr.Params, scored: pd.DataFrame, refits=None, slope: float | None = None) -> records.ResultRecord:
    """The record of ``scored``; with ``slope``, the seed's effects put on a judge scale of that slope."""
    summ = tr.summary(scored, P)
    scale = None if slope is None else {"slope": slope, "lo": slope, "hi": slope, "r": 0.9, "n": 72}
    return tr.record(P, scored, summ, tr.best_per_layer(summ), tr.multi_vs_single(scored, summ),
                     tr.learned_vs_random(scored, P), scale, refits=refits)


def test_a_best_effect_must_survive_where_the_floor_falls():
    """SFT steers only at L6, whose answers clear the fitted floor but not the refitted ones that
    miss the borderline gold question; there its best unbroken condition is the flat L3. As
    measured SFT steers and transfer holds; with the floors' error the best effect's interval
    reaches below 0 and transfer no longer holds. The effect itself is unchanged."""
    P = _P(n_boot=400)
    scored = _scored(P)
    sft = ((scored.model == "sft") & (scored.kind == "single")).to_numpy()
    sft3 = sft & (scored.layer == 3).to_numpy()
    q = scored.question_id.to_numpy()
    scored.loc[sft3, "trait"] = (50.0 + q + np.where(q % 2, 1.0, -1.0))[sft3]  # L3 moves nothing
    scored, refits = _borderline(scored, sft & (scored.layer == 6).to_numpy())
    measured, widened = _record(P, scored), _record(P, scored, refits)
    assert measured["sft_best_delta"].value == widened["sft_best_delta"].value == pytest.approx(19.2)
    assert measured["sft_best_delta"].ci[0] > 0 > widened["sft_best_delta"].ci[0]
    assert widened["sft_best_delta"].ci[1] == measured["sft_best_delta"].ci[1]
    assert widened["dpo_best_delta"].ci == measured["dpo_best_delta"].ci  # DPO's answers clear every floor
    verdict = {r: next(c for c in x.claims if c.id == "transfer_works").verdict
               for r, x in (("measured", measured), ("widened", widened))}
    assert verdict["measured"] == "holds" and verdict["widened"] != "holds"


def test_a_best_effect_that_some_floors_leave_unmeasured_is_not_a_negative():
    """Every SFT answer is borderline: under about a third of the refitted floors SFT has no
    unbroken condition, so its best effect has no interval and transfer cannot hold; that is
    an unmeasured effect, not an absent one, so the verdict is inconclusive and says why."""
    P = _P(n_boot=400)
    scored = _scored(P)
    scored, refits = _borderline(scored, ((scored.model == "sft") & (scored.kind == "single")).to_numpy())
    rec = _record(P, scored, refits)
    c = next(c for c in rec.claims if c.id == "transfer_works")
    assert rec["sft_best_delta"].ci is None and rec["sft_best_delta"].value == pytest.approx(19.2)
    assert c.verdict == "inconclusive" and "sft: " in c.reason and "leave no unbroken condition" in c.reason


def test_the_early_gap_needs_a_ratio_unbroken_wherever_the_floor_falls():
    """SFT's early-layer answers are borderline: as measured DPO resists early (holds); under a
    third of the refitted floors no ratio at L3 leaves SFT unbroken, so the gap has no interval
    there and the claim is inconclusive, saying why."""
    P = _P(n_boot=400)
    scored = _scored(P)
    sft3 = ((scored.model == "sft") & (scored.kind == "single") & (scored.layer == 3)).to_numpy()
    scored, refits = _borderline(scored, sft3)
    rec = _record(P, scored, refits)
    claim = {r: next(c for c in x.claims if c.id == "dpo_resists_early")
             for r, x in (("measured", _record(P, scored)), ("widened", rec))}
    assert claim["measured"].verdict == "holds"
    assert claim["widened"].verdict == "inconclusive" and "no ratio at L3" in claim["widened"].reason
    lost = float(claim["widened"].reason.split("%")[0]) / 100
    assert 0.2 < lost < 0.5 and rec["sft_minus_dpo_early"].ci is None
    assert rec["sft_minus_dpo_early"].value == pytest.approx((12.0 - 4.0) * 1.3 * (0.25 + 1) / 2)


def test_best_layer_agreement_counts_replicates_without_a_best_layer():
    """A replicate in which a model has no unbroken condition decides nothing: it counts neither
    as agreement nor as difference, and the reason says how many there were."""
    P = _P(n_boot=400)
    scored = _scored(P)
    sft = ((scored.model == "sft") & (scored.kind == "single")).to_numpy()
    scored.loc[sft, "coherent"] = (scored.question_id < N_Q // 2)[sft]  # half coherent: broken in ~half the draws
    a = tr.best_layer_agreement(scored, P)
    assert a.n == 400 and 0.2 < a.undecided < 0.8 and a.differ == 0.0 and a.agree == pytest.approx(1 - a.undecided)


def test_transfer_not_held_needs_the_positive_control():
    P = _P()

    def verdict(effect, claim="transfer_works"):
        return next(c for c in _record(P, _scored(P, effect)).claims if c.id == claim)

    flat = {"base": 10.0, "sft": 0.0, "dpo": 0.0, "control": 15.0}
    c = verdict(flat)
    assert c.verdict == "not held" and "qwen2.5-coder-0.5b-instruct" in c.reason
    # no SFT − DPO gap, with power, but SFT itself does not move at the early layer: nothing to resist
    c = verdict(flat, "dpo_resists_early")
    assert c.verdict == "inconclusive" and "no push for DPO to resist" in c.reason
    blind = {"base": 0.0, "sft": 0.0, "dpo": 0.0, "control": 0.0}
    c = verdict(blind)
    assert c.verdict == "inconclusive" and "positive control" in c.reason


def test_seed_effects_are_put_on_our_judge_scale():
    P = _P()
    # SFT and DPO move alike at the early layer (no gap), so the verdict rests on power
    scored = _scored(P, {"base": 10.0, "sft": 6.0, "dpo": 6.0, "control": 15.0}, wiggle=3.0)

    def gap(slope):
        return next(c for c in _record(P, scored, slope=slope).claims if c.id == "dpo_resists_early")

    assert gap(1.0).verdict == "not held"          # the seed's 16.7 points > our MDE
    sharp, flat = gap(1.0), gap(0.01)
    assert flat.verdict == "inconclusive" and "0.167" in flat.reason  # 16.7 × 0.01 on our scale
    assert "16.7 points" in sharp.seed


def test_golden_check_catches_a_moved_baseline():
    P = _P()
    scored = _scored(P)

    def rec(s):
        summ = tr.summary(s, P)
        return tr.record(P, s, summ, tr.best_per_layer(summ), tr.multi_vs_single(s, summ),
                         tr.learned_vs_random(s, P), None)

    moved = scored.assign(trait=np.where((scored.model == "dpo") & (scored.kind == "baseline"),
                                         scored.trait + 40, scored.trait))
    problems = records.compare(rec(scored), rec(moved))
    assert any(p.startswith("sft_dpo_transfer.dpo_baseline_trait:") for p in problems)
    assert not any(p.startswith("sft_dpo_transfer.sft_baseline_trait:") for p in problems)


def test_random_control_is_unit_seeded_and_the_random_method():
    from traitlab.directions import fit_direction, random_unit

    a, b = random_unit(64, 1), random_unit(64, 1)
    assert torch.equal(a, b) and float(a.norm()) == pytest.approx(1.0)
    assert not torch.equal(a, random_unit(64, 2))
    x = torch.zeros(2, 64)
    assert torch.allclose(fit_direction("random", x, x, seed=1, log=False).vector, a)


@pytest.mark.parametrize("kw, msg", [
    ({"models": {"base": "a", "sft": "b"}}, "exactly base, sft and dpo"),
    ({"ratios": [-1.0]}, "ratios must be > 0"),
    ({"ratios": [0.4, 0.1]}, "increase"),
    ({"site": "v"}, "site must be"),
    ({"vector_method": "svm"}, "vector_method"),
    ({"vector_method": "random"}, "cannot be used"),
    ({"coherent_share": 1.5}, "coherent_share"),
    ({"random_ratios": [2.0]}, "must be a subset of ratios"),
    ({"random_layers": [99]}, "must be a subset of layers"),
    ({"random_seeds": [1, 1]}, "repeat"),
    ({"random_seeds": [1, 2, 3, 4, 5], "n_questions": 4}, "rotated spreads 5 random_seeds over 4 questions"),
    ({"random_design": "paired"}, "random_design"),
    ({"control_layers": []}, "control_layers is empty"),
    ({"n_questions": 2}, "n_questions"),
    ({"gold_traits": []}, "gold_traits"),
    ({"judge_dtype": "int8"}, "judge_dtype"),
    ({"reading": "guess"}, "reading"),
    ({"reading": "probe", "judge_backend": "openai"}, "reading 'probe' reads the judge model's activations"),
])
def test_transfer_params_fail_early(kw, msg):
    with pytest.raises(ParamError, match=msg):
        validate(tr.Params, kw)


def test_layers_checked_against_the_base_and_control_models():
    with pytest.raises(ParamError, match="out of range"):
        tr.Params(layers=[40], chain_profile="default").check()  # gemma-3-270m has 18 layers
    with pytest.raises(ParamError, match="control_layers"):
        tr.Params(control_layers=[30]).check()  # the 0.5B control has 24
    tr.Params(chain_profile="ci", layers=[10], multi_layers=[9], control_model="smollm2-135m-instruct",
              control_layers=[10], reference_model="smollm2-135m-instruct").check()


def test_a_run_without_random_or_multi_layer_conditions():
    P = _P(random_seeds=[], multi_layers=[], multi_ratios=[])
    scored = _scored(P)
    assert set(scored.kind) == {"baseline", "single"}
    summ = tr.summary(scored, P)
    lvr, multi = tr.learned_vs_random(scored, P), tr.multi_vs_single(scored, summ)
    assert lvr.empty and (multi.multi_at == "none unbroken").all()
    rec = tr.record(P, scored, summ, tr.best_per_layer(summ), multi, lvr, None)
    assert not any(q.name.endswith("learned_minus_random") for q in rec.quantities)
    assert {c.id: c.verdict for c in rec.claims}["multi_beats_single"] == "not comparable"


def test_a_model_not_seen_is_not_held_only_when_its_interval_excludes_the_seeds_push():
    """The control steers and DPO moves, SFT does not: "not held" names SFT. On a judge scale
    where the seed's push shrinks inside SFT's interval, SFT's effect is neither seen nor ruled
    out, so the claim is inconclusive and says so."""
    P = _P()
    scored = _scored(P, {"base": 10.0, "sft": 0.0, "dpo": 10.0, "control": 15.0}, wiggle=3.0)

    def claim(slope):
        rec = _record(P, scored, slope=slope)
        return rec, next(c for c in rec.claims if c.id == "transfer_works")

    rec, sharp = claim(1.0)  # the seed's push: 21.7 points, far above SFT's interval
    assert sharp.verdict == "not held" and "and the DPO model but not the SFT model (Δ" in sharp.reason
    rec, flat = claim(0.01)  # SFT's seed push (84 − 61.3) × 0.01 = 0.227 points: inside SFT's interval
    lo, hi = rec["sft_best_delta"].ci
    assert lo < 0.227 < hi
    assert flat.verdict == "inconclusive" and "still holds the seed's push (0.2 points for SFT" in flat.reason


def test_the_record_keeps_the_best_per_layer_table_it_was_given():
    P = _P()
    scored = _scored(P, {"base": 10.0, "sft": 0.0, "dpo": 10.0, "control": 15.0})
    rec = _record(P, scored, slope=1.0)  # the verdict path that reads the seed's own best rows
    pd.testing.assert_frame_equal(rec.tables["best_per_layer"], tr.best_per_layer(tr.summary(scored, P)))


def test_a_probe_reading_is_scaled_on_the_gold_answers_it_was_not_fitted_on(monkeypatch):
    """A probe is fitted on the gold set's tune part, so its slope is read on the held-out part only;
    a judge's reading uses every gold answer. The slope is the least-squares fit of reading on label."""
    gold = judge_power.load_gold("optimism")
    label = dict(zip(gold.response, gold.label, strict=True))
    seen = {}

    def judged(judge, items, trait, reading, progress=True):
        seen[reading] = set(items.answer)
        return items.assign(trait=[10 + 0.5 * label[a] for a in items.answer])

    def probed(probe, model, items, progress=True):
        seen["probe"] = {a for _, a in items}
        return np.array([10 + 0.5 * label[a] for _, a in items])

    probe = SimpleNamespace(text=lambda: "optimism probe: resid_post@7")
    monkeypatch.setattr(tr, "judge_answers", judged)
    monkeypatch.setattr(tr.steered_eval, "judge_probes", lambda judge, traits, **kw: {traits[0]: probe})
    monkeypatch.setattr(tr.probe_reader, "read", probed)
    judge = SimpleNamespace(config=SimpleNamespace(gold_dir=None), backend=SimpleNamespace(model=None))
    for reading in ("probe", "absolute"):
        scale = tr.judge_scale(judge, "optimism", reading)
        assert scale["slope"] == pytest.approx(0.5) and scale["r"] == pytest.approx(1.0)
    assert tr.judge_scale(judge, "optimism", "probe")["reader"] == "optimism probe: resid_post@7"
    assert seen["probe"] == set(gold[gold.split == "heldout"].response)
    assert seen["absolute"] == set(gold.response)
