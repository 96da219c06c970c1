"""The claims ledger: every README finding re-derived from its committed report."""

from __future__ import annotations

import json

import pytest

from traitlab import claims


def test_every_claim_matches_its_report_and_the_readme():
    ledger = claims.load()
    assert len(ledger) >= 10
    problems = claims.check(ledger)
    assert not problems, "claims moved (update the report, README and claims.yaml together):\n" + "\n".join(problems)


def test_each_claim_has_provenance():
    for row in claims.table(claims.load()):
        # every claim has a commit; single-model reports also name the exact weights (the chain
        # and transfer reports name their models in their parameters instead)
        assert row["derived"] is not None and row["git_commit"] and row["date"], row
        assert row["fingerprint"] or row["report"].split("/")[-1].startswith(("model_chain", "sft_dpo", "performance")), row


def _report(tmp_path, text):
    (tmp_path / "reports").mkdir(exist_ok=True)
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": [text]}]}],
          "metadata": {"traitlab": {"profile": "default"}}}
    (tmp_path / "reports" / "r.ipynb").write_text(json.dumps(nb))


def test_a_moved_number_a_missing_pattern_and_a_stale_readme_are_reported(tmp_path):
    c = claims.Claim("acc", "reports/r.ipynb", r"acc (?P<value>[\d.]+)%", 98.2, 0.05, readme="acc 98.2%")
    _report(tmp_path, "acc 98.2%")
    (tmp_path / "README.md").write_text("we found acc 98.2% here")
    assert claims.check([c], tmp_path) == []
    _report(tmp_path, "acc 97.0%")
    assert "now says 97.0" in claims.check([c], tmp_path)[0]
    _report(tmp_path, "nothing")
    assert "not found" in claims.check([c], tmp_path)[0]
    _report(tmp_path, "acc 98.2%")
    (tmp_path / "README.md").write_text("we found acc 98.3% here")
    assert "README no longer states" in claims.check([c], tmp_path)[0]


def test_malformed_entries_fail_clearly():
    with pytest.raises(claims.ClaimError, match="named group"):
        claims.Claim("x", "r", r"acc ([\d.]+)", 1.0, 0.1)
    with pytest.raises(claims.ClaimError, match="does not state"):
        claims.Claim("x", "r", r"(?P<value>\d+)", 98.2, 0.1, readme="acc 97%")
