"""The SFT / DPO chain on tiny models: exact log-probs, losses that move, atomic stages."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab import chain
from traitlab.chat import ChatFormat
from traitlab.models import load_model

PAIRS = [("Say hi", "Hi there!"), ("Count to three", "One, two, three."),
         ("Name a colour", "Blue."), ("Greet me", "Hello, friend.")]


@pytest.fixture
def fresh():
    return load_model("tiny-llama", seed=3)


def test_answer_logprobs_equal_full_forward(tiny):
    fmt = ChatFormat.plain(tiny.tokenizer)
    ex = [chain.encode_pair(fmt, q, a, 64) for q, a in PAIRS]
    ids, attn, ans = chain.answer_batch(ex, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        lp, n = chain.answer_logprobs(tiny.hf, ids, attn, ans)
    for i, e in enumerate(ex):
        with torch.no_grad():
            logits = tiny.hf(input_ids=torch.tensor([e.ids])).logits[0].float()
        full = torch.log_softmax(logits, -1)
        want = sum(float(full[t - 1, e.ids[t]]) for t in range(e.prompt_len, len(e.ids)))
        assert float(lp[i]) == pytest.approx(want, abs=1e-4)
        assert int(n[i]) == len(e.ids) - e.prompt_len


def test_encode_pair_appends_eos_and_truncates(tiny):
    fmt = ChatFormat.plain(tiny.tokenizer)
    e = chain.encode_pair(fmt, "Hi", "Hello", 200)
    assert e.ids[-1] == tiny.tokenizer.eos_token_id
    assert len(chain.encode_pair(fmt, "Hi", "Hello " * 50, 30).ids) == 30
    with pytest.raises(ValueError, match="max_len"):
        chain.encode_pair(fmt, "a long instruction " * 10, "x", 20)


def test_sft_lowers_loss(fresh):
    cfg = chain.ChainConfig(sft_epochs=30, batch_size=4, sft_lr=1e-2, warmup_frac=0.0,
                            train_embeddings=True)
    curve = chain.sft(fresh, PAIRS, cfg, progress=False)
    assert len(curve) == 30 and (curve.stage == "sft").all()
    assert curve.loss.iloc[-3:].mean() < 0.5 * curve.loss.iloc[:3].mean()
    assert not any(p.requires_grad for p in fresh.hf.parameters()) and not fresh.hf.training


def test_sft_keeps_embeddings_frozen_by_default(fresh):
    emb = fresh.hf.get_input_embeddings().weight.clone()
    head = fresh.hf.get_output_embeddings().weight.clone()
    layer = fresh.hf.model.layers[0].mlp.down_proj.weight.clone()
    chain.sft(fresh, PAIRS, chain.ChainConfig(sft_epochs=2, batch_size=4, sft_lr=1e-2), progress=False)
    assert torch.equal(fresh.hf.get_input_embeddings().weight, emb)
    assert torch.equal(fresh.hf.get_output_embeddings().weight, head)
    assert not torch.equal(fresh.hf.model.layers[0].mlp.down_proj.weight, layer)


def test_dpo_starts_at_log2_and_learns_the_preference(fresh):
    triples = [(q, a, "no no no no") for q, a in PAIRS]
    cfg = chain.ChainConfig(dpo_epochs=10, batch_size=4, dpo_lr=2e-3, dpo_beta=0.5, warmup_frac=0.0)
    curve = chain.dpo(fresh, triples, cfg, progress=False)
    assert curve.loss.iloc[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert curve.reward_margin.iloc[0] == pytest.approx(0.0, abs=1e-5)
    assert curve.reward_margin.iloc[-1] > 0 and curve.reward_accuracy.iloc[-1] == 1.0
    assert curve.loss.iloc[-1] < curve.loss.iloc[0]


def test_stage_is_saved_atomically_and_reloads(fresh, tmp_path):
    folder = tmp_path / "stage"
    curve = chain.sft(fresh, PAIRS[:2], chain.ChainConfig(sft_epochs=1, batch_size=2), progress=False)
    chain.save_stage(fresh, folder, {"stage": "sft"}, curve)
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temp folder left
    record, back = chain.load_stage(folder)
    assert record == {"stage": "sft"} and len(back) == 1
    again = load_model(str(folder))
    ids = torch.tensor([fresh.chat.encode("Hi").ids])
    with torch.no_grad():
        assert torch.allclose(again.hf(input_ids=ids).logits, fresh.hf(input_ids=ids).logits, atol=1e-5)
    assert chain.load_stage(tmp_path / "never") is None


def test_config_validation():
    with pytest.raises(ValueError, match="warmup_frac"):
        chain.ChainConfig(warmup_frac=1.0)
    with pytest.raises(ValueError, match="learning rates"):
        chain.ChainConfig(dpo_beta=0)


def test_chain_record_tolerances_and_golden_check():
    import numpy as np
    import pandas as pd

    from traitlab import records
    from traitlab.experiments import model_chain as mcn

    P = mcn.Params(n_train=4, n_eval=3)
    held = pd.DataFrame({"instruction": [q for q, _ in PAIRS[:3]], "teacher": [a for _, a in PAIRS[:3]],
                         "base": ["no", "no no", "nothing"]})
    scores = mcn.heldout({"base": "tiny-llama"}, held, P.config())
    assert scores.loc["base", "teacher_nll_se"] > 0  # SE over the 3 held-out instructions
    sft_loss = [3.0, 2.6, 2.5, 2.2, 2.3, 2.0, 1.9, 2.0]
    curves = pd.DataFrame({"stage": ["sft"] * 8 + ["dpo"] * 2, "step": list(range(8)) + [0, 1],
                           "loss": sft_loss + [math.log(2), 0.6], "reward_accuracy": [np.nan] * 8 + [0.0, 1.0]})
    train = pd.DataFrame({"teacher": ["a", "b", "c", "d"], "base": ["a", "x", "y", "z"]})
    built = chain.BuiltChain({"base": "tiny-llama"}, curves, {"sft": 1.0}, train, {})
    rec = mcn.record(P, built, scores)
    assert rec.claims == ()  # the chain is infrastructure: the transfer report checks the seed
    assert (rec["sft_steps"].value, rec["sft_steps"].tolerance) == (8, 0)
    assert rec["dpo_pairs"].value == 3 and rec["dpo_pairs"].tolerance == 1
    last = rec["sft_loss_last5"]
    sd = np.diff(sft_loss).std(ddof=1) / np.sqrt(2)
    assert last.value == pytest.approx(np.mean(sft_loss[-5:]))
    assert last.tolerance == pytest.approx(3 * sd / np.sqrt(5))  # 3 × step-to-step SD / √window
    assert rec["dpo_loss_last5"].tolerance == pytest.approx(3 * abs(0.6 - math.log(2)) / np.sqrt(2) / np.sqrt(2))
    nll = rec["base_teacher_nll"]
    assert nll.tolerance == pytest.approx(3 * scores.loc["base", "teacher_nll_se"], rel=1e-6)
    assert records.compare(rec, rec) == []
    moved = curves.assign(loss=curves.loss.where(curves.stage != "sft", curves.loss - 0.5))
    problems = records.compare(rec, mcn.record(P, chain.BuiltChain({}, moved, {}, train, {}), scores))
    assert [p.split(":")[0] for p in problems] == ["model_chain.sft_loss_first5", "model_chain.sft_loss_last5"]
