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
    ids, attn, ans = chain._batch(ex, tiny.tokenizer.pad_token_id)
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
