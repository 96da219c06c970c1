"""Result records: tolerances by rule, verdicts by one rule, comparisons that name what moved."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from traitlab.records import (
    Claim,
    Quantity,
    RecordError,
    ResultRecord,
    compare,
    count_tolerance,
    decide,
    estimate,
    exact,
    rate,
    read,
    se_tolerance,
    verdict_table,
)


def _record(**overrides) -> ResultRecord:
    qs = (rate("accuracy", 0.9, n=50, ci=(0.8, 0.95)), estimate("r", 0.6, se=0.05, n=30),
          exact("n_prompts", 64), rate("refusal_pct", 47.0, n=100, unit="%"))
    claims = (Claim("acc_high", "probe accuracy above 80%", "85.9%", "", "holds", "CI above 0.8",
                    quantity="accuracy"),)
    kw = dict(report="demo", model="tiny", profile="ci", quantities=qs, claims=claims,
              tables={"cells": pd.DataFrame({"layer": [1, 2], "acc": [0.8, 0.9]})})
    kw.update(overrides)
    return ResultRecord(**kw)


def test_tolerance_rules():
    assert count_tolerance(40) == (0.025, "one of 40 items")
    assert count_tolerance(40, 2)[0] == 0.05
    assert se_tolerance(0.1, 2)[0] == pytest.approx(0.2)
    assert rate("x", 50.0, n=200, unit="%").tolerance == pytest.approx(0.5)
    with pytest.raises(RecordError, match="n > 0"):
        count_tolerance(0)
    with pytest.raises(RecordError, match="finite"):
        se_tolerance(float("nan"))


def test_round_trip(tmp_path):
    rec = _record()
    path = rec.write(tmp_path)
    assert path.name == "demo.results.json"
    assert (tmp_path / "demo.cells.csv").read_text().splitlines()[0] == "layer,acc"
    back = read(path)
    assert back == rec  # tables compare=False; every quantity and claim equal
    assert back["accuracy"].ci == (0.8, 0.95)
    assert compare(rec, back) == []


def test_noise_within_tolerance_passes():
    rec = _record()
    noisy = _record(quantities=tuple(
        Quantity(q.name, q.value + 0.5 * q.tolerance, q.unit, q.n, q.ci, q.tolerance, q.tolerance_rule)
        for q in rec.quantities))
    assert compare(rec, noisy) == []


@pytest.mark.parametrize("field", ["accuracy", "r", "n_prompts", "refusal_pct"])
def test_every_field_beyond_tolerance_fails_naming_it(field):
    rec = _record()
    moved = tuple(Quantity(q.name, q.value + (1.01 * q.tolerance + 1e-9 if q.name == field else 0), q.unit,
                           q.n, q.ci, q.tolerance, q.tolerance_rule) for q in rec.quantities)
    problems = compare(rec, _record(quantities=moved))
    assert len(problems) == 1 and problems[0].startswith(f"demo.{field}:"), problems


def test_missing_extra_and_verdict_changes_are_named():
    rec = _record()
    fewer = _record(quantities=rec.quantities[:-1])
    assert compare(rec, fewer) == ["demo.refusal_pct: missing from the current record"]
    assert compare(fewer, rec) == ["demo: quantities not in the golden: refusal_pct"]
    flipped = _record(claims=(Claim("acc_high", "x", "85.9%", "", "not held", "why", quantity="accuracy"),))
    assert compare(rec, flipped) == ["demo.claim acc_high: verdict 'not held' vs golden 'holds'"]
    nan = _record(quantities=(exact("x", math.nan),), claims=())
    assert compare(nan, nan) == []


def test_verdict_rule():
    assert decide(holds=True)[0] == "holds"
    assert decide(holds=False, seed_effect=0.3, mde=0.1)[0] == "not held"
    assert decide(holds=False, seed_effect=-0.3, mde=0.4)[0] == "inconclusive"
    assert decide(holds=False, positive_control=True)[0] == "not held"
    assert decide(holds=False)[0] == "inconclusive"
    assert decide(holds=True, comparable=False, comparable_reason="32B model")[0] == "not comparable"


def test_bad_records_fail_with_one_line(tmp_path):
    with pytest.raises(RecordError, match="duplicate quantity"):
        ResultRecord("x", quantities=(exact("a", 1), exact("a", 2)))
    with pytest.raises(RecordError, match="unknown quantity"):
        ResultRecord("x", claims=(Claim("c", "s", "1", "", "holds", "r", quantity="nope"),))
    with pytest.raises(RecordError, match="verdict"):
        Claim("c", "s", "1", "2", "maybe", "r")
    with pytest.raises(RecordError, match="reason"):
        Claim("c", "s", "1", "2", "holds", " ")
    bad = tmp_path / "bad.results.json"
    bad.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        read(bad)
    with pytest.raises(RecordError, match="no result record"):
        read(tmp_path / "missing.results.json")
    bad.write_text('{"schema": 99}')
    with pytest.raises(RecordError, match="schema"):
        read(bad)


def test_verdict_table_first_view():
    table = verdict_table(_record())
    assert list(table.columns) == ["claim", "seed", "ours", "verdict", "why"]
    assert table.iloc[0]["ours"] == "0.9 [0.8, 0.95] (n=50)"


# The committed golden records: every declared field fails the check when moved beyond its
# tolerance, and every notebook that publishes a record has a golden one.
from traitlab.paths import PROJECT_ROOT  # noqa: E402

GOLDEN = PROJECT_ROOT / "tests" / "golden"
GOLDEN_RECORDS = sorted(GOLDEN.glob("*.results.json"))


@pytest.mark.parametrize("path", GOLDEN_RECORDS, ids=lambda p: p.name.split(".")[0])
def test_golden_record_fields_fail_when_moved(path):
    gold = read(path)
    assert gold.quantities, f"{path.name} has no quantities"
    for q in gold.quantities:
        if math.isnan(q.value):
            continue
        step = q.tolerance * 1.01 + max(1e-9, abs(q.value) * 1e-9)
        moved = tuple(Quantity(o.name, o.value + (step if o.name == q.name else 0.0), o.unit, o.n, o.ci,
                               o.tolerance, o.tolerance_rule) for o in gold.quantities)
        problems = compare(gold, ResultRecord(gold.report, gold.model, gold.profile, moved, gold.claims))
        assert [p.split(":")[0] for p in problems] == [f"{gold.report}.{q.name}"], problems
        assert compare(gold, gold) == []


def test_every_recording_notebook_has_a_golden_record():
    for nb in sorted((PROJECT_ROOT / "notebooks").glob("*.py")):
        if 'tags=["record"]' in nb.read_text():
            assert (GOLDEN / f"{nb.stem}.results.json").exists(), f"{nb.stem}: no golden record; run `make golden`"


def test_publish_fails_on_moved_fields_and_warns_on_verdicts(tmp_path, monkeypatch):
    from traitlab.records import GoldenMismatch, publish

    rec = _record()
    rec.write(tmp_path / "golden")
    monkeypatch.setenv("TRAITLAB_GOLDEN_DIR", str(tmp_path / "golden"))
    monkeypatch.setenv("TRAITLAB_RECORD_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("TRAITLAB_RECORD_NAME", raising=False)
    assert publish(rec) == tmp_path / "out" / "demo.results.json"
    flipped = _record(claims=(Claim("acc_high", "x", "85.9%", "", "not held", "why", quantity="accuracy"),))
    with pytest.warns(UserWarning, match="verdict 'not held'"):
        publish(flipped)
    moved = _record(quantities=(rate("accuracy", 0.5, n=50),) + rec.quantities[1:])
    with pytest.raises(GoldenMismatch, match=r"demo\.accuracy: 0\.5 vs golden 0\.9"):
        publish(moved)
