"""``traitlab.cachelog``: each cache notes what it read back and what it computed, so a render
can say whether its seconds were a cold or a warm run."""

from __future__ import annotations

import pytest

from traitlab import cachelog
from traitlab import judge as J
from traitlab.activations import extract
from traitlab.gencache import generate_cached
from traitlab.models import load_model
from traitlab.sites import Site
from traitlab.textstats import perplexity


@pytest.fixture
def log(tmp_path, monkeypatch, tmp_cache):
    path = tmp_path / "cache.jsonl"
    monkeypatch.setenv(cachelog.ENV, str(path))
    return path


def test_every_cache_notes_what_it_read_and_what_it_computed(log, tmp_path):
    m = load_model("tiny-llama")
    ex = [m.chat.encode(q) for q in ("Hi", "Will it rain?", "Hello there")]
    for _ in range(2):  # cold, then warm
        extract(m, ex, [Site("resid_pre", 1)], progress=False)
        perplexity(m, [("Hi", "Hello."), ("Hi", "Bye."), ("Hi", "Hello.")], progress=False)
        generate_cached(m, ex, {"a": 1, "b": 2}, lambda cs: [[f"x{c}"] * len(ex) for c in cs], method="t-v1")
        judge = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama"), backend=J.LocalBackend(m),
                        cache=tmp_path / "judge")
        judge.score_many("coherence", [("Q?", "A."), ("Q?", "B."), ("Q?", "A.")], progress=False)
    assert cachelog.summary(log) == {
        "activations": {"read": 3, "computed": 3},
        "perplexities": {"read": 3, "computed": 3},  # each item looked up (the repeat too)
        "generated answers": {"read": 6, "computed": 6},  # conditions × prompts
        "judge replies": {"read": 2, "computed": 2},  # the repeated request is asked once
    }
    assert cachelog.line(cachelog.summary(log)).startswith("computed 14 of 28 looked up: activations 3 of 6")


def test_nothing_is_noted_without_the_variable_or_without_a_cache(tmp_path, monkeypatch, tmp_cache):
    monkeypatch.delenv(cachelog.ENV, raising=False)
    cachelog.note("x", read=1, computed=1)  # no file named: nothing written anywhere
    path = tmp_path / "log.jsonl"
    monkeypatch.setenv(cachelog.ENV, str(path))
    m = load_model("tiny-llama")
    perplexity(m, [("Hi", "Hello.")], cache=False, progress=False)
    generate_cached(m, [m.chat.encode("Hi")], {"a": 1}, lambda cs: [["x"] for _ in cs], method="t-v1", store=False)
    assert not path.exists() and cachelog.summary(path) == {}


def test_a_half_written_line_is_skipped(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"cache": "perplexities", "read": 2, "computed": 1}\n{"cache": "perpl')
    assert cachelog.summary(path) == {"perplexities": {"read": 2, "computed": 1}}
    assert cachelog.line({}) == "no cache lookups noted"


def test_the_chain_notes_its_teacher_answers(log):
    import pandas as pd

    from traitlab.chain import cached_answers

    m = load_model("tiny-llama")
    df = pd.DataFrame({"id": ["a", "b"], "instruction": ["Say hi.", "Count to two."]})
    first = cached_answers(m, m.chat, df, 3, "teacher", progress=False)
    assert cached_answers(m, m.chat, df, 3, "teacher", progress=False) == first
    assert cachelog.summary(log) == {"chain answers": {"read": 2, "computed": 2}}
