"""Judge-free coherence measures: exact counts, and perplexity equal to a plain forward."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab import textstats as T
from traitlab.models import load_model


def test_repetition_and_distinct_count_ngrams_exactly():
    loop = "I think it will be good. I think it will be good. I think it will be good."
    # 18 words, 16 trigrams, the first 6 fresh, the other 10 repeats
    assert T.repetition(loop, 3) == pytest.approx(10 / 16)
    assert T.distinct(loop, 2) == pytest.approx(6 / 17)  # 17 bigrams, 6 distinct ("good i" among them)
    fresh = "Prices for sensors keep dropping, so helpers will get cheaper."
    assert T.repetition(fresh, 3) == 0.0 and T.distinct(fresh, 2) == 1.0
    assert T.repetition("Yes.", 3) == 0.0 and T.distinct("", 2) == 1.0  # nothing to count
    assert T.words("Don't STOP—now!") == ["don't", "stop", "now"]
    with pytest.raises(ValueError, match="n must be"):
        T.distinct("a b", 0)


def test_a_loop_without_spaces_counts_as_one_as_loops_with_spaces_do():
    """Answers of randomly steered models seen in the transfer report: one unit written again and
    again with no space, or symbols only. Read as one long word they had no word pair, so distinct-2
    was 1.0 (a fresh answer) and they passed the coherence floors."""
    for loop in ["гот" * 32, "3" * 32, "viet" * 32, "@ " * 32, "綴" * 24, "\u200b" * 56]:
        assert T.distinct(loop, 2) <= 1 / 20 and T.repetition(loop, 3) > 0.9, loop
    spaced = T.distinct("viet " * 32, 2)
    assert T.distinct("viet" * 32, 2) == spaced == 1 / 31   # the same loop, with or without spaces
    assert T.words("Outlookvietvietvietviet now") == ["outlook"] + ["viet"] * 4 + ["now"]
    assert T.distinct("Using tools such as" + "كتر" * 8, 2) == pytest.approx(5 / 11)
    # doubled letters, short runs and numbers are words, not loops
    for fresh in ["The bookkeeper saw www.example.org", "Call 0170 222 0000 or 1000000 today", "Hmmm, fine."]:
        assert T.distinct(fresh, 2) == 1.0 and T.words(fresh) == [w.lower() for w in T._WORD.findall(fresh)]


def test_similarity_is_the_share_of_matched_words():
    """2 × matched words / all words, on lower-cased words: punctuation and case do not count."""
    assert T.similarity("It will be fine.", "it will BE fine") == 1.0
    assert T.similarity("yes", "no") == 0.0 and T.similarity("", "") == 1.0 and T.similarity("a", "") == 0.0
    # "i", "know", "the", "answer" match (4 of 5 + 6 words) → 8 / 11
    assert T.similarity("I do not know the answer", "I don't know the answer") == pytest.approx(8 / 11)
    assert T.similarity("a b c d", "d c b a") == pytest.approx(2 / 8)  # order matters: one word in sequence


def test_stats_sees_a_loop_that_fresh_text_does_not_show():
    loop, fresh = T.stats("good good good good good good"), T.stats("The weather will clear by noon.")
    assert loop.repetition > 0.7 and loop.distinct2 < 0.3
    assert fresh.repetition == 0.0 and fresh.distinct2 == 1.0 and fresh.words == 6


def test_perplexity_equals_a_plain_forward_and_ignores_padding():
    m = load_model("tiny-qwen2")
    items = [("Will it rain?", "Sunny days ahead, I think."), ("Hi?", "Hello."), ("Hi?", "")]
    batched = T.perplexity(m, items, batch_size=3, cache=False)
    alone = [T.perplexity(m, [it], cache=False)[0] for it in items]
    for q, a in items[:2]:
        e = m.chat.encode(q, a)
        with torch.no_grad():
            logits = m.hf(input_ids=torch.tensor([e.ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        nll = -sum(float(lp[t - 1, e.ids[t]]) for t in range(e.prompt_len, len(e.ids))) / (len(e.ids) - e.prompt_len)
        i = items.index((q, a))
        assert batched[i] == pytest.approx(math.exp(nll), rel=1e-4)
        assert alone[i] == pytest.approx(batched[i], rel=1e-4)
    assert math.isnan(batched[2])


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_answers_sharing_a_prompt_score_as_whole_sequences_do(arch):
    """``answer_nll`` runs each prompt once and its answers on copies of its cache: the same sums as
    one forward over each whole sequence (``chain.answer_logprobs``), at any batch size, with
    empty answers, a one-token prompt and answers to different prompts mixed."""
    from traitlab.chain import answer_batch, answer_logprobs
    from traitlab.chat import Encoded

    m = load_model(arch)
    qa = [("Will it rain?", "Sunny days ahead, I think."), ("Hi?", "Hello."), ("Will it rain?", ""),
          ("Will it rain?", "No."), ("Hi?", "Hello there, how are you doing today my friend?"),
          ("Will it rain?", "Storms all week, sadly, and then more storms after that.")]
    ex = [m.chat.encode(q, a) for q, a in qa] + [Encoded((5, 6, 7, 8), 1), Encoded((5, 9), 1)]
    pad = m.tokenizer.pad_token_id or 0
    want = []
    for e in ex:
        with torch.no_grad():
            t, c = answer_logprobs(m.hf, *answer_batch([e], pad))
        want.append((-float(t[0]), int(c[0])))
    for bs in (1, 2, 8):
        got = {}
        for part, sums in T.answer_nll(m, ex, batch_size=bs):
            assert len(part) <= bs
            got.update(zip(part, sums, strict=True))
        assert sorted(got) == list(range(len(ex)))
        for i, (nll, n) in enumerate(want):
            assert got[i][1] == n and got[i][0] == pytest.approx(nll, rel=1e-5, abs=1e-5)


def test_perplexity_cache_serves_each_answer_once_and_never_a_damaged_or_foreign_entry(tmp_cache, monkeypatch):
    """Stored values come back bit for bit without a forward; another model, question or answer
    is another key; a damaged entry is recomputed with a warning, never served."""
    import json

    from traitlab import nllcache

    m = load_model("tiny-qwen2")
    items = [("Will it rain?", "Sunny days ahead, I think."), ("Hi?", "Hello."), ("Hi?", "")]
    forwards = []  # answers scored by the model, per call
    real = T.answer_nll
    monkeypatch.setattr(T, "answer_nll", lambda model, ex, **kw: forwards.append(len(ex)) or real(model, ex, **kw))
    first = T.perplexity(m, items, batch_size=2)
    assert forwards == [3] and len(list(tmp_cache.glob("nll/*/*.json"))) == 3
    again = T.perplexity(m, items)
    assert forwards == [3, 0] and again[:2] == first[:2] and math.isnan(again[2])  # exact, no forward
    assert first == pytest.approx(T.perplexity(m, items, cache=False), rel=1e-4, nan_ok=True)
    forwards.clear()
    T.perplexity(m, [("Hi!", "Hello."), ("Hi?", "Hello!")])  # a changed question, a changed answer
    T.perplexity(load_model("tiny-qwen2", seed=1), items[:1])  # other weights
    T.perplexity(load_model("tiny-qwen2", dtype="bfloat16"), items[:1])  # another dtype
    assert forwards == [2, 1, 1]
    n_files = len(list(tmp_cache.glob("nll/*/*.json")))

    class Unnamed:  # a model nothing identifies: scored, never stored
        hf, chat, tokenizer = m.hf, m.chat, m.tokenizer

    assert T.perplexity(Unnamed(), [("Brand new?", "Yes.")]) == T.perplexity(m, [("Brand new?", "Yes.")], cache=False)
    assert len(list(tmp_cache.glob("nll/*/*.json"))) == n_files
    # damage: bad JSON, a count that does not match the answer, another entry's key
    e = m.chat.encode(*items[1])
    path = nllcache.entry_path(m, e)
    good = json.loads(path.read_text())
    for bad in ("{not json", json.dumps({**good, "count": good["count"] + 1}), json.dumps({**good, "key": "x"}),
                json.dumps({**good, "nll": -1.0})):
        path.write_text(bad)
        forwards.clear()
        with pytest.warns(UserWarning, match="unreadable"):
            assert T.perplexity(m, [items[1]]) == pytest.approx([first[1]], rel=1e-4)
        stored = json.loads(path.read_text())  # recomputed and stored again
        assert forwards == [1] and stored["key"] == good["key"] and stored["count"] == good["count"]


def test_fit_coherence_recovers_an_exact_line_and_clips_to_the_scale():
    import numpy as np
    import pandas as pd

    m = pd.DataFrame({"repetition": [0.0, 0.5, 0.1, 0.0, 0.3, 0.9],
                      "distinct2": [1.0, 0.6, 0.9, 0.95, 0.7, 0.2],
                      "log_ppl": [3.0, 2.5, 7.0, 3.5, 4.0, 2.0]})
    y = 40 - 30 * m.repetition + 50 * m.distinct2 - 4 * m.log_ppl      # exactly linear labels
    f = T.fit_coherence(m, y)
    assert f.features == T.TEXT_FIT_FEATURES and f.n == 6 and f.r == pytest.approx(1.0)
    assert f.weights == pytest.approx((-30.0, 50.0, -4.0), abs=1e-9) and f.intercept == pytest.approx(40.0)
    assert f.predict(m) == pytest.approx(y.to_numpy())
    far = pd.DataFrame({"repetition": [0.0, 1.0], "distinct2": [5.0, 0.0], "log_ppl": [0.0, 20.0]})
    assert f.predict(far).tolist() == [100.0, 0.0]                     # clipped to 0–100
    assert "least squares on 6 labelled answers" in f.text()
    # a row with a missing measure is left out of the fit, not a NaN weight
    m2 = pd.concat([m, pd.DataFrame({"repetition": [np.nan], "distinct2": [0.5], "log_ppl": [3.0]})], ignore_index=True)
    assert T.fit_coherence(m2, [*y, 50.0]).n == 6


def test_fit_coherence_refuses_what_it_cannot_fit():
    import pandas as pd

    m = pd.DataFrame({"distinct2": [1.0, 0.5, 0.9], "log_ppl": [2.0, 3.0, 4.0]})
    with pytest.raises(KeyError, match="repetition"):
        T.fit_coherence(m, [90, 40, 60])
    with pytest.raises(ValueError, match="at least 4 labelled answers"):
        T.fit_coherence(m, [90, 40, 60], features=("distinct2", "log_ppl"))
    with pytest.raises(ValueError, match="3 rows of measures but 2"):
        T.fit_coherence(m, [90, 40], features=("distinct2",))
    f = T.fit_coherence(pd.concat([m, m]), [90, 40, 60, 80, 30, 50], features=("distinct2",))
    with pytest.raises(KeyError, match="lack distinct2"):
        f.predict(pd.DataFrame({"log_ppl": [1.0]}))


def test_relevance_is_the_log_perplexity_the_question_saves():
    import numpy as np
    import pandas as pd

    m = load_model("tiny-qwen2")
    d = pd.DataFrame({"question": ["Will it rain?", "Hi?", "Hi?"],
                      "answer": ["Sunny days ahead.", "Hello.", "Sunny days ahead."]}, index=[7, 3, 5])
    out = T.coherence_measures(m, d, relevance=True, batch_size=2)
    assert list(out.index) == [7, 3, 5] and list(out.columns) == ["distinct2", "log_ppl", "relevance"]
    with_q = np.log(T.perplexity(m, list(zip(d.question, d.answer, strict=True)), cache=False))
    without = np.log(T.perplexity(m, [("", a) for a in d.answer], cache=False))
    assert out.log_ppl.to_numpy() == pytest.approx(with_q, rel=1e-4)
    assert out.relevance.to_numpy() == pytest.approx(without - with_q, abs=1e-4)
    # one answer after two questions: one free log-perplexity, two relevances
    assert out.relevance[7] != pytest.approx(out.relevance[5], abs=1e-6)
    plain = T.coherence_measures(m, d)
    assert list(plain.columns) == ["distinct2", "log_ppl"] and plain.log_ppl.to_numpy() == pytest.approx(with_q, rel=1e-4)
    with pytest.raises(ValueError, match="needs context=True"):
        T.coherence_measures(m, d, context=False, relevance=True)
