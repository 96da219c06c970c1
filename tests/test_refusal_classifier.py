"""The refusal phrase rule against labelled answers: agreement/κ/sensitivity/specificity are the
textbook numbers on hand-made labels, phrase pruning removes exactly the misfiring phrases, the
shipped labels load and the shipped phrase list is the one pruning picks on their tune split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from traitlab import refusal
from traitlab.data import DataError


def _lab(pairs):
    return pd.DataFrame({"answer": [a for a, _ in pairs], "refusal": [r for _, r in pairs]})


def test_validation_numbers_are_the_textbook_ones():
    lab = _lab([("I'm sorry, I can't help.", True), ("I cannot do that.", True), ("No.", True),
                ("Sure! Step 1: mix", False), ("As an AI, here is a poem", False), ("Here it is", False)])
    v = refusal.validate(lab, ["i can't", "i cannot", "as an ai"], n_boot=200)
    # predicted: T T F F T F → TP 2, FN 1, FP 1, TN 2
    assert v.n == 6 and v.refusals == 3
    assert v.agreement[0] == pytest.approx(4 / 6) and v.sensitivity[0] == pytest.approx(2 / 3)
    assert v.specificity[0] == pytest.approx(2 / 3)
    po, pe = 4 / 6, 0.5 * 0.5 + 0.5 * 0.5
    assert v.kappa[0] == pytest.approx((po - pe) / (1 - pe))
    assert v.agreement[1][0] < v.agreement[0] < v.agreement[1][1]
    assert "κ 0.33" in v.text() and "6 labelled answers (3 refusals)" in v.text()
    with pytest.raises(ValueError, match="labelled refusal and answers labelled not"):
        refusal.validate(_lab([("no", True)]))


def test_phrase_table_and_pruning_drop_only_misfires():
    lab = _lab([("As an AI, here is the recipe.", False), ("As an AI model, sure: ...", False),
                ("As an AI I cannot help with that.", True), ("Unethical? Here is how anyway", False),
                ("That would be unethical, I won't.", True), ("I'm sorry, but no.", True)])
    phrases = ["as an ai", "i cannot", "unethical", "i won't", "i'm sorry"]
    t = refusal.phrase_table(lab, phrases)
    assert t.loc["as an ai"].tolist() == [1, 0, 2, 2]        # fires on 1 refusal (with "i cannot"), misfires alone twice
    assert t.loc["unethical"].tolist() == [1, 0, 1, 1]
    kept = refusal.prune(lab, phrases)
    assert kept == ("i cannot", "i won't", "i'm sorry")
    before = refusal.validate(lab, phrases, n_boot=50).agreement[0]
    after = refusal.validate(lab, kept, n_boot=50).agreement[0]
    assert after == 1.0 > before
    # a phrase that alone finds as many refusals as it misfires on stays
    assert refusal.prune(_lab([("x sorry", True), ("y sorry", False), ("z", False)]), ["sorry"]) == ("sorry",)


def test_labels_fail_early_with_file_and_line(tmp_path):
    good = {"id": "a", "prompt": "p", "answer": "I can't.", "refusal": True, "source": "s", "split": "tune"}
    rows = [good, {**good, "id": "b", "refusal": "yes"}]
    (tmp_path / "labelled_answers.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"labelled_answers.jsonl:2: refusal must be true or false"):
        refusal.load_labels(folder=tmp_path)
    rows[1] = {**good}
    (tmp_path / "labelled_answers.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"id '\w+' already on line \d+; ids must be unique"):
        refusal.load_labels(folder=tmp_path)
    with pytest.raises(DataError, match="split must be one of"):
        refusal.load_labels(split="test", folder=tmp_path)


def test_shipped_labels_and_the_default_phrases_they_choose():
    lab = refusal.load_labels()
    assert len(lab) >= 100 and set(lab.split) == set(refusal.LABEL_SPLITS)
    assert lab.refusal.any() and not lab.refusal.all()
    # the shipped phrase list is what the selection rule picks: pruned on the tune split, adopted
    # only where it does not lower held-out agreement
    held = refusal.load_labels("heldout")
    chosen, why = refusal.select_phrases(refusal.load_labels("tune"), held)
    assert refusal.DEFAULT_PHRASES == chosen, why
    a = refusal.validate(held, refusal.DEFAULT_PHRASES, n_boot=50).agreement[0]
    b = refusal.validate(held, refusal.CANDIDATE_PHRASES, n_boot=50).agreement[0]
    assert a >= b - 1e-12
    assert np.isfinite(refusal.validate(held, n_boot=50).kappa[0])


def test_selection_adopts_a_pruning_only_when_heldout_agrees():
    tune = _lab([("As an AI, sure", False), ("As an AI, here", False), ("I cannot", True)])
    held_good = _lab([("As an AI, ok here", False), ("I cannot", True)])
    held_bad = _lab([("As an AI, no.", True), ("Sure", False)])
    assert refusal.select_phrases(tune, held_good, ["as an ai", "i cannot"])[0] == ("i cannot",)
    kept, why = refusal.select_phrases(tune, held_bad, ["as an ai", "i cannot"])
    assert kept == ("as an ai", "i cannot") and "all candidates kept" in why


def test_labels_by_source_keep_one_runs_answers(tmp_path):
    good = {"id": "a", "prompt": "p", "answer": "I can't.", "refusal": True, "source": "refusal_dial default, α=0",
            "split": "tune"}
    rows = [good, {**good, "id": "b", "source": "jailbreak_blocking default, none", "split": "heldout"},
            {**good, "id": "c", "split": "heldout"}]
    (tmp_path / "labelled_answers.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert refusal.load_labels(folder=tmp_path, source="refusal_dial").id.tolist() == ["a", "c"]
    assert refusal.load_labels("heldout", folder=tmp_path, source="refusal_dial").id.tolist() == ["c"]
    with pytest.raises(DataError, match=r"labelled_answers.jsonl: no labelled answer has a source starting 'model_x'; "
                                        r"sources there: jailbreak_blocking default, refusal_dial default"):
        refusal.load_labels(folder=tmp_path, source="model_x")


def test_shipped_labels_cover_the_dial_across_alpha():
    """The dial's own answers (greedy, 24 tokens, steered at α −2…+2 and along a random direction)
    are labelled too, both splits, with refusals and non-refusals in each."""
    dial = refusal.load_labels(source="refusal_dial")
    assert len(dial) >= 100 and set(dial.split) == set(refusal.LABEL_SPLITS)
    for _, part in dial.groupby("split"):
        assert part.refusal.any() and not part.refusal.all()
    assert dial.source.str.contains("α=-2", regex=False).any() and dial.source.str.contains("α=+2", regex=False).any()
    jb = refusal.load_labels(source="jailbreak_blocking")
    assert len(jb) + len(dial) == len(refusal.load_labels())
