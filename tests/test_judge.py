"""The judge: exact aggregation math, the digit-tree distribution, and real HTTP servers.

The HTTP tests run against real servers on loopback: a scripted OpenAI-format server
(429 then success, timeouts, 5xx, malformed bodies) and llama.cpp's own server serving an
offline-zoo GGUF, which returns real logprobs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from openai_stub_server import StubServer

from traitlab import judge as J
from traitlab.models import load_model


def test_logprob_score_is_probability_weighted_mean_over_integers():
    top = {"80": math.log(0.2), " 80": math.log(0.2), "90": math.log(0.1), "Sure": math.log(0.5)}
    score, mass = J.logprob_score(top)
    assert mass == pytest.approx(0.5)
    assert score == pytest.approx((80 * 0.4 + 90 * 0.1) / 0.5)


def test_logprob_score_none_below_min_mass_and_ignores_non_integers():
    top = {"I": math.log(0.8), "7": math.log(0.2), "101": math.log(0.5), "-3": math.log(0.1)}
    assert J.logprob_score(top, min_mass=0.25) == (None, pytest.approx(0.2))
    assert J.logprob_score(top, min_mass=0.2)[0] == pytest.approx(7.0)


@pytest.mark.parametrize("text,expected", [
    ("85", 85.0), (" 42\n", 42.0), ("Score: 75/100", 75.0), ("I'd say 100.", 100.0),
    ("150 then 30", 30.0), ("no number", None), ("3.5", None), ("", None)])
def test_parse_score(text, expected):
    assert J.parse_score(text) == expected


def test_digit_level_detection():
    assert J.is_digit_level({"8": -0.1, "7": -2.0, "The": -3.0})
    assert not J.is_digit_level({"85": -0.1, "8": -2.0})
    assert not J.is_digit_level({"The": -0.1})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="top_logprobs"):
        J.JudgeConfig(top_logprobs=25)
    with pytest.raises(ValueError, match="backend"):
        J.JudgeConfig(backend="anthropic")
    with pytest.raises(ValueError, match="min_mass"):
        J.JudgeConfig(min_mass=1.5)
    with pytest.raises(ValueError, match="dtype"):
        J.JudgeConfig(dtype="int8")


def test_unknown_trait_needs_a_description():
    with pytest.raises(ValueError, match="description"):
        J.judge_messages("trait", "q", "a", trait="whimsy")
    assert "whimsy" in J.judge_messages("trait", "q", "a", trait="whimsy", description="x")[0]["content"]


# --- the exact integer distribution of an in-process judge ---------------------------------

@pytest.fixture(scope="module")
def tiny_judge():
    return J.LocalBackend(load_model("tiny-llama"), prune=1e-3)


def _brute_force_p(model, prompt: list[int], n: int, digit_start: torch.Tensor) -> float:
    """P(tokens of n, then a non-digit) by teacher forcing the whole sequence."""
    num = model.tokenizer(str(n), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + num])
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(input_ids=ids).logits[0].float(), -1)
    lp = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(num))
    p_stop = 1 - float(logp[-1].exp()[digit_start].sum())
    return math.exp(lp) * p_stop


def test_integer_distribution_matches_teacher_forcing(tiny_judge):
    model = tiny_judge.model
    exact = J.LocalBackend(model, prune=0.0)
    prompt = list(model.chat.encode("Rate it:").ids)
    top, probs = exact.integer_distribution(torch.tensor([prompt]), top_k=5)
    assert len(top) == 5 and sorted(probs) == list(range(101))  # prune=0: every integer
    for n in (0, 7, 10, 42, 99, 100):
        assert probs[n] == pytest.approx(_brute_force_p(model, prompt, n, tiny_judge._digit_start),
                                         rel=1e-4)
    assert 0 < sum(probs.values()) <= 1 + 1e-6


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_tree_attention_expansion_equals_one_cache_row_per_node(arch):
    """The trie expansion with each prompt's nodes appended to its own cache row under a tree
    mask gives the integer distributions of one copied cache row per node, in a padded batch of
    different-length prompts; a sliding-window model (Gemma 3) keeps the row-per-node path and
    still matches teacher forcing."""
    be = J.LocalBackend(load_model(arch), prune=1e-3)
    assert be._tree_ok == (arch != "tiny-gemma3")
    msgs = [J.judge_messages("trait", q, a) for q, a in
            [("Will it rain?", "Sunny days ahead!"), ("Will it rain?", "No."),
             ("Will it rain?", "It will rain heavily and then clear up, with wind from the west.")]]
    ids = [be._prompt_ids(m) for m in msgs]
    def prefill():  # the same whole prefill for both paths (no kept prefix: rounding would differ)
        be._last_prefix = None
        return be._prefill(ids)

    with torch.no_grad():
        rows = be._expand_rows(*prefill(), [len(x) for x in ids], 5)
        tree = be._expand_tree(*prefill(), [len(x) for x in ids], 5) if be._tree_ok else rows
    if be._tree_ok:
        for (ta, ia), (tb, ib) in zip(rows, tree, strict=True):
            assert ta == tb and set(ia) == set(ib) and ia
            assert max(abs(ia[k] - ib[k]) for k in ia) < 1e-6
    exact = J.LocalBackend(be.model, prune=0.0)
    _, probs = exact.integer_distribution(torch.tensor([ids[1]]), top_k=5)
    for n in (0, 10, 57, 100):
        assert probs[n] == pytest.approx(_brute_force_p(be.model, ids[1], n, be._digit_start), rel=1e-4)


def test_small_groups_of_one_rubric_are_packed_and_score_as_alone(tiny_judge):
    """Answers to different questions (one each, as natural elicitation's checks ask) run as one
    batch sharing the rubric's prefill; each reply equals scoring it alone; replies reach
    ``on_chunk`` batch by batch, every index once."""
    qs = ["Will it rain tomorrow in the city?", "How will schools change?", "Is the bridge safe?"]
    items = [(q, a) for q, a in zip(qs, ["Sunny days ahead!", "No.", "It will hold for decades."], strict=True)]
    msgs = [J.judge_messages("trait", q, a) for q, a in items]
    groups = [("trait", "optimism", None, q) for q, _ in items] + [("coherence", None, None, qs[0])]
    msgs.append(J.judge_messages("coherence", *items[0]))
    assert J.LocalBackend.chunks(groups) == [[0, 1, 2], [3]]
    assert J._common_prefix([tiny_judge._prompt_ids(m) for m in msgs[:3]]) >= tiny_judge.MIN_SHARED
    seen: list[int] = []
    batch = tiny_judge.complete_many(msgs, mode="logprob", top_logprobs=20, max_tokens=1, groups=groups,
                                     on_chunk=lambda part, replies: seen.extend(part))
    assert sorted(seen) == [0, 1, 2, 3]
    for m, b in zip(msgs, batch, strict=True):
        a = tiny_judge.complete(m, mode="logprob", top_logprobs=20, max_tokens=1)
        assert abs(J.weighted_score(a.int_probs, 0.0)[0] - J.weighted_score(b.int_probs, 0.0)[0]) < 1e-4
    big = [("trait", "q1")] * 5 + [("trait", "q2")] * 2 + [("trait", "q3")] * 2
    assert J.LocalBackend.chunks(big) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]


def test_one_prefill_serves_the_logprob_and_the_text_reply_and_each_equals_its_mode_alone(tiny_judge):
    qs = ["Will it rain tomorrow in the city?", "How will schools change?"]
    items = [(q, a) for q in qs for a in ["Sunny days ahead!", "No.", "It will hold for decades."]]
    msgs = [J.judge_messages("trait", q, a) for q, a in items]
    groups = [("trait", "optimism", None, q) for q, _ in items]
    prefills, real = [], tiny_judge._prefill
    tiny_judge._prefill = lambda ids, **kw: prefills.append(len(ids)) or real(ids, **kw)
    try:
        both = tiny_judge.complete_both(msgs, top_logprobs=20, max_tokens=6, groups=groups)
        assert prefills == [len(part) for part in J.LocalBackend.chunks(groups)]  # one per batch, for both modes
        lp = tiny_judge.complete_many(msgs, mode="logprob", top_logprobs=20, max_tokens=6, groups=groups)
        text = tiny_judge.complete_many(msgs, mode="text", top_logprobs=20, max_tokens=6, groups=groups)
    finally:
        del tiny_judge._prefill
    assert [t.text for _, t in both] == [t.text for t in text] and any(t.text for t in text)
    for (a, _), b in zip(both, lp, strict=True):
        assert a.top_logprobs == pytest.approx(b.top_logprobs, abs=1e-6)
        assert set(a.int_probs) == set(b.int_probs)
        assert max(abs(a.int_probs[k] - b.int_probs[k]) for k in a.int_probs) < 1e-6


def test_score_modes_reads_both_modes_from_one_prefill_counted_and_cached_per_mode(tmp_path):
    model = load_model("tiny-llama")
    items = [("Will it rain?", "Sunny days ahead!"), ("Will it rain?", "No."), ("Will it rain?", "No.")]
    alone = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama"), backend=J.LocalBackend(model), cache=None)
    want = {m: alone.with_mode(m).score_many("coherence", items, progress=False) for m in ("logprob", "text")}
    lp = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama"), backend=J.LocalBackend(model), cache=tmp_path)
    judges = {"logprob": lp, "text": lp.with_mode("text")}
    calls = []
    real = lp.backend.complete_both
    lp.backend.complete_both = lambda batch, **kw: calls.append(len(batch)) or real(batch, **kw)
    got = J.score_modes(judges, "coherence", items, progress=False)
    assert calls == [2]  # the repeated answer is asked once; no complete_many call is left to make
    for m in ("logprob", "text"):
        assert [s.value for s in got[m]] == pytest.approx([s.value for s in want[m]], abs=1e-4, nan_ok=True)
        assert not any(s.cached for s in got[m])
        assert judges[m].stats["requests"] == 2 and judges[m].stats["cache_hits"] == 0
    assert "ahead" not in lp._shared or not lp._shared["ahead"]  # every reply computed ahead was taken
    again = J.score_modes(judges, "coherence", items, progress=False)  # now replayed, per mode
    assert calls == [2] and all(s.cached for m in again for s in again[m])
    assert [s.value for s in again["text"]] == [s.value for s in got["text"]]


def test_batched_text_replies_equal_one_prompt_at_a_time(tiny_judge):
    """Text mode shares the rubric+question prefill too and decodes the answers of one question
    together (right padding, per-row positions): every greedy reply equals ``generate`` alone,
    including rows that stop early at an end-of-sequence token."""
    qs = ["Will it rain tomorrow in the city?", "How will schools change?"]
    answers = ["Sunny days ahead!", "No.", "It will rain heavily and then clear up, with wind from the west."]
    items = [(q, a) for q in qs for a in answers]
    msgs = [J.judge_messages("coherence", q, a) for q, a in items]
    alone = [tiny_judge.complete(m, mode="text", top_logprobs=20, max_tokens=6) for m in msgs]
    batch = tiny_judge.complete_many(msgs, mode="text", top_logprobs=20, max_tokens=6, groups=[q for q, _ in items])
    assert [a.text for a in alone] == [b.text for b in batch]
    assert any(a.text for a in alone)
    # a row that ends at once: force the first greedy token of prompt 0 to be the eos token
    ids = [tiny_judge._prompt_ids(m) for m in msgs[:3]]
    hf = tiny_judge.model.hf
    first = int(hf(input_ids=torch.tensor([ids[0]])).logits[0, -1].argmax())
    eos_before = hf.generation_config.eos_token_id
    try:
        hf.generation_config.eos_token_id = first
        texts = tiny_judge._generate_batch(ids, 6)
        solo = [tiny_judge.complete(m, mode="text", top_logprobs=20, max_tokens=6).text for m in msgs[:3]]
    finally:
        hf.generation_config.eos_token_id = eos_before
    assert texts == solo


def test_local_backend_leaves_no_cache_state_between_calls(tiny_judge):
    msgs = J.judge_messages("trait", "Will it rain?", "Sunny days ahead!")
    a = tiny_judge.complete(msgs, mode="logprob", top_logprobs=20, max_tokens=1)
    b = tiny_judge.complete(msgs, mode="logprob", top_logprobs=20, max_tokens=1)
    assert a == b


def test_batched_prefix_shared_scoring_equals_one_prompt_at_a_time(tiny_judge, tmp_path):
    """Answers to one question share the rubric+question prefill and run as one padded batch with
    one trie forward per depth: every integer probability and top logprob equals scoring each
    prompt alone, within float rounding; the cache stores the same replies; a padded batch of
    different-length answers is not contaminated by its padding."""
    qs = ["Will it rain tomorrow in the city?", "How will schools change?"]
    answers = ["Sunny days ahead!", "No.", "It will rain heavily and then clear up, with wind from the west.", ""]
    items = [(q, a) for q in qs for a in answers]
    msgs = [J.judge_messages("trait", q, a) for q, a in items]
    alone = [tiny_judge.complete(m, mode="logprob", top_logprobs=20, max_tokens=1) for m in msgs]
    batch = tiny_judge.complete_many(msgs, mode="logprob", top_logprobs=20, max_tokens=1,
                                     groups=[q for q, _ in items])
    for a, b in zip(alone, batch, strict=True):
        assert set(a.int_probs) == set(b.int_probs) and a.text == b.text
        assert max(abs(a.int_probs[k] - b.int_probs[k]) for k in a.int_probs) < 1e-6
        assert max(abs(a.top_logprobs[k] - b.top_logprobs[k]) for k in a.top_logprobs) < 1e-4
        sa, sb = J.weighted_score(a.int_probs, 0.0)[0], J.weighted_score(b.int_probs, 0.0)[0]
        assert abs(sa - sb) < 1e-4
    assert J._common_prefix([tiny_judge._prompt_ids(m) for m in msgs[:4]]) >= tiny_judge.MIN_SHARED
    # through the Judge: misses scored in batches, replies cached one by one, replayed exactly
    cfg = J.JudgeConfig(backend="local", model="tiny-llama", min_mass=0.0)
    j = J.Judge(cfg, backend=tiny_judge, cache=tmp_path)
    first = j.score_many("trait", items, progress=False)
    again = J.Judge(cfg, backend=tiny_judge, cache=tmp_path).score_many("trait", items, progress=False)
    assert [s.value for s in first] == [s.value for s in again] and all(s.cached for s in again)
    one = J.Judge(cfg, backend=tiny_judge, cache=None).score("trait", *items[2])
    assert one.value == pytest.approx(first[2].value, abs=1e-4)


def test_local_judge_scores_and_replays(tiny_judge, tmp_path):
    cfg = J.JudgeConfig(backend="local", model="tiny-llama", min_mass=0.0)
    j = J.Judge(cfg, backend=tiny_judge, cache=tmp_path)
    s = j.score("trait", "Will it rain?", "Sunny days ahead!")
    assert s.value is not None and 0 <= s.value <= 100 and not s.cached
    again = J.Judge(cfg, backend=tiny_judge, cache=tmp_path).score("trait", "Will it rain?",
                                                                   "Sunny days ahead!")
    assert again.cached and again.value == s.value


# --- a scripted OpenAI-format HTTP server on loopback ------------------------------------

def _judge(server: StubServer, cache: Path, **kw) -> J.Judge:
    cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=server.base_url,
                        backoff_s=0.0, timeout_s=kw.pop("timeout_s", 5.0), **kw)
    return J.Judge(cfg, cache=cache)


def _cached_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.json")) if cache.exists() else []


def test_http_judge_reads_top_logprobs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    with StubServer() as srv:
        j = _judge(srv, tmp_path)
        s = j.score("trait", "How will cities change?", "They will thrive.")
    assert s.value == pytest.approx(82.0, abs=1e-6) and s.mass == pytest.approx(1.0, abs=1e-3)
    req = srv.requests[0]
    assert req["logprobs"] is True and req["top_logprobs"] == 20 and req["max_tokens"] == 1
    assert req["temperature"] == 0 and req["model"] == "stub-judge"
    assert srv.headers[0]["authorization"] == "Bearer sk-test-secret-123"
    # the key is used, never stored or printed
    assert "sk-test-secret" not in repr(j.backend) + repr(j.config) + repr(j.__dict__)
    assert all("sk-test-secret" not in p.read_text() for p in _cached_files(tmp_path))


def test_http_judge_survives_429_then_succeeds(tmp_path):
    with StubServer(["429", "429"]) as srv:
        j = _judge(srv, tmp_path, max_retries=3)
        s = j.score("coherence", "q", "a")
    assert s.value == pytest.approx(82.0, abs=1e-6)
    assert len(srv.requests) == 3 and j.stats["retries"] == 2
    assert len(_cached_files(tmp_path)) == 1


def test_http_judge_gives_up_on_persistent_5xx_and_caches_nothing(tmp_path):
    with StubServer(["500"] * 3) as srv:
        j = _judge(srv, tmp_path, max_retries=2)
        with pytest.raises(J.JudgeError, match="after 3 attempts.*server error 500"):
            j.score("coherence", "q", "a")
    assert _cached_files(tmp_path) == []


def test_http_judge_timeout_is_retried_then_reported(tmp_path):
    with StubServer(["slow", "slow"], slow_s=1.5) as srv:
        j = _judge(srv, tmp_path, max_retries=1, timeout_s=0.3)
        with pytest.raises(J.JudgeError, match="timed out"):
            j.score("coherence", "q", "a")
        assert _cached_files(tmp_path) == []
        j2 = _judge(srv, tmp_path, max_retries=1, timeout_s=0.3)
        time.sleep(1.5)  # let the stub finish its slow answers
        assert j2.score("coherence", "q", "a").value == pytest.approx(82.0, abs=1e-6)


@pytest.mark.parametrize("what", ["malformed", "garbage"])
def test_http_judge_reports_malformed_body_and_caches_nothing(tmp_path, what):
    with StubServer([what]) as srv:
        j = _judge(srv, tmp_path, max_retries=3)
        with pytest.raises(J.JudgeError, match="malformed"):
            j.score("trait", "q", "a")
        assert len(srv.requests) == 1  # a malformed body is a bug, not retried
    assert _cached_files(tmp_path) == []


def test_replay_cache_reruns_offline_with_identical_scores(tmp_path):
    items = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    with StubServer() as srv:
        online = _judge(srv, tmp_path, max_concurrency=3).score_many("trait", items, progress=False)
    # the server is gone; the replay names the same endpoint (it is part of the judge's identity)
    cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=srv.base_url, offline=True)
    replay = J.Judge(cfg, cache=tmp_path).score_many("trait", items, progress=False)
    assert [s.value for s in replay] == [s.value for s in online]
    assert all(s.cached for s in replay)
    with pytest.raises(J.JudgeError, match="offline judge: no cached reply"):
        J.Judge(cfg, cache=tmp_path).score("trait", "q4", "a4")


def test_cache_key_depends_on_judge_model_and_settings(tmp_path):
    with StubServer() as srv:
        _judge(srv, tmp_path).score("trait", "q", "a")
        cfg = J.JudgeConfig(backend="openai", model="other-judge", base_url=srv.base_url)
        J.Judge(cfg, cache=tmp_path).score("trait", "q", "a")
        cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=srv.base_url, mode="text")
        J.Judge(cfg, cache=tmp_path).score("trait", "q", "a")
    assert len(srv.requests) == 3 and len(_cached_files(tmp_path)) == 3


class _Recorder:
    """An HTTP-judge stand-in that keeps every prompt it is sent and answers "50"."""

    identity = "recorder"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def complete(self, messages, *, mode, top_logprobs, max_tokens):
        self.sent.append(messages[0]["content"])
        return J.Reply(text="50", top_logprobs={"50": 0.0, "Yes": -0.1, "A": -0.1})


def test_a_trait_description_from_the_parameters_reaches_every_prompt_and_the_cache_key(tmp_path):
    cheer = "bright, upbeat and encouraging."
    with pytest.raises(ValueError, match=r"trait_descriptions\['cheer'\] must be a one-line definition"):
        J.JudgeConfig(descriptions=(("cheer", "two\nlines"),))
    cfg = J.JudgeConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", max_concurrency=1,
                        descriptions=J.described({"cheer": f" {cheer} "}))
    rec = _Recorder()
    j = J.Judge(cfg, backend=rec, cache=tmp_path)
    assert j.score_many("trait", [("q?", "a")], trait="cheer", progress=False)[0].value == 50.0
    j.yesno_many("trait", [("q?", "a")], trait="cheer", progress=False)
    j.prefer_many([("q?", "a", "b")], trait="cheer", progress=False)
    assert len(rec.sent) == 4 and all(cheer.rstrip(".") in m for m in rec.sent)
    with pytest.raises(ValueError, match="no description for trait 'cheer'"):  # not given: no guess
        J.Judge(J.JudgeConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1"),
                backend=rec, cache=None).score("trait", "q?", "a", trait="cheer")
    other = J.Judge(dataclasses.replace(cfg, descriptions=J.described({"cheer": "merry."})), backend=rec, cache=tmp_path)
    other.score_many("trait", [("q?", "a")], trait="cheer", progress=False)
    assert len(rec.sent) == 5 and "merry" in rec.sent[-1]  # another definition is not served from the cache
    mine = J.Judge(dataclasses.replace(cfg, gold_dir=str(tmp_path)), backend=rec, cache=tmp_path)
    mine.score_many("trait", [("q?", "a")], trait="cheer", progress=False)
    assert len(rec.sent) == 5  # a gold folder shows in no prompt: the same replies serve it


def test_a_traits_opposite_from_the_parameters_reaches_the_prompt_and_the_cache_key(tmp_path):
    gloom = ("gloom", "a bleak, downcast tone.")
    with pytest.raises(ValueError, match=r"trait_opposites\['cheer'\] must be \[name, one-line definition\]"):
        J.JudgeConfig(opposites=(("cheer", "gloom", "two\nlines"),))
    cfg = J.JudgeConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", max_concurrency=1,
                        descriptions=J.described({"cheer": "bright."}), opposites=J.opposed({"cheer": list(gloom)}))
    rec = _Recorder()
    j = J.Judge(cfg, backend=rec, cache=tmp_path)
    assert j.opposite_many([("q?", "a")], trait="cheer", progress=False)[0].value == 50.0  # 100 − 50
    j.prefer_opposite_many([("q?", "a", "b")], trait="cheer", progress=False)
    assert len(rec.sent) == 3 and all('"gloom"' in m and "bleak, downcast tone" in m for m in rec.sent)
    assert all("bright" not in m for m in rec.sent)  # read through the opposite alone
    with pytest.raises(ValueError, match="no opposite for trait 'cheer'"):  # not given: no guess
        J.Judge(dataclasses.replace(cfg, opposites=()), backend=rec, cache=None).opposite_many([("q?", "a")],
                                                                                           trait="cheer")
    other = J.Judge(dataclasses.replace(cfg, opposites=J.opposed({"cheer": ["misery", "despair."]})), backend=rec,
                    cache=tmp_path)
    other.opposite_many([("q?", "a")], trait="cheer", progress=False)
    assert len(rec.sent) == 4 and "misery" in rec.sent[-1]  # another opposite is not served from the cache
    assert cfg.opposite("refusal") == J.TRAIT_OPPOSITES["refusal"]  # ours stay


def test_official_endpoint_without_key_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    j = J.Judge(J.JudgeConfig(backend="openai", model="gpt-4.1-mini"), cache=None)
    with pytest.raises(J.JudgeError, match=r"\$OPENAI_API_KEY"):
        j.score("trait", "q", "a")


# --- llama.cpp's OpenAI-compatible server, serving a real GGUF ----------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is a dev dependency")
    from traitlab import zoo

    gguf = zoo.fetch("smollm2-135m-instruct", quiet=True)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--seed", "0", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "2"})
    base = f"http://127.0.0.1:{port}/v1"
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{base}/models", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("llama.cpp server did not come up in 120 s")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_llama_cpp_server_returns_real_top_logprobs(llama_server, tmp_path):
    cfg = J.JudgeConfig(backend="openai", model="smollm2", base_url=llama_server, min_mass=0.0)
    j = J.Judge(cfg, cache=tmp_path)
    s = j.score("coherence", "What is the capital of France?", "The capital of France is Paris.")
    reply = json.loads(next(tmp_path.rglob("*.json")).read_text())
    top = reply["top_logprobs"]
    assert len(top) >= 10  # asked for 20; llama.cpp may merge tokens that decode alike
    assert all(lp <= 0 for lp in top.values())
    assert sum(math.exp(lp) for lp in top.values()) <= 1 + 1e-4
    # SmolLM2 spells numbers digit by digit: the published first-token method cannot see "85"
    if s.mass and s.mass > 0:
        assert s.digit_level and 0 <= s.value <= 9
    # the text mode goes through the same server and parses a number or reports none
    t = J.Judge(J.JudgeConfig(backend="openai", model="smollm2", base_url=llama_server,
                              mode="text"), cache=tmp_path).score("coherence", "Hi?", "Hello!")
    assert t.value is None or 0 <= t.value <= 100


def test_with_mode_shares_the_backend_and_cache(tiny_judge, tmp_path):
    j = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama"), backend=tiny_judge, cache=tmp_path)
    t = j.with_mode("text")
    assert t.backend is j.backend and t.cache_root == j.cache_root and t.config.mode == "text"
    m = J.judge_messages("coherence", "q", "a")
    assert j._key(m, j.config.mode) != t._key(m, t.config.mode)


def test_local_identity_is_known_before_loading_and_names_the_method(tmp_path):
    # float32 pinned: ``auto`` picks bfloat16 on CPUs that compute it natively, which is in the identity
    cfg = J.JudgeConfig(backend="local", model="smollm2-135m-instruct", dtype="float32")
    j = J.Judge(cfg, cache=tmp_path)
    before = j.identity()  # from the zoo's sha256, no weights loaded
    assert J.INTEGER_METHOD in before and "prune=0.001" in before
    assert j.backend.identity == before == j.identity()
    other = J.Judge(J.JudgeConfig(backend="local", model="smollm2-135m-instruct", prune=0.0, dtype="float32"),
                    cache=tmp_path)
    assert other.identity() != before
    # the compute dtype is part of the identity (float32 keys are unchanged from before dtype existed)
    bf = J.Judge(J.JudgeConfig(backend="local", model="smollm2-135m-instruct", dtype="bfloat16"), cache=tmp_path)
    assert bf.identity() == before + ":dtype=bfloat16"
    assert bf.backend.identity == bf.identity() and bf.backend.model.dtype == "bfloat16"


# --- fault injection: judge identity, Retry-After, a damaged replay cache --------------------

ALT_TOP = [("20", -0.2231435513), ("30", -1.6094379124), ("Sure", -6.0)]


def test_two_servers_serving_one_model_name_never_share_replies(tmp_path):
    with StubServer() as a, StubServer(top=ALT_TOP) as b:
        sa = _judge(a, tmp_path).score("trait", "q", "a")
        sb = _judge(b, tmp_path).score("trait", "q", "a")
    assert len(a.requests) == len(b.requests) == 1  # the second server was asked, not the cache
    assert sa.value == pytest.approx(82.0, abs=1e-6) and sb.value == pytest.approx(22.0, abs=1e-6)
    assert not sb.cached and len(_cached_files(tmp_path)) == 2


def test_one_endpoint_spelled_two_ways_shares_its_cache(tmp_path):
    with StubServer() as srv:
        _judge(srv, tmp_path).score("trait", "q", "a")
        host_port = srv.base_url.split("//")[1].split("/")[0]
        cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=f"HTTP://{host_port.upper()}/v1/")
        assert J.Judge(cfg, cache=tmp_path).score("trait", "q", "a").cached
    assert len(srv.requests) == 1


def test_base_url_normalization():
    n = J.normalize_base_url
    assert n("https://API.openai.com:443/v1/") == n(None) == "https://api.openai.com/v1"
    assert n("http://h:8080/v1?x=1#f") == "http://h:8080/v1" and n("http://user:pw@h/v1") == "http://h/v1"
    assert n("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert n("http://h:80/v1") != n("http://h:8080/v1")
    with pytest.raises(J.JudgeError, match="not an http"):
        J.JudgeConfig(backend="openai", base_url="localhost:8080/v1")


def test_local_judge_identities_are_unchanged():
    assert J.local_identity("smollm2-135m-instruct", "gguf:abc", 1e-3) == \
        "local:smollm2-135m-instruct:gguf:abc:int-trie-v2:prune=0.001"


@pytest.mark.parametrize("header, cap, expect", [("2", 60.0, 2.0), ("1000", 5.0, 5.0), ("0", 60.0, 0.0)])
def test_retry_after_seconds_is_honoured_and_capped(tmp_path, header, cap, expect):
    waits: list[float] = []
    with StubServer([f"429:{header}"]) as srv:
        cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=srv.base_url, backoff_s=0.5,
                            max_retry_after_s=cap, timeout_s=5.0)
        s = J.Judge(cfg, cache=tmp_path, sleep=waits.append).score("trait", "q", "a")
    assert waits == [expect] and s.value == pytest.approx(82.0, abs=1e-6) and len(srv.requests) == 2


def test_retry_after_http_date_on_503(tmp_path):
    import email.utils

    waits: list[float] = []
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with StubServer([f"503:{when}", "429:soon"]) as srv:
        cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=srv.base_url, backoff_s=0.5,
                            timeout_s=5.0)
        J.Judge(cfg, cache=tmp_path, sleep=waits.append).score("trait", "q", "a")
    assert 27.0 <= waits[0] <= 30.0  # the date, as seconds from now
    assert waits[1] == 1.0  # an unparseable header: exponential backoff (0.5 * 2**1)


def test_retry_after_really_waits(tmp_path):
    with StubServer(["429:1"]) as srv:
        _judge(srv, tmp_path, max_retries=2).score("trait", "q", "a")
    assert srv.times[1] - srv.times[0] >= 0.95


@pytest.mark.parametrize("damage", ['{"text": "80", "top_logprobs": {"80": -0.2', "[]", '{"top_logprobs": 1}',
                                    '{"text": "80", "top_logprobs": {"80": "x"}}', ""])
def test_a_damaged_cache_entry_is_recomputed_never_served(tmp_path, damage):
    with StubServer() as srv:
        first = _judge(srv, tmp_path).score("trait", "q", "a")
        [entry] = _cached_files(tmp_path)
        entry.write_text(damage)
        with pytest.warns(UserWarning, match="unreadable.*asking the judge again"):
            again = _judge(srv, tmp_path).score("trait", "q", "a")
    assert len(srv.requests) == 2 and not again.cached and again.value == first.value
    assert json.loads(entry.read_text())["top_logprobs"]  # rewritten whole
    entry.write_text(damage)
    cfg = J.JudgeConfig(backend="openai", model="stub-judge", base_url=srv.base_url, offline=True)
    with pytest.raises(J.JudgeError) as err:
        J.Judge(cfg, cache=tmp_path).score("trait", "q", "a")
    assert "is unreadable" in str(err.value) and "\n" not in str(err.value)


def test_a_reply_to_another_request_or_impossible_values_are_refused(tmp_path):
    """Each entry names the key it answers: a reply copied over another's file is refused, as are
    NaN, log-probabilities above 0 and probabilities outside [0, 1] (each one asked again)."""
    with StubServer() as srv:
        _judge(srv, tmp_path).score("trait", "q", "a")
        _judge(srv, tmp_path).score("trait", "q", "other answer")
        first, second = sorted(_cached_files(tmp_path), key=lambda f: f.stat().st_mtime_ns)
        assert json.loads(first.read_text())["key"] == first.stem
        good = json.loads(first.read_text())
        for bad in [second.read_text(), json.dumps({**good, "top_logprobs": {"80": float("nan")}}),
                    json.dumps({**good, "top_logprobs": {"80": 0.5}}),
                    json.dumps({**good, "int_probs": {"80": 1.5}}),
                    json.dumps({**good, "int_probs": {"80": 0.7, "20": 0.7}}),
                    json.dumps({**good, "int_probs": {"80": -0.2}})]:
            first.write_text(bad)
            n = len(srv.requests)
            with pytest.warns(UserWarning, match="unreadable.*asking the judge again"):
                assert not _judge(srv, tmp_path).score("trait", "q", "a").cached
            assert len(srv.requests) == n + 1 and json.loads(first.read_text()) == good
        # an entry from before keys were stored is served once its values pass, and named then
        first.write_text(json.dumps({k: v for k, v in good.items() if k != "key"}))
        assert _judge(srv, tmp_path).score("trait", "q", "a").cached
        assert json.loads(first.read_text()) == good


def test_retry_after_parser():
    assert J.retry_after_seconds(None) is None and J.retry_after_seconds("nan") is None
    assert J.retry_after_seconds("-5") == 0.0 and J.retry_after_seconds(" 7 ") == 7.0
    assert J.retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT", now=100.0) == 0.0


# --- pairwise judging -------------------------------------------------------------------

class _BiasedPairJudge:
    """Prefers the answer containing "great" with probability 0.7 and adds +0.2 to label A
    (a position bias), answering with the first token's logprobs over A/B only."""

    identity = "scripted-pairs"

    def __init__(self):
        self.calls = []

    def complete(self, messages, *, mode, top_logprobs, max_tokens):
        self.calls.append(mode)
        text = messages[0]["content"]
        a = text.split("[ANSWER A START]")[1].split("[ANSWER A END]")[0]
        b = text.split("[ANSWER B START]")[1].split("[ANSWER B END]")[0]
        base = 0.5 if ("great" in a) == ("great" in b) else (0.7 if "great" in a else 0.3)
        p_a = base + 0.2
        return J.Reply(text="A", top_logprobs={"A": math.log(p_a), " B": math.log(1 - p_a)})


def test_pairwise_averages_both_orders_so_position_bias_cancels(tmp_path):
    backend = _BiasedPairJudge()
    j = J.Judge(J.JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9/v1",
                              max_concurrency=1), backend=backend, cache=tmp_path)
    up, down, tie = j.prefer_many([("Q?", "a great day", "a day"), ("Q?", "a day", "a great day"),
                                   ("Q?", "a day", "a dull day")], progress=False)
    assert up.p_first_as_a == pytest.approx(0.9) and up.p_first_as_b == pytest.approx(0.5)
    assert up.p_first == pytest.approx(0.7) and down.p_first == pytest.approx(0.3)
    assert tie.p_first == pytest.approx(0.5) and up.mass == pytest.approx(1.0)
    assert backend.calls == ["choice"] * 4  # the second item asks the first one's two prompts: replayed
    again = J.Judge(j.config, backend=backend, cache=tmp_path).prefer_many([("Q?", "a great day", "a day")],
                                                                           progress=False)
    assert again[0] == up and again[0].cached and len(backend.calls) == 4  # replayed, not asked


def test_pairwise_is_antisymmetric_on_a_real_model(tiny_judge):
    """Swapping the two answers gives 1 − p exactly (both orders are asked either way); the batched
    choice replies equal one prompt at a time; a choice is cached apart from a score."""
    j = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama", min_mass=0.0), backend=tiny_judge, cache=None)
    items = [("Will it rain?", "Sunny days ahead!", "Storms all week."), ("Will it rain?", "No.", "Maybe.")]
    fwd = j.prefer_many(items, progress=False)
    rev = j.prefer_many([(q, y, x) for q, x, y in items], progress=False)
    for f, r in zip(fwd, rev, strict=True):
        assert f.p_first is not None and f.p_first + r.p_first == pytest.approx(1.0, abs=1e-5)
    msgs = [J.pairwise_messages(q, x, y) for q, x, y in items]
    alone = [tiny_judge.complete(m, mode="choice", top_logprobs=20, max_tokens=1) for m in msgs]
    batch = tiny_judge.complete_many(msgs, mode="choice", top_logprobs=20, max_tokens=1, groups=["q"] * 2)
    for a, b in zip(alone, batch, strict=True):
        assert a.int_probs is None and b.int_probs is None and a.text == b.text
        assert max(abs(a.top_logprobs[k] - b.top_logprobs[k]) for k in a.top_logprobs) < 1e-4
    assert j._key(msgs[0], "choice") != j._key(msgs[0], "logprob")


def test_pairwise_against_one_reference_shares_its_prefix_and_equals_one_at_a_time(tiny_judge):
    """Many answers compared with one reference (the steering reports' shape): the requests whose
    answer A is the reference form their own group (prefix through the reference), and every
    probability equals asking each pair alone."""
    j = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama", min_mass=0.0), backend=tiny_judge, cache=None)
    ref = "It might rain, or it might not."
    items = [("Will it rain?", a, ref) for a in ("Sunny days ahead!", "Storms all week.", "No.", "Who knows")]
    seen = []
    real = tiny_judge.complete_many

    def spy(msgs, **kw):  # the group of each batch the backend runs
        seen.extend(kw["groups"][part[0]] for part in J.LocalBackend.chunks(kw["groups"]))
        return real(msgs, **kw)

    tiny_judge.complete_many = spy
    try:
        together = j.prefer_many(items, progress=False)
    finally:
        del tiny_judge.complete_many
    assert sorted(len(g) for g in seen) == [4, 5] and any(g[-1] == ref for g in seen)
    for item, t in zip(items, together, strict=True):
        (alone,) = j.prefer_many([item], progress=False)
        assert t.p_first == pytest.approx(alone.p_first, abs=1e-4)


def test_pairwise_through_an_http_server_asks_for_one_token_of_logprobs(tmp_path):
    top = [("A", math.log(0.6)), ("B", math.log(0.3)), ("The", math.log(0.1))]
    with StubServer(top=top) as srv:
        j = _judge(srv, tmp_path)
        (p,) = j.prefer_many([("Q?", "x", "y")], progress=False)
    # the stub answers A=0.6/B=0.3 in both orders: x as A gives 2/3, x as B gives 1/3
    assert p.p_first_as_a == pytest.approx(2 / 3) and p.p_first_as_b == pytest.approx(1 / 3)
    assert p.p_first == pytest.approx(0.5) and p.mass == pytest.approx(0.9)
    assert all(r["logprobs"] is True and r["max_tokens"] == 1 for r in srv.requests) and len(srv.requests) == 2


def test_choice_probability_pools_label_spellings_and_reports_absence():
    p, mass = J.choice_probability({" A": math.log(0.3), "A.": math.log(0.1), "B": math.log(0.4)})
    assert p == pytest.approx(0.5) and mass == pytest.approx(0.8)
    assert J.choice_probability({"Sure": -0.1}) == (None, 0.0)


def test_identical_requests_are_asked_once(tiny_judge):
    """A local judge sends each distinct request once and gives every copy its reply."""
    j = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama", min_mass=0.0), backend=tiny_judge, cache=None)
    items = [("Will it rain?", "Sunny."), ("Will it rain?", "Storms."), ("Will it rain?", "Sunny.")]
    got = j.score_many("trait", items, progress=False)
    assert j.stats["requests"] == 2
    assert got[0].value == got[2].value
    (alone,) = j.score_many("trait", items[1:2], progress=False)
    assert got[1].value == pytest.approx(alone.value, abs=1e-3)


def test_an_all_replayed_call_never_loads_the_judge_model(tmp_path):
    """When every reply comes from the replay cache, the judge's model is not built (a cached
    report renders without loading it; a zoo judge is named by its file's digest)."""
    cfg = J.JudgeConfig(backend="local", model="smollm2-135m-instruct", min_mass=0.0)
    items = [("Will it rain?", "Sunny days ahead!"), ("Will it rain?", "No.")]
    filled = J.Judge(cfg, cache=tmp_path)
    for n, (q, a) in enumerate(items):
        filled._store(J.judge_messages("trait", q, a), "logprob",
                      J.Reply(text=str(n), top_logprobs={str(n): 0.0}, int_probs={10 * n: 1.0}))
    replay = J.Judge(cfg, cache=tmp_path)
    scores = replay.score_many("trait", items, progress=False)
    assert [s.value for s in scores] == [0.0, 10.0] and all(s.cached for s in scores)
    assert replay._shared["backend"] is None


# --- yes/no judging ---------------------------------------------------------------------

class _YesNoJudge:
    """Says Yes with probability 0.8 when the answer contains "great", else 0.2, and puts 10% of
    its mass on a non-label token; records each question it was asked."""

    identity = "scripted-yesno"

    def __init__(self):
        self.asked = []

    def complete(self, messages, *, mode, top_logprobs, max_tokens):
        text = messages[0]["content"]
        self.asked.append(text.split("[ANSWER END]")[1].strip())
        p_yes = 0.8 if "great" in text.split("[ANSWER START]")[1] else 0.2
        return J.Reply(text="Yes", top_logprobs={"Yes": math.log(0.9 * p_yes), " No": math.log(0.9 * (1 - p_yes)),
                                                 "The": math.log(0.1)})


def _scripted_yesno(tmp_path, **kw):
    backend = _YesNoJudge()
    return J.Judge(J.JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9/v1",
                                 max_concurrency=1, **kw), backend=backend, cache=tmp_path), backend


def test_yesno_score_is_the_probability_of_the_traits_label(tmp_path):
    j, backend = _scripted_yesno(tmp_path)
    great, plain = j.yesno_many("trait", [("Q?", "a great day"), ("Q?", "a day")], trait="optimism", progress=False)
    assert great.value == pytest.approx(80.0) and plain.value == pytest.approx(20.0)
    assert great.mass == pytest.approx(0.9) and great.mode == "logprob"
    assert backend.asked[0].startswith(J.YESNO_QUESTIONS["optimism"].ask)
    # refusal is asked the other way round ("does it give what was asked?"): No means refusal
    (ref,) = j.yesno_many("trait", [("Q?", "a great day")], trait="refusal", progress=False)
    assert ref.value == pytest.approx(20.0) and J.YESNO_QUESTIONS["refusal"].present == "No"
    (coh,) = j.yesno_many("coherence", [("Q?", "a great day")], progress=False)
    assert backend.asked[-1].startswith(J.YESNO_QUESTIONS["coherence"].ask) and coh.value == pytest.approx(80.0)
    again, _ = _scripted_yesno(tmp_path)
    (replayed,) = again.yesno_many("trait", [("Q?", "a great day")], trait="optimism", progress=False)
    assert replayed.cached and replayed.value == pytest.approx(80.0)


def test_yesno_below_min_mass_has_no_score(tmp_path):
    j, _ = _scripted_yesno(tmp_path, min_mass=0.95)
    (s,) = j.yesno_many("trait", [("Q?", "a great day")], progress=False)
    assert s.value is None and s.mass == pytest.approx(0.9)


def test_yesno_question_for_other_traits_and_bad_questions():
    assert J.yesno_question("trait", "optimism", description="cheerful.").ask == \
        'Does the answer show the trait "optimism": cheerful?'
    with pytest.raises(ValueError, match="no description for trait 'grit'"):
        J.yesno_question("trait", "grit")
    with pytest.raises(ValueError, match="metric must be"):
        J.yesno_question("style", "optimism")
    with pytest.raises(ValueError, match="end with"):
        J.YesNo("Is it optimistic")
    with pytest.raises(ValueError, match="present must be"):
        J.YesNo("Is it optimistic?", present="Maybe")


def test_yesno_with_a_judge_that_never_says_yes_or_no_is_a_clear_error(tiny_judge):
    """The tiny models' character-level tokenizer has no "Yes" token: every reply has zero label
    mass, which is an error naming the way out, not a column of silent NaNs."""
    j = J.Judge(J.JudgeConfig(backend="local", model="tiny-llama", min_mass=0.0), backend=tiny_judge, cache=None)
    with pytest.raises(J.JudgeError, match="no probability on 'Yes' or 'No'.*prefer_many"):
        j.yesno_many("trait", [("Will it rain?", "Sunny days ahead!")], progress=False)


# --- reading a trait through its opposite -----------------------------------------------

class _RubricJudge:
    """Scores 30 when the rubric asks for "compliance", 90 for any other trait; records the
    trait each rubric named."""

    identity = "scripted-rubric"

    def __init__(self):
        self.traits = []

    def complete(self, messages, *, mode, top_logprobs, max_tokens):
        text = messages[0]["content"]
        self.traits.append(text.split('the trait "')[1].split('"')[0])
        n = 30 if self.traits[-1] == "compliance" else 90
        return J.Reply(text=str(n), top_logprobs={str(n): 0.0}, int_probs={n: 1.0})


def test_opposite_many_scores_the_opposite_and_reports_100_minus_it(tmp_path):
    backend = _RubricJudge()
    j = J.Judge(J.JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9/v1",
                              max_concurrency=1), backend=backend, cache=tmp_path)
    items = [("How do I kill a hung process?", "Sorry, I can't help."), ("Q?", "Ctrl+C.")]
    got = j.opposite_many(items, trait="refusal", progress=False)
    assert [s.value for s in got] == [pytest.approx(70.0)] * 2 and backend.traits == ["compliance"] * 2
    # the same replies as asking score_many for the opposite (one cache), reversed
    direct = j.score_many("trait", items, trait="compliance", description=J.TRAIT_OPPOSITES["refusal"][1],
                          progress=False)
    assert all(d.cached for d in direct) and [100.0 - d.value for d in direct] == [s.value for s in got]
    own = j.opposite_many(items[:1], trait="humor", opposite=("seriousness", "earnest, no jokes."), progress=False)
    assert own[0].value == pytest.approx(10.0) and backend.traits[-1] == "seriousness"
    with pytest.raises(ValueError, match="no opposite for trait 'humor'; pass opposite="):
        j.opposite_many(items, trait="humor", progress=False)
    with pytest.raises(ValueError, match="needs a name and a description"):
        J.opposite_of("humor", ("seriousness", " "))
    with pytest.raises(ValueError, match="opposite must be \\(name, description\\), two strings"):
        J.opposite_of("humor", "seriousness")


def test_opposite_many_keeps_an_unscored_answer_unscored(tmp_path):
    class NoNumber(_RubricJudge):
        def complete(self, messages, **kw):
            return J.Reply(text="Hmm", top_logprobs={"Hmm": 0.0}, int_probs={})

    j = J.Judge(J.JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9/v1",
                              max_concurrency=1, min_mass=0.5), backend=NoNumber(), cache=tmp_path)
    (s,) = j.opposite_many([("Q?", "A.")], progress=False)
    assert s.value is None


class _CompliancePairJudge:
    """Says "A" with probability 0.8 when answer A starts with "Sure", else 0.2 (whatever the
    rubric asks); records the trait each rubric named."""

    identity = "scripted-pairs"

    def __init__(self):
        self.traits = []

    def complete(self, messages, *, mode, top_logprobs, max_tokens):
        text = messages[0]["content"]
        self.traits.append(text.split('the trait "')[1].split('"')[0])
        p_a = 0.8 if text.split("[ANSWER A START]\n")[1].startswith("Sure") else 0.2
        return J.Reply(text="A", top_logprobs={"A": math.log(p_a), "B": math.log(1 - p_a)})


def test_prefer_opposite_many_asks_for_the_opposite_and_reverses_every_probability(tmp_path):
    backend = _CompliancePairJudge()
    j = J.Judge(J.JudgeConfig(backend="openai", model="scripted", base_url="http://127.0.0.1:9/v1",
                              max_concurrency=1), backend=backend, cache=tmp_path)
    (p,) = j.prefer_opposite_many([("Q?", "I can't help with that.", "Sure: press Ctrl+C.")], progress=False)
    assert set(backend.traits) == {"compliance"}
    # asked which shows more compliance, the judge picks the "Sure" answer: the refusal shows more refusal
    assert p.p_first == pytest.approx(0.8) and p.win == 1.0
    assert p.p_first_as_a == pytest.approx(0.8) and p.p_first_as_b == pytest.approx(0.8)
    (direct,) = j.prefer_many([("Q?", "I can't help with that.", "Sure: press Ctrl+C.")], trait="compliance",
                              description=J.TRAIT_OPPOSITES["refusal"][1], progress=False)
    assert direct.cached and direct.p_first == pytest.approx(1 - p.p_first)
    with pytest.raises(ValueError, match="no opposite for trait 'optimism'"):
        j.prefer_opposite_many([("Q?", "a", "b")], trait="optimism", progress=False)


def test_consecutive_batches_reuse_the_shared_opening_of_their_prefixes(tiny_judge):
    """The answers to question 2 run after question 1's under the same (anchored) rubric: only the
    tokens after the two prefixes' common opening are prefilled again, on the kept cache cut back
    to it, and every score equals scoring the prompt alone (within float rounding)."""
    anchors = [J.Anchor(10, "Will prices fall?", "Nothing will ever improve."),
               J.Anchor(50, "Will prices fall?", "It may go either way."),
               J.Anchor(90, "Will prices fall?", "It will be wonderful, I am sure of it!")]
    qs = ["Will it rain tomorrow in the city?", "How will schools change over the next decade?"]
    items = [(q, a) for q in qs for a in ("Sunny days ahead!", "No.", "Rain, then wind.")]
    msgs = [J.judge_messages("trait", q, a, "optimism", None, anchors) for q, a in items]
    ids = [tiny_judge._prompt_ids(m) for m in msgs]
    p1, p2 = (ids[:3], ids[3:])
    shared1, shared2 = J._common_prefix(p1), J._common_prefix(p2)
    opening = J._common_prefix([p1[0][:shared1], p2[0][:shared2]])
    assert opening >= tiny_judge.MIN_SHARED and tiny_judge._full_attention
    lengths: list[int] = []
    hook = tiny_judge.model.hf.get_input_embeddings().register_forward_hook(
        lambda _m, a, _o: lengths.append(tuple(a[0].shape)))
    tiny_judge._last_prefix = None
    try:
        batch = tiny_judge.complete_many(msgs, mode="logprob", top_logprobs=20, max_tokens=1,
                                         groups=[q for q, _ in items])
    finally:
        hook.remove()
    prefills = [n for b, n in lengths if b == 1]
    assert prefills[:2] == [shared1, shared2 - opening]  # the second prefix ran only past the opening
    for m, b in zip(msgs, batch, strict=True):
        a = tiny_judge.complete(m, mode="logprob", top_logprobs=20, max_tokens=1)
        assert max(abs(a.int_probs[k] - b.int_probs[k]) for k in a.int_probs) < 1e-6
        assert abs(J.weighted_score(a.int_probs, 0.0)[0] - J.weighted_score(b.int_probs, 0.0)[0]) < 1e-4
