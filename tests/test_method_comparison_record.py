"""Method comparison's result record: names, tolerance rules, verdicts, and a moved field failing by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from toys import pair_scores

from traitlab import records
from traitlab.experiments import method_comparison as mc

LEVEL = {"probe": 0.97, "gradient": 0.90, "mean_diff": 0.80, "pca_diff": 0.62, "ica": 0.55, "random": 0.55}


def _results(p: mc.Params, level: dict[str, float] = LEVEL) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for t in p.traits:
        for layer in range(6):
            for m in p.methods:
                for seed in (range(p.n_random_seeds) if m == "random" else [0]):
                    acc = float(np.clip(level[m] + rng.normal(0, 0.03), 0, 1))
                    rows.append({"trait": t, "layer": layer, "method": m, "seed": seed, "val_accuracy": acc,
                                 "polarity_correct": bool(m != "random" or rng.random() > 0.3),
                                 "effect_size": 4 * (acc - 0.5), "auroc": acc, "raw_norm": 1.0})
    return pd.DataFrame(rows)


def _record(level: dict[str, float] = LEVEL) -> records.ResultRecord:
    p = mc.Params(traits=["refusal", "humor", "optimism"], n_random_seeds=10, n_boot=50)
    df = _results(p, level)
    boot = mc.draws(p, pair_scores(df, ["trait", "layer", "method", "seed"]))
    return mc.record(p, None, df, mc.summarize(df, p, boot), mc.random_null(df), boot)


def test_record_names_rules_and_verdicts():
    rec = _record()
    names = records.names(rec)
    for m in mc.Params().methods:
        assert {f"{m}.mean_accuracy_pct", f"{m}.mean_effect_size", f"{m}.polarity_fail_rate"} <= set(names)
    assert rec["cells_per_method"].value == 18 and rec["cells_per_method"].tolerance == 0
    assert rec["probe.mean_accuracy_pct"].tolerance_rule.startswith("2 standard errors")
    assert rec["ica.mean_accuracy_pct"].tolerance_rule.startswith("3 standard errors")  # chaotic across CPUs
    assert rec["probe.polarity_fail_rate"].tolerance == pytest.approx(2 / 18)
    assert all(q.tolerance > 0 for q in rec.quantities if q.tolerance_rule != "exact")
    verdicts = {c.id: c.verdict for c in rec.claims}
    assert verdicts["probe_beats_random"] == "holds" and verdicts["gradient_beats_random"] == "holds"
    assert verdicts["pca_diff_like_random"] == "not held"  # 62% clears the null; the probe is the control
    assert verdicts["ica_like_random"] == "holds"
    assert verdicts["ordering"] == "holds" and verdicts["probe_polarity"] == "holds"
    assert list(records.verdict_table(rec).columns) == ["claim", "seed", "ours", "verdict", "why"]


def test_ordering_out_of_order_with_power_is_not_held():
    rec = _record({**LEVEL, "probe": 0.85, "gradient": 0.93})
    c = {c.id: c for c in rec.claims}["ordering"]
    assert c.verdict == "not held" and "probe − gradient" in c.reason


def test_a_moved_headline_fails_naming_the_field():
    rec = _record()
    moved = _record({**LEVEL, "mean_diff": 0.72})
    problems = records.compare(rec, moved)
    assert any(p.startswith("method_comparison.mean_diff.mean_accuracy_pct:") for p in problems), problems
    assert not any("probe.mean_accuracy_pct" in p for p in problems)
    assert records.compare(rec, _record()) == []
