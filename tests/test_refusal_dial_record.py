"""The refusal dial's result record from a synthetic sweep: names, tolerance rules, verdicts, moves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from traitlab import records
from traitlab.data import Prompt
from traitlab.experiments import refusal_dial as rd

ALPHAS = [-2.0, 0.0, 2.0]


def _sweep(n: int, n_random: int, gain: float, noise: float = 0.05) -> pd.DataFrame:
    """Per-prompt logit scores: learned/holdout move by ``gain`` per alpha, random ones barely."""
    rng = np.random.default_rng(0)
    rows = []
    for set_name in ("HARMFUL", "EDGE-holdout"):
        base = rng.normal(0.0, 1.0, n) + (0.5 if set_name == "HARMFUL" else -1.0)
        dirs = {"learned": gain, "holdout": 0.9 * gain,
                **{f"random_{i}": 0.1 * rng.normal() for i in range(n_random)}}
        for name, g in dirs.items():
            for a in ALPHAS:
                for i in range(n):
                    rows.append({"set": set_name, "prompt": i, "layer": 5, "direction": name, "alpha": a,
                                 "score": base[i] + g * a + noise * rng.normal()})
    df = pd.DataFrame(rows)
    df["kind"] = np.where(df.direction.str.startswith("random"), "random", df.direction)
    df["refused"] = df.score > 0.0
    return df


def _sets(n: int) -> rd.Sets:
    ps = [Prompt(f"p{i}", "test") for i in range(n)]
    xs = [Prompt(f"x{i}", "xstest", "c", "safe" if i % 2 else "unsafe") for i in range(10)]
    return rd.Sets(ps, ps + ps, list(range(n)), list(range(n, 2 * n)), ps[:2], xs)


def _xgen() -> pd.DataFrame:
    return pd.DataFrame({"label": ["safe"] * 5 + ["unsafe"] * 5, "alpha": 0.0,
                         "kind": ["full"] + ["compliance"] * 4 + ["full"] * 5})


def test_refusal_dial_record():
    P = rd.Params(alphas=ALPHAS, n_random=8, gen_alphas=[0.0], xstest_gen_alphas=[0.0],
                  xstest_random_alphas=[0.0])
    sw = _sweep(20, P.n_random, gain=1.0)
    sep = rd.separation(rd.curves(sw))
    rec = rd.record(P, None, _sets(20), peak=5, main=5, sw=sw, sep=sep, xgen=_xgen())
    names = set(records.names(rec))
    assert {"n_harmful", "peak_layer", "main_layer", "rate.harmful.alpha_m2", "rate.harmful.alpha_0",
            "rate.harmful.alpha_2", "rate.edge_holdout.alpha_2", "slope.harmful.learned",
            "z.edge_holdout.holdout", "xstest_safe_full_refusal"} <= names
    assert rec["peak_layer"].tolerance == 0 and rec["peak_layer"].tolerance_rule == "exact"
    assert rec["rate.harmful.alpha_2"].tolerance == pytest.approx(1 / 20)
    assert rec["xstest_safe_full_refusal"].value == pytest.approx(0.2)
    s = rec["slope.harmful.learned"]
    assert s.value == pytest.approx(1.0, abs=0.05) and 0 < s.tolerance < 0.1 and "2 standard errors" in s.tolerance_rule
    z = rec["z.edge_holdout.holdout"]
    assert z.tolerance == pytest.approx(2 * np.sqrt(1 / 8 + z.value ** 2 / 14))
    verdicts = {c.id: c.verdict for c in rec.claims}
    assert verdicts == {"steering_works": "holds", "not_any_vector": "holds", "global_dial": "holds",
                        "layers_differ": "not comparable"}  # one steering layer

    # a dial that does nothing: no power shown, so inconclusive, never "not held"
    flat = _sweep(20, P.n_random, gain=0.0, noise=0.0)
    rec0 = rd.record(P, None, _sets(20), 5, 5, flat, rd.separation(rd.curves(flat)), _xgen())
    assert {c.id: c.verdict for c in rec0.claims}["steering_works"] == "inconclusive"

    moved = records.ResultRecord(rec.report, quantities=tuple(
        records.Quantity(q.name, q.value + (1.2 * q.tolerance if q.name == "slope.harmful.learned" else 0),
                         q.unit, q.n, q.ci, q.tolerance, q.tolerance_rule) for q in rec.quantities), claims=rec.claims)
    problems = records.compare(rec, moved)
    assert len(problems) == 1 and problems[0].startswith("refusal_dial.slope.harmful.learned:"), problems


def _two_layer_sweep(gains: dict[int, float], n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, n)
    rows = [{"set": "HARMFUL", "prompt": i, "layer": layer, "direction": "learned", "alpha": a,
             "score": base[i] + g * a + 0.05 * rng.normal()}
            for layer, g in gains.items() for a in ALPHAS for i in range(n)]
    df = pd.DataFrame(rows)
    df["kind"] = "learned"
    df["refused"] = df.score > 0.0
    return df


def test_layer_differences_are_paired_slope_differences_with_intervals():
    P = rd.Params(alphas=ALPHAS, gen_alphas=ALPHAS, xstest_gen_alphas=[0.0], n_boot=300)
    d = rd.layer_differences(_two_layer_sweep({4: 1.0, 8: 0.5}), P)
    [r] = d.itertuples()
    assert r.layers == "L4 − L8" and r.difference == pytest.approx(0.5, abs=0.02)
    assert r.lo < r.difference < r.hi and r.differ
    same = rd.layer_differences(_two_layer_sweep({4: 1.0, 8: 1.0}), P)
    assert not same["differ"].any()
    one = rd.layer_differences(_two_layer_sweep({4: 1.0}), P)     # one layer: an empty table, same columns
    assert one.empty and list(one.columns) == list(d.columns)
    # per-prompt slopes: the mean of per-prompt slopes equals the slope of the mean curve
    sl = rd.prompt_slopes(_two_layer_sweep({4: 1.0, 8: 0.5}), "HARMFUL", "learned")
    assert sl.shape == (30, 2) and sl[8].mean() == pytest.approx(0.5, abs=0.02)


def test_transition_interpolates_the_crossings():
    cur = pd.DataFrame({"set": "HARMFUL", "layer": 3, "kind": "learned", "direction": "learned",
                        "alpha": [-1.0, 0.0, 1.0, 2.0], "rate": [0.0, 0.2, 0.6, 1.0]})
    [r] = rd.transition(cur).itertuples()
    # 10%: halfway between −1 (0.0) and 0 (0.2); 50%: 0 + 0.3/0.4; 90%: 1 + 0.3/0.4
    assert (r.a10, r.a50, r.a90) == pytest.approx((-0.5, 0.75, 1.75))
    assert r.monotone and r.at_min == 0.0 and r.at_max == 1.0
    flat = rd.transition(cur.assign(rate=0.05))
    assert np.isnan(flat.a50.iloc[0]) and flat.monotone.iloc[0]


def test_generated_rates_pool_random_directions_and_feed_the_verdicts():
    P = rd.Params(alphas=ALPHAS, n_random=8, gen_alphas=[-2.0, 0.0, 2.0], xstest_gen_alphas=[0.0],
                  xstest_random_alphas=[0.0], random_gen_alphas=[0.0, 2.0], gen_random=2, n_boot=200)
    rows = []
    for i in range(20):
        for name, grid in {"learned": [-2.0, 0.0, 2.0], "holdout": [-2.0, 0.0, 2.0],
                           "random_0": [0.0, 2.0], "random_1": [0.0, 2.0]}.items():
            for a in grid:
                refused = (a > 0 and not name.startswith("random")) or (a == 0 and i < 10) \
                    or (name.startswith("random") and i < 10)
                rows.append({"set": "HARMFUL", "prompt": i, "direction": name, "alpha": a, "refused": refused,
                             "dir_kind": "random" if name.startswith("random") else name})
    gen = pd.DataFrame(rows)
    gr = rd.gen_rates(gen).set_index(["set", "dir_kind", "alpha"])
    assert gr.loc[("HARMFUL", "learned", 2.0), "rate"] == 1.0 and gr.loc[("HARMFUL", "learned", -2.0), "rate"] == 0.0
    r = gr.loc[("HARMFUL", "random", 2.0)]
    assert r.n == 40 and r.n_dirs == 2 and r.rate == 0.5
    sw = _sweep(20, P.n_random, gain=1.0)
    sep = rd.separation(rd.curves(sw))
    v = rd.verdicts(rd.curves(sw), sep, 5, None, gen)
    assert v["holds here"].iloc[0] and "generated 0% [0%, 16%] (α=-2) → 50%" in v["our numbers"].iloc[0]
    assert "2 random 50%" in v["our numbers"].iloc[1]
    rec = rd.record(P, None, _sets(20), 5, 5, sw, sep, _xgen(), gen)
    assert rec["gen.harmful.random.alpha_2"].n == 40 and rec["gen.harmful.learned.alpha_m2"].value == 0.0


def test_dial_generations_are_cached_per_delta_and_resume(tmp_cache, monkeypatch):
    """The dial's answers equal one uncached ``steering.generate`` call, are stored per distinct
    delta (alpha = 0 once), and a rerun after an interruption only generates what is missing."""
    import torch

    from traitlab import steering
    from traitlab.models import load_model

    m = load_model("tiny-llama")
    P = rd.Params(max_new_tokens=3, gen_batch_size=4)
    prompts = [Prompt(t, "test") for t in ("Hello there", "How do I bake bread?", "Hi")]
    torch.manual_seed(0)
    dirs = {"a": torch.randn(m.d_model), "b": torch.randn(m.d_model)}
    grid = {"a": [-1.0, 0.0, 1.0], "b": [0.0, 2.0]}
    calls = []
    real = rd.generate

    def counting(model, examples, **kw):
        calls.append(len(kw["deltas"]))
        return real(model, examples, **kw)

    monkeypatch.setattr(rd, "generate", counting)
    first = rd.generations(m, prompts, dirs, grid, 1, P, "S")
    assert sum(calls) == 4 and len(list(tmp_cache.rglob("*.json"))) == 4  # 5 conditions, alpha 0 shared
    deltas = torch.stack([-dirs["a"], torch.zeros(m.d_model), dirs["a"], 2 * dirs["b"]])
    ref = steering.generate(m, rd.encode(m, prompts), max_new_tokens=3, layer=1, deltas=deltas, batch_size=4)
    got = first.set_index(["prompt", "direction", "alpha"]).text
    for i in range(3):
        assert [got[(i, "a", -1.0)], got[(i, "a", 0.0)], got[(i, "a", 1.0)], got[(i, "b", 2.0)]] == ref[i]
        assert got[(i, "b", 0.0)] == got[(i, "a", 0.0)]
    # an interrupted run: two entries lost; the rerun generates only those and answers the same
    files = sorted(tmp_cache.rglob("*.json"))
    files[0].unlink()
    files[1].unlink()
    calls.clear()
    again = rd.generations(m, prompts, dirs, grid, 1, P, "S")
    assert sum(calls) == 2 and again.equals(first)
    calls.clear()
    rd.generations(m, prompts, dirs, grid, 0, P, "S")  # another layer: nothing reused
    assert sum(calls) == 4


def test_n_edge_takes_a_seeded_subsample_in_file_order():
    from traitlab import data
    from traitlab.paths import data_root

    if not (data_root() / "xstest").exists():
        pytest.skip("public datasets not found (set TRAITLAB_DATA_ROOT)")
    ours = [x.text for x in data.edge_prompts()]
    small = rd.load_sets(rd.Params(n_harmful=4, n_edge=40, n_xstest=20))
    assert len(small.edge) == 40 and sorted(small.edge_train + small.edge_holdout) == list(range(40))
    picked = [ours.index(x.text) for x in small.edge]
    assert picked == sorted(picked)  # file order
    again = rd.load_sets(rd.Params(n_harmful=4, n_edge=40, n_xstest=20))
    assert [x.text for x in again.edge] == [x.text for x in small.edge]  # seeded
    other = rd.load_sets(rd.Params(n_harmful=4, n_edge=40, n_xstest=20, seed=1))
    assert [x.text for x in other.edge] != [x.text for x in small.edge]
    assert len(rd.load_sets(rd.Params(n_harmful=4, n_xstest=20)).edge) == len(ours)  # null: all


def test_random_directions_take_turns_over_the_prompts(tmp_cache, monkeypatch):
    """rotated (the default): prompt i answers random_{i mod 2} only, its alpha-0 answer is the
    shared unsteered one, and its steered answers are those of a generation on its prompts alone;
    crossed: every random direction answers every prompt."""
    import dataclasses

    import torch

    from traitlab import steering
    from traitlab.models import load_model
    from traitlab.params import ParamError

    m = load_model("tiny-llama")
    prompts = [Prompt(t, "test") for t in ("Hello there", "How do I bake bread?", "Hi", "Why?", "Tell me a story")]
    g = torch.Generator().manual_seed(0)
    dirs = {name: torch.randn(m.d_model, generator=g) for name in ("learned", "random_0", "random_1")}
    grid = {"learned": [-1.0, 0.0, 1.0], "random_0": [0.0, 2.0], "random_1": [0.0, 2.0]}
    calls = []
    real = rd.generate

    def counting(model, examples, **kw):
        calls.append((len(examples), len(kw["deltas"])))
        return real(model, examples, **kw)

    monkeypatch.setattr(rd, "generate", counting)
    P = rd.Params(max_new_tokens=3, gen_batch_size=4)
    got = rd.generations(m, prompts, dirs, grid, 1, P, "S")
    assert sorted(calls) == [(2, 1), (3, 1), (5, 3)]  # learned's 3 deltas on all; each random's +2 on its turn
    rand = got[got.dir_kind == "random"]
    assert sorted(zip(rand.prompt, rand.direction, rand.alpha, strict=True)) == sorted(
        (i, f"random_{i % 2}", a) for i in range(5) for a in (0.0, 2.0))
    t = got.set_index(["prompt", "direction", "alpha"]).text
    assert all(t[(i, f"random_{i % 2}", 0.0)] == t[(i, "learned", 0.0)] for i in range(5))
    mine = [prompts[i] for i in (1, 3)]
    alone = steering.generate(m, rd.encode(m, mine), max_new_tokens=3, layer=1, deltas=(2 * dirs["random_1"])[None],
                              batch_size=4)
    assert [t[(1, "random_1", 2.0)], t[(3, "random_1", 2.0)]] == [row[0] for row in alone]
    calls.clear()
    crossed = rd.generations(m, prompts, dirs, grid, 1, dataclasses.replace(P, random_design="crossed"), "S")
    assert len(crossed) == 5 * (3 + 2 + 2) and {n for n, _ in calls} == {5}  # learned's answers come from the cache
    assert crossed.set_index(["prompt", "direction", "alpha"]).text[(1, "random_1", 2.0)] == t[(1, "random_1", 2.0)]
    with pytest.raises(KeyError, match="cannot rotate"):
        rd.generations(m, prompts, dirs, grid, 1, P, "S", rotate=["random_9"])
    with pytest.raises(ParamError, match="random_design must be"):
        rd.Params(random_design="paired")
