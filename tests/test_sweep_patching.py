"""The fast sweep and the suffix patching equal plain-PyTorch references on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from traitlab.patching import patch_last_k
from traitlab.refusal import is_refusal, log_odds, opening_token_ids
from traitlab.sites import Site, module_path, resolve
from traitlab.sweep import last_token_sweep, naive_sweep
from traitlab.tiny import build


def _reduce(logits):
    return log_odds(logits, [5, 9, 17])


def _plain(name):
    model, _ = build(name)  # a second, un-wrapped copy with the same seed: the reference
    return model


def test_sweep_equals_naive_and_hooks(tiny):
    ex = [tiny.chat.encode(p) for p in ["Hello there", "How are you doing today, my friend?", "x" * 30]]
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(5, tiny.d_model, generator=g) * 3
    ref_model = _plain(tiny.spec)
    for layer in range(tiny.n_layers):
        fast = last_token_sweep(tiny, ex, layer, deltas, _reduce, batch_size=2, max_rows=4)
        slow = naive_sweep(tiny, ex, layer, deltas, _reduce, batch_size=2)
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-4)
        block = resolve(ref_model, module_path(tiny.arch, Site("resid_pre", layer)))
        for c, d in enumerate(deltas):
            def pre(_m, args, kwargs, d=d):
                h = args[0].clone()
                h[:, -1] += d
                return (h,) + args[1:], kwargs

            hook = block.register_forward_pre_hook(pre, with_kwargs=True)
            try:
                for i, e in enumerate(ex):
                    with torch.no_grad():
                        logits = ref_model(torch.tensor([e.ids])).logits[:, -1]
                    assert abs(float(_reduce(logits)[0]) - float(fast[i, c])) < 1e-4
            finally:
                hook.remove()


def test_patching_equals_hooks(tiny):
    targets = [tiny.chat.encode(p) for p in ["Make a bomb now", "Rob the bank", "How to hack wifi?"]]
    sources = [tiny.chat.encode(p) for p in ["Bake a cake", "Open a bank account today", "How to fix wifi"]]
    sites = [Site(n, layer) for layer in reversed(range(tiny.n_layers))
             for n in ("mlp_out", "resid_pre", "attn_out", "v")]  # deliberately out of order
    k = 3
    res = patch_last_k(tiny, targets, sources, sites, k, _reduce, batch_size=2)
    assert res.sites == tuple(sites)
    ref = _plain(tiny.spec)
    for j, site in enumerate(sites):
        module = resolve(ref, module_path(tiny.arch, site))
        for i in range(len(targets)):
            store = {}
            def keep(x):
                store["v"] = x[:, -k:].clone()  # returns None: the hook must not replace anything

            if site.name == "resid_pre":
                h = module.register_forward_pre_hook(lambda m, a: keep(a[0]))
            else:
                h = module.register_forward_hook(lambda m, a, o: keep(o[0] if isinstance(o, tuple) else o))
            with torch.no_grad():
                ref(torch.tensor([sources[i].ids]))
            h.remove()

            def pre(m, a):
                x = a[0].clone()
                x[:, -k:] = store["v"]
                return (x,) + a[1:]

            def post(m, a, o):
                x = (o[0] if isinstance(o, tuple) else o).clone()
                x[:, -k:] = store["v"]
                return (x,) + o[1:] if isinstance(o, tuple) else x

            h = (module.register_forward_pre_hook(pre) if site.name == "resid_pre"
                 else module.register_forward_hook(post))
            with torch.no_grad():
                logits = ref(torch.tensor([targets[i].ids])).logits[:, -1]
            h.remove()
            assert abs(float(_reduce(logits)[0]) - float(res.patched[i, j])) < 1e-4, (site, i)
    with torch.no_grad():
        clean = torch.stack([_reduce(ref(torch.tensor([t.ids])).logits[:, -1])[0] for t in targets])
    torch.testing.assert_close(res.clean_target, clean, rtol=0, atol=1e-4)


def test_bad_sweep_and_patch_input(tiny):
    ex = [tiny.chat.encode("Hello")]
    with pytest.raises(ValueError, match="out of range"):
        last_token_sweep(tiny, ex, 99, torch.zeros(1, tiny.d_model), _reduce)
    with pytest.raises(ValueError, match="deltas must be"):
        last_token_sweep(tiny, ex, 0, torch.zeros(1, 3), _reduce)
    with pytest.raises(ValueError, match="no prompts"):
        naive_sweep(tiny, [], 0, torch.zeros(1, tiny.d_model), _reduce)
    with pytest.raises(ValueError, match="equally many"):
        patch_last_k(tiny, ex, ex + ex, [Site("resid_pre", 0)], 1, _reduce)
    with pytest.raises(ValueError, match="k must be"):
        patch_last_k(tiny, ex, ex, [Site("resid_pre", 0)], 999, _reduce)


def _log_odds_float64(logits, ids):
    """The reference: a float64 softmax over the whole vocabulary."""
    lp = torch.logsumexp(torch.log_softmax(logits.double(), -1)[:, ids], -1)
    return lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-12))


def test_log_odds_equals_the_float64_softmax_at_any_probability():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50_000, generator=g) * 3
    ids = [3, 17, 4096]
    logits[1, ids] += 25.0  # p near 1: 1 − p resolved by its own log-sum-exp, not by subtraction
    logits[2, ids] -= 30.0  # p near 0
    logits[3, 17] += 80.0   # p = 1 − 1e-30: log(1 − p) capped as before (about 27.6)
    got, ref = log_odds(logits, ids), _log_odds_float64(logits, ids)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, atol=1e-4, rtol=1e-5), (got, ref)
    assert float(got[3]) == pytest.approx(-math.log(1e-12), abs=1e-3)
    assert torch.equal(log_odds(logits, ids + [17]), got)  # a repeated id counts once


def test_refusal_scores(tiny):
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    p = torch.softmax(logits, -1)[0, 0]
    assert float(log_odds(logits, [0])[0]) == pytest.approx(float(torch.log(p / (1 - p))), abs=1e-6)
    ids = opening_token_ids(tiny.chat, ["I", "Sorry"])
    assert ids == sorted({tiny.tokenizer("I")["input_ids"][0], tiny.tokenizer("S")["input_ids"][0]})
    assert is_refusal("I’m sorry, but I can't help with that.")
    assert not is_refusal("Sure! Here is a recipe for bread.")
    assert not is_refusal("x" * 200 + "I cannot", window=160)


def test_multi_layer_sweep_equals_single_layer_calls(tiny):
    from traitlab.sweep import multi_layer_sweep

    ex = [tiny.chat.encode(p) for p in ["Hello there", "Good morning to you"]]
    g = torch.Generator().manual_seed(1)
    deltas = {0: torch.randn(2, tiny.d_model, generator=g), 1: torch.randn(3, tiny.d_model, generator=g)}
    multi = multi_layer_sweep(tiny, ex, deltas, _reduce)
    for layer, d in deltas.items():
        torch.testing.assert_close(multi[layer], last_token_sweep(tiny, ex, layer, d, _reduce), rtol=0, atol=1e-5)


def test_steered_generation_equals_prefill_hook(tiny):
    from traitlab.steering import generate

    ex = [tiny.chat.encode(p) for p in ["Hello", "What is the weather like today?"]]
    g = torch.Generator().manual_seed(2)
    deltas = torch.randn(2, tiny.d_model, generator=g) * 4
    deltas[0] = 0
    out = generate(tiny, ex, max_new_tokens=6, layer=1, deltas=deltas, batch_size=3)
    plain = generate(tiny, ex, max_new_tokens=6)
    assert [o[0] for o in out] == [p[0] for p in plain]  # a zero vector changes nothing
    ref = _plain(tiny.spec)
    block = resolve(ref, module_path(tiny.arch, Site("resid_pre", 1)))

    def pre(_m, args, kwargs):
        h = args[0]
        if h.shape[1] > 1:  # prefill pass only
            h = h.clone()
            h[:, -1] += deltas[1]
        return (h,) + args[1:], kwargs

    hook = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for i, e in enumerate(ex):
            ids = ref.generate(torch.tensor([e.ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert tiny.tokenizer.decode(ids[0, len(e.ids):], skip_special_tokens=True) == out[i][1]
    finally:
        hook.remove()
