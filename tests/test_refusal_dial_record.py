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
