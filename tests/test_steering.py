"""Multi-site steering during generation, perturbation ratios and the coefficient search.

The nnsight steering is checked token for token against a reference written with plain
PyTorch hooks on the same tiny model.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from traitlab import steering
from traitlab.sites import Site, module_path, resolve
from traitlab.steering import (
    Steer,
    activation_norms,
    coef_for_ratio,
    generate_steered,
    per_site_vectors,
    perturbation_ratio,
    same_vector,
    search_coefficient,
    steered,
    steered_logits,
)

PROMPTS = ["Tell me about the sea.", "Hi", "What is two plus two, in words?"]


@contextmanager
def hooked(model, steers, positions):
    """Reference steering with PyTorch hooks (what generate_steered must reproduce)."""
    handles = []
    for s in steers:
        mod = resolve(model.hf, module_path(model.arch, s.site))
        delta = s.delta

        def add(x, delta=delta):
            x = x.clone()
            if positions == "all":
                x += delta
            else:
                x[:, -1] += delta
            return x

        if s.site.name == "resid_pre":
            def pre(_m, args, kwargs, add=add):
                if args:
                    return (add(args[0]), *args[1:]), kwargs
                kwargs["hidden_states"] = add(kwargs["hidden_states"])
                return args, kwargs
            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            def post(_m, _args, out, add=add):
                return (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out)
            handles.append(mod.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _reference(model, examples, steers, positions, n):
    tok = model.tokenizer
    out = []
    with hooked(model, steers, positions):
        for e in examples:  # one at a time: no padding, so no ambiguity about positions
            ids = torch.tensor([e.ids])
            g = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
            out.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("positions", ["response", "all"])
def test_steered_logits_match_hook_reference_and_batching(tiny, positions):
    g = torch.Generator().manual_seed(1)
    examples = [tiny.chat.encode(p) for p in PROMPTS]
    steers = [Steer("resid_post@1", torch.randn(tiny.d_model, generator=g), 2.5),
              Steer("attn_out@0", torch.randn(tiny.d_model, generator=g), 1.5)]
    ours = steered_logits(tiny, examples, steers, positions=positions, batch_size=2)
    with hooked(tiny, steers, positions), torch.no_grad():
        ref = torch.stack([tiny.hf(input_ids=torch.tensor([e.ids])).logits[0, -1] for e in examples])
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steered_logits(tiny, examples, steers, positions=positions, batch_size=1),
                               ours, rtol=1e-4, atol=1e-4)
    plain = steered_logits(tiny, examples, [])
    assert (plain - ours).abs().max() > 1e-2  # the steers moved the logits
    with pytest.raises(ValueError, match="no prompts"):
        steered_logits(tiny, [], steers)


@pytest.mark.parametrize("positions", ["response", "all"])
def test_steered_generation_matches_hook_reference(tiny, positions):
    g = torch.Generator().manual_seed(0)
    examples = [tiny.chat.encode(p) for p in PROMPTS]
    steers = [Steer(f"resid_pre@{tiny.n_layers - 1}", torch.randn(tiny.d_model, generator=g), 3.0),
              Steer("mlp_out@0", torch.randn(tiny.d_model, generator=g), 2.0)]
    ours = generate_steered(tiny, examples, steers, max_new_tokens=6, positions=positions,
                            batch_size=2)
    assert ours == _reference(tiny, examples, steers, positions, 6)
    plain = generate_steered(tiny, examples, [], max_new_tokens=6)
    assert ours != plain  # the steer changed something
    # and nothing was left behind on the model
    assert generate_steered(tiny, examples, [], max_new_tokens=6) == plain


def test_multi_layer_helpers(tiny):
    v = torch.ones(tiny.d_model)
    steers = same_vector(v, ["resid_pre@0", "resid_pre@1"], 2.0)
    assert [str(s.site) for s in steers] == ["resid_pre@0", "resid_pre@1"]
    assert all(torch.equal(s.delta, 2 * v) for s in steers)
    per = per_site_vectors({"resid_pre@0": v, Site("attn_out", 1): -v}, 0.5)
    assert torch.equal(per[1].delta, -0.5 * v)


def test_steer_validation(tiny):
    v = torch.ones(tiny.d_model)
    examples = [tiny.chat.encode("Hi")]
    with pytest.raises(ValueError, match="out of range"):
        generate_steered(tiny, examples, [Steer("resid_pre@99", v, 1.0)], max_new_tokens=2)
    with pytest.raises(ValueError, match="dims"):
        generate_steered(tiny, examples, [Steer("resid_pre@0", torch.ones(3), 1.0)], max_new_tokens=2)
    with pytest.raises(ValueError, match="twice"):
        generate_steered(tiny, examples, same_vector(v, ["resid_pre@0", "resid_pre@0"], 1.0),
                         max_new_tokens=2)
    with pytest.raises(ValueError, match="positions"):
        generate_steered(tiny, examples, [], max_new_tokens=2, positions="prompt")
    with pytest.raises(ValueError, match="'v'"):
        Steer("v@0", v, 1.0)
    with pytest.raises(ValueError, match="no prompts"):
        generate_steered(tiny, [], [], max_new_tokens=2)


def test_perturbation_ratio_round_trip():
    c = coef_for_ratio(0.7, vector_norm=3.0, activation_norm=42.0)
    assert c == pytest.approx(9.8)
    assert perturbation_ratio(c, 3.0, 42.0) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        coef_for_ratio(0.5, 0.0, 1.0)


def test_activation_norms_match_hidden_states(tiny):
    examples = [tiny.chat.encode(p, "Sure, here you go.") for p in PROMPTS]
    table = activation_norms(tiny, examples, ["resid_pre@1"])
    expected = []
    for e in examples:
        with torch.no_grad():
            hs = tiny.hf(input_ids=torch.tensor([e.ids]), output_hidden_states=True).hidden_states[1][0]
        expected.append(hs[e.prompt_len - 1:].norm(dim=-1).mean())
    assert table["resid_pre@1"] == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)


def test_coefficient_search_finds_best_coherent_coefficient():
    calls = []

    def evaluate(c):
        calls.append(c)
        return min(100.0, 20 * c), 100.0 - 10 * c  # coherence 50 at c = 5

    r = search_coefficient(evaluate, start=1, floor=50)
    assert [p.coef for p in r.points] == calls == [1, 2, 4, 8, 6, 5]
    assert r.best.coef == 5 and r.best.trait == 100 and r.best.coherence == 50


def test_coefficient_search_negative_direction_and_no_coherent_point():
    r = search_coefficient(lambda c: (-c, 100 + 10 * c), start=-1, floor=60, refine=1)
    assert [p.coef for p in r.points] == [-1, -2, -4, -8, -6]
    assert r.best.coef == -4
    r = search_coefficient(lambda c: (50, 10), start=1, floor=60)
    assert r.best is None and len(r.points) == 1
    r = search_coefficient(lambda c: (c, 90), start=1, floor=60, max_coef=10)
    assert [p.coef for p in r.points] == [1, 2, 4, 8] and r.best.coef == 8


def test_steered_context_manager_matches_function_and_expires(tiny):
    examples = [tiny.chat.encode(p) for p in PROMPTS[:2]]
    st = [Steer("resid_pre@1", torch.ones(tiny.d_model), 3.0)]
    plain = generate_steered(tiny, examples, [], max_new_tokens=4)
    with steered(tiny, st, positions="all") as s:
        inside = s.generate(examples, max_new_tokens=4)
    assert inside == generate_steered(tiny, examples, st, max_new_tokens=4, positions="all")
    with pytest.raises(RuntimeError, match="exited"):
        s.generate(examples, max_new_tokens=4)
    assert generate_steered(tiny, examples, [], max_new_tokens=4) == plain
    with pytest.raises(ValueError, match="out of range"):
        with steered(tiny, [Steer("resid_pre@99", torch.ones(tiny.d_model), 1.0)]):
            pass


def test_generation_that_stops_early_still_returns_its_text():
    """Every row hits EOS before max_new_tokens: the step loop is cut short, the text still comes back."""
    import warnings

    from traitlab.models import load_model
    from traitlab.monitor import Watch, monitor
    from traitlab.sites import Site
    from traitlab.steering import Steer, generate_steered

    m = load_model("tiny-llama")
    ex = [m.chat.encode("Hi there")]
    v = torch.zeros(m.d_model)
    with torch.no_grad():
        eos = int(m.hf(torch.tensor([ex[0].ids])).logits[0, -1].argmax())  # the first greedy token
    old = m.hf.generation_config.eos_token_id
    m.hf.generation_config.eos_token_id = eos  # the first greedy token now ends the answer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = generate_steered(m, ex, [Steer(Site("resid_pre", 1), v, 1.0)], max_new_tokens=8)
            [t] = monitor(m, ex, [Watch("w", Site("resid_pre", 1), torch.ones(m.d_model))], max_new_tokens=8)
    finally:
        m.hf.generation_config.eos_token_id = old
    assert out == [""] and t.tokens == [] and t.text == ""


@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_generate_shares_the_prompt_prefix_and_equals_the_full_prefill(tiny, batch_size):
    """The dial's generation runs each prompt's prefix once and forks its KV cache across
    conditions; greedy tokens equal running each full prompt per condition, at any batch size
    (conditions split across batches when they exceed it), and the deltas do change the text."""
    ex = [tiny.chat.encode(t) for t in ("Hello there", "How do I bake bread today?", "Hi", "Tell me a long story")]
    g = torch.Generator().manual_seed(0)
    deltas = 4 * torch.randn(5, tiny.d_model, generator=g)
    deltas[0] = 0
    shared = steering.generate(tiny, ex, max_new_tokens=4, layer=1, deltas=deltas, batch_size=batch_size)
    full = steering._generate_full(tiny, ex, max_new_tokens=4, layer=1, deltas=deltas, batch_size=batch_size,
                                   progress=False, sampling=steering.Sampling.parse(None))
    assert shared == full
    assert any(row[0] != row[c] for row in shared for c in range(1, 5))


# ------------------------------------------------------------------ rows leave the batch at their end token

ROWS = ["Tell me about the sea.", "Hi", "What is two plus two, in words?", "Write a poem", "Why?",
        "How do I bake bread today?"]


@contextmanager
def _ending_on_a_mid_answer_token(model, examples, n):
    """Set the end token to one that some greedy answers emit part-way (so rows finish at
    different steps) and yield it; the generation config is restored afterwards."""
    tok = model.tokenizer
    with torch.no_grad():
        batch = steering.to_model(steering._pad_batch(examples, "left", tok.pad_token_id), model)
        ids = model.hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    new = ids[:, batch["input_ids"].shape[1]:]
    firsts = set(new[:, 0].tolist())
    counts = torch.bincount(new[:, 1:].flatten())
    counts[list(firsts)] = 0  # a token that no row starts with, so no row is empty from step 0
    eos = int(counts.argmax())
    assert counts[eos] > 0
    old = model.hf.generation_config.eos_token_id
    model.hf.generation_config.eos_token_id = eos
    try:
        yield eos
    finally:
        model.hf.generation_config.eos_token_id = old


def _batch_sizes(model):
    """Record the batch size of every forward (a hook on the input embeddings)."""
    sizes: list[int] = []
    handle = model.hf.get_input_embeddings().register_forward_hook(lambda _m, a, _o: sizes.append(a[0].shape[0]))
    return sizes, handle


@pytest.mark.parametrize("sampling", [None, steering.Sampling(temperature=1.0, seed=4)])
def test_finished_rows_leave_the_batch_and_no_token_changes(tiny, sampling, monkeypatch):
    """Every generator drops a row from the batch once it ends; the texts equal transformers'
    ``generate`` (which runs every row to the longest), greedy and sampled, for the steered grid,
    the dial's prefix-sharing ``generate`` and unsteered generation."""
    ex = [tiny.chat.encode(p) for p in ROWS]
    g = torch.Generator().manual_seed(3)
    conds = [[], [Steer("resid_pre@1", torch.randn(tiny.d_model, generator=g), 2.0)],
             [Steer("attn_out@0", torch.randn(tiny.d_model, generator=g), 1.5)]]
    deltas = 3 * torch.randn(3, tiny.d_model, generator=g)
    n = 10
    kw = dict(max_new_tokens=n, sampling=sampling)

    def run():
        return (steering.generate_steered_grid(tiny, ex, conds, batch_size=6, **kw),
                steering.generate(tiny, ex, layer=1, deltas=deltas, batch_size=18, **kw),
                steering.generate_steered(tiny, ex, [], batch_size=6, **kw))

    with _ending_on_a_mid_answer_token(tiny, ex, n):
        sizes, handle = _batch_sizes(tiny)
        try:
            steering.generate_steered_grid(tiny, ex, conds, batch_size=6, **kw)  # one batch of 18 rows
        finally:
            handle.remove()
        fast = run()
        with monkeypatch.context() as mp:
            mp.setattr(steering, "_decodes_itself", lambda model: False)
            slow = run()
    assert fast == slow
    # the 6 prompts' shared prefix once, then 18 rows (3 conditions) that end early and leave the batch
    assert sizes[:2] == [6, 18] and min(sizes) < 18, sizes


@pytest.mark.parametrize("sampling", [None, steering.Sampling(temperature=1.0, seed=5)])
def test_grid_runs_each_prompt_prefix_once_when_steering_starts_at_the_response(tiny, sampling, monkeypatch):
    """With ``positions="response"`` the grid prefills each prompt batch's prefix once for all its
    condition chunks (the only forwards longer than one token) and gives the texts of whole prompts
    run per row (transformers' ``generate``); with ``positions="all"`` every chunk runs whole prompts."""
    ex = [tiny.chat.encode(p) for p in ROWS]
    g = torch.Generator().manual_seed(5)
    v = torch.randn(tiny.d_model, generator=g)
    conds = [[]] + [[Steer("resid_pre@1", v, c)] for c in (-3.0, -1.0, 1.0, 3.0)] + \
        [[Steer("mlp_out@0", v, 2.0), Steer("resid_pre@1", v, 1.0)]]
    kw = dict(max_new_tokens=6, batch_size=3, max_rows=6, sampling=sampling)  # 2 prompt batches × 3 chunks

    def long_forwards(positions):
        lengths: list[int] = []
        h = tiny.hf.get_input_embeddings().register_forward_hook(lambda _m, a, _o: lengths.append(a[0].shape[1]))
        try:
            out = steering.generate_steered_grid(tiny, ex, conds, positions=positions, **kw)
        finally:
            h.remove()
        return out, sum(n > 1 for n in lengths)

    shared, n_shared = long_forwards("response")
    _, n_all = long_forwards("all")
    assert (n_shared, n_all) == (2, 6)
    with monkeypatch.context() as mp:
        mp.setattr(steering, "_decodes_itself", lambda model: False)
        whole = steering.generate_steered_grid(tiny, ex, conds, positions="response", **kw)
    assert shared == whole
    assert len({tuple(t) for t in shared}) > 1


def test_a_generation_config_with_logits_processors_keeps_transformers_generate(tiny):
    """A repetition penalty in the model's generation config is applied (by transformers'
    ``generate``), not silently dropped by the row-dropping decoder."""
    ex = [tiny.chat.encode(p) for p in PROMPTS]
    assert steering._decodes_itself(tiny)
    cfg = tiny.hf.generation_config
    old = cfg.repetition_penalty
    cfg.repetition_penalty = 3.0
    try:
        assert not steering._decodes_itself(tiny)
        penalised = generate_steered(tiny, ex, [], max_new_tokens=8)
        assert penalised == _reference(tiny, ex, [], "response", 8)
    finally:
        cfg.repetition_penalty = old
    assert steering._decodes_itself(tiny)
