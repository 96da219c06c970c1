"""Prefill in length groups: the same KV cache as the whole padded batch, fewer padded tokens,
and the same answers and scores in the code that uses it (the dial's generation, the sweep,
patching)."""

from __future__ import annotations

import pytest
import torch

from traitlab import steering
from traitlab.activations import _pad_batch
from traitlab.prefill import length_groups, prefill
from traitlab.sweep import last_token_sweep, naive_sweep

LONG = "Tell me, in as much detail as you can manage, every single thing you know about " * 3
PROMPTS = [LONG, "Hi", "How do I bake bread today?", LONG + " and the sea", "Why?"]


def _batch(model, texts):
    return _pad_batch([model.chat.encode(t) for t in texts], "left", model.tokenizer.pad_token_id)


def _forwards(model):
    """Record the [rows, width] of every forward (a hook on the input embeddings)."""
    shapes: list[tuple[int, int]] = []
    handle = model.hf.get_input_embeddings().register_forward_hook(
        lambda _m, a, _o: shapes.append(tuple(a[0].shape)))
    return shapes, handle


@pytest.mark.parametrize("lengths,keep", [([213, 50, 48, 109, 40], 0.75), ([5, 5, 5], 0.75), ([9, 1, 3, 9, 2], 0.5),
                                          ([10, 8, 7, 6], 1.0), ([7], 0.3)])
def test_length_groups_partition_rows_longest_first_within_keep(lengths, keep):
    groups = length_groups(lengths, keep)
    assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
    firsts = [lengths[g[0]] for g in groups]
    assert firsts == sorted(firsts, reverse=True)
    for g in groups:
        assert lengths[g[0]] == max(lengths[r] for r in g)
        assert all(lengths[r] >= keep * lengths[g[0]] for r in g)
    for a, b in zip(groups[:-1], groups[1:], strict=True):  # a group is closed only by a row too short for it
        assert lengths[b[0]] < keep * lengths[a[0]]


@pytest.mark.parametrize("keep", [0.0, -1, 1.5])
def test_length_groups_reject_a_keep_outside_0_1(keep):
    with pytest.raises(ValueError, match="keep must be in"):
        length_groups([3, 2], keep)


def test_prefill_equals_the_whole_batch_and_pays_only_for_its_groups(tiny):
    batch = _batch(tiny, PROMPTS)
    real = batch["attention_mask"].bool()
    lengths = real.sum(1).tolist()
    with torch.no_grad():
        whole = tiny.hf(**batch, use_cache=True).past_key_values
    shapes, handle = _forwards(tiny)
    try:
        cache = prefill(tiny.hf, batch)
    finally:
        handle.remove()
    groups = length_groups(lengths)
    sliding = any(type(layer).__name__ != "DynamicLayer" for layer in whole.layers)
    if sliding:  # a window is not the whole prompt: the batch runs whole
        assert shapes[-1] == tuple(batch["input_ids"].shape)
        return
    assert len(groups) > 1
    assert shapes == [(len(g), lengths[g[0]]) for g in groups]
    assert sum(r * w for r, w in shapes) < batch["input_ids"].numel()
    for a, b in zip(cache.layers, whole.layers, strict=True):
        assert a.keys.shape == b.keys.shape and a.values.shape == b.values.shape
        for r in range(len(PROMPTS)):
            torch.testing.assert_close(a.keys[r][:, real[r]], b.keys[r][:, real[r]], rtol=0, atol=1e-5)
            torch.testing.assert_close(a.values[r][:, real[r]], b.values[r][:, real[r]], rtol=0, atol=1e-5)
            assert not a.keys[r][:, ~real[r]].any()  # padding is zeros, and masked


def test_one_group_or_a_row_of_padding_only_is_the_plain_forward(tiny):
    one = _batch(tiny, ["Hello there", "Hello here"])
    empty = _batch(tiny, [LONG, "Hi"])
    empty["attention_mask"][1] = 0  # a row with no real token (a one-token prompt's prefix)
    for batch in (one, empty):
        shapes, handle = _forwards(tiny)
        try:
            prefill(tiny.hf, batch)
        finally:
            handle.remove()
        assert shapes == [tuple(batch["input_ids"].shape)]


@pytest.mark.parametrize("batch_size", [3, 64])
def test_dial_generation_over_prompts_of_very_different_lengths_equals_the_full_prefill(tiny, batch_size):
    ex = [tiny.chat.encode(t) for t in PROMPTS]
    g = torch.Generator().manual_seed(1)
    deltas = 4 * torch.randn(3, tiny.d_model, generator=g)
    deltas[0] = 0
    shared = steering.generate(tiny, ex, max_new_tokens=5, layer=1, deltas=deltas, batch_size=batch_size)
    full = steering._generate_full(tiny, ex, max_new_tokens=5, layer=1, deltas=deltas, batch_size=batch_size,
                                   progress=False, sampling=steering.Sampling.parse(None))
    assert shared == full


def test_sweep_over_prompts_of_very_different_lengths_keeps_the_callers_order(tiny):
    ex = [tiny.chat.encode(t) for t in PROMPTS]
    deltas = 3 * torch.randn(4, tiny.d_model, generator=torch.Generator().manual_seed(2))
    reduce = lambda lg: lg[:, 7] - lg.logsumexp(-1)  # noqa: E731
    fast = last_token_sweep(tiny, ex, 1, deltas, reduce, batch_size=2, max_rows=4)
    slow = naive_sweep(tiny, ex, 1, deltas, reduce, batch_size=1)  # one prompt per forward: no padding at all
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-4)
