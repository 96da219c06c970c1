"""The claims ledger: every README figure read from its report's result record."""

from __future__ import annotations

import pytest

from traitlab import claims, records


def test_every_readme_figure_is_its_records_value():
    ledger = claims.load()
    assert len(ledger) >= 10
    problems = claims.check(ledger)
    assert not problems, "README and records disagree (re-render, then write the phrase given):\n" + "\n".join(problems)


def test_each_claim_has_provenance():
    for row in claims.table(claims.load()):
        # every claim has a commit; single-model reports also name the exact weights (the chain
        # and transfer reports name their models in their parameters instead)
        assert row["value"] is not None and row["git_commit"] and row["date"], row
        assert row["fingerprint"] or row["report"].split("/")[-1].startswith(("model_chain", "sft_dpo", "performance")), row


def _record(tmp_path, value, commit="abc123"):
    (tmp_path / "reports").mkdir(exist_ok=True)
    rec = records.ResultRecord("r", model="m", quantities=(records.exact("acc", value, unit="%"),),
                               run={"git_commit": commit, "date": "2026-12-02"})
    rec.write(tmp_path / "reports")


def test_a_moved_number_a_missing_quantity_and_a_stale_readme_are_reported(tmp_path):
    c = claims.Claim("acc", "r", "acc", "acc {:.1f}%")
    _record(tmp_path, 98.21)
    (tmp_path / "README.md").write_text("we found acc 98.2% here")
    assert claims.check([c], tmp_path) == []
    _record(tmp_path, 97.0)  # the report moved: the README must follow, and is told what to write
    (msg,) = claims.check([c], tmp_path)
    assert "README should state 'acc 97.0%'" in msg and "abc123" in msg
    (msg,) = claims.check([claims.Claim("acc", "r", "auroc", "auroc {:.2f}")], tmp_path)
    assert "no quantity 'auroc'" in msg
    (msg,) = claims.check([claims.Claim("acc", "gone", "acc", "acc {:.1f}%")], tmp_path)
    assert "no result record" in msg


def test_signs_scale_and_the_prose_minus():
    c = claims.Claim("d", "r", "d", "attn_out {:+.1f} pts")
    assert c.phrase_for(-3.84) == "attn_out \u22123.8 pts"
    assert c.phrase_for(0.8) == "attn_out +0.8 pts"
    assert claims.Claim("b", "r", "b", "blocks {:.0f}%", scale=100).phrase_for(0.683) == "blocks 68%"


def test_a_readme_minus_in_either_style_matches(tmp_path):
    c = claims.Claim("d", "r", "acc", "gap {:.1f} pts")
    _record(tmp_path, -3.8)
    for text in ("gap \u22123.8 pts", "gap -3.8 pts"):
        (tmp_path / "README.md").write_text(text)
        assert claims.check([c], tmp_path) == []


def test_malformed_entries_fail_clearly(tmp_path):
    with pytest.raises(claims.ClaimError, match="exactly one"):
        claims.Claim("x", "r", "q", "acc 98.2%")
    with pytest.raises(claims.ClaimError, match="exactly one"):
        claims.Claim("x", "r", "q", "{:.1f} and {:.1f}")
    bad = tmp_path / "claims.yaml"
    bad.write_text("- {id: x, report: r, quantity: q, phrase: 'a {}', pattern: 'p'}\n")
    with pytest.raises(claims.ClaimError, match="unknown keys \\['pattern'\\]"):
        claims.load(bad)


def test_a_phrase_can_state_the_ci(tmp_path):
    (tmp_path / "reports").mkdir()
    q = records.Quantity("gap", 0.8, unit="pts", ci=(-0.31, 1.44))
    records.ResultRecord("r", quantities=(q,), run={"git_commit": "c", "date": "d"}).write(tmp_path / "reports")
    c = claims.Claim("g", "r", "gap", "{:+.1f} points [{lo:+.1f}, {hi:+.1f}]")
    (tmp_path / "README.md").write_text("a gap of +0.8 points [−0.3, +1.4] here")
    assert claims.check([c], tmp_path) == []
    (tmp_path / "README.md").write_text("a gap of +0.8 points [−0.3, +1.5] here")
    assert "README should state '+0.8 points [−0.3, +1.4]'" in claims.check([c], tmp_path)[0]
    (msg,) = claims.check([claims.Claim("g", "r", "gap", "gap {:.2f}")], tmp_path)
    assert "should state 'gap 0.80'" in msg  # no CI asked for: none needed


def test_a_reflowed_readme_still_states_the_figure(tmp_path):
    c = claims.Claim("acc", "r", "acc", "held-out acc {:.1f}%")
    _record(tmp_path, 98.21)
    (tmp_path / "README.md").write_text("the held-out\n  acc 98.2% here")
    assert claims.check([c], tmp_path) == []
