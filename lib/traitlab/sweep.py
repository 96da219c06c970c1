"""Fast last-token steering sweeps: reuse the prompt prefix across many conditions.

A last-token intervention at layer L (add ``delta`` to ``resid_pre@L`` at the last prompt
position) changes nothing before that position, and nothing below layer L at it. So for a
batch of prompts we compute, once:

1. the KV cache of every position but the last (one forward pass of the prefix);
2. ``resid_pre@L`` at the last position (one single-token pass, stopped at layer L);

and then, for every condition (an alpha × direction pair), run only layers L..N-1 on one
token per prompt, with ``resid_pre@L + delta`` as input, many conditions batched together.
``naive_sweep`` computes the same thing with one batched full forward per condition
(``logits_to_keep=1``) and an nnsight intervention; the tests and
``benchmarks/refusal_sweep.py`` check that the two agree.

Example:
    >>> from traitlab.models import load_model
    >>> import torch
    >>> m = load_model("tiny-llama")
    >>> ex = [m.chat.encode("Hello there"), m.chat.encode("How are you?")]
    >>> deltas = torch.randn(3, m.d_model)
    >>> fast = last_token_sweep(m, ex, 1, deltas, reduce=lambda lg: lg[:, 0])
    >>> slow = naive_sweep(m, ex, 1, deltas, reduce=lambda lg: lg[:, 0])
    >>> bool(torch.allclose(fast, slow, atol=1e-4))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from .activations import _pad_batch, cast_like, to_model
from .chat import Encoded
from .models import LoadedModel, full_attention
from .prefill import prefill
from .progress import tqdm
from .sites import layout, resolve

Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Maps last-position logits [rows, vocab] to one score per row [rows]."""


@contextmanager
def layers_from(model: LoadedModel, layer: int) -> Iterator[None]:
    """Temporarily make the decoder run only layers ``layer..N-1`` (restored on exit)."""
    path = layout(model.arch).layers
    parent_path, _, name = path.rpartition(".")
    parent = resolve(model.hf, parent_path)
    full = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList(list(full)[layer:]))
    try:
        yield
    finally:
        setattr(parent, name, full)


def _local_only(model: LoadedModel, what: str) -> None:
    if getattr(model, "remote", False):
        raise ValueError(f"{what} reuses a local KV cache and cannot run remotely; "
                         "run this notebook with remote: false (device_map shards large models instead)")


def _check(model: LoadedModel, examples: Sequence[Encoded], layer: int, deltas: torch.Tensor) -> None:
    _local_only(model, "the prefix-reuse sweep")
    if not examples:
        raise ValueError("no prompts to sweep")
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.n_layers - 1}")
    if deltas.ndim != 2 or deltas.shape[1] != model.d_model:
        raise ValueError(f"deltas must be [conditions, {model.d_model}], got {tuple(deltas.shape)}")
    if any(len(e.ids) < 2 for e in examples):
        raise ValueError("every prompt needs at least 2 tokens (a prefix and a last token)")


@torch.no_grad()
def last_token_sweep(model: LoadedModel, examples: Sequence[Encoded], layer: int, deltas: torch.Tensor,
                     reduce: Reduce, *, batch_size: int = 16, max_rows: int = 512,
                     progress: bool = False) -> torch.Tensor:
    """Scores [n_prompts, n_conditions] with ``deltas[c]`` added to ``resid_pre@layer`` at the
    last prompt token, using prefix (KV cache) and lower-layer reuse.

    ``max_rows`` bounds prompts × conditions per single-token forward (memory).
    """
    return multi_layer_sweep(model, examples, {layer: deltas}, reduce, batch_size=batch_size,
                             max_rows=max_rows, progress=progress)[layer]


@torch.no_grad()
def multi_layer_sweep(model: LoadedModel, examples: Sequence[Encoded], deltas: Mapping[int, torch.Tensor],
                      reduce: Reduce, *, batch_size: int = 16, max_rows: int = 512,
                      progress: bool = False) -> dict[int, torch.Tensor]:
    """``last_token_sweep`` at several layers, sharing one prefix pass per batch.

    ``deltas`` maps a layer to its [n_conditions, d] additions; returns layer → scores.
    """
    for layer, d in deltas.items():
        _check(model, examples, layer, d)
    hf, lm = model.hf, model.lm
    layers = sorted(deltas)
    out = {layer: torch.empty(len(examples), len(deltas[layer])) for layer in layers}
    envoys = {layer: resolve(lm, f"{layout(model.arch).layers}.{layer}") for layer in layers}
    # Skipping layers below L needs every layer to see the same cache length; models with
    # sliding-window layers (Gemma 2/3) keep the prefix reuse but run all layers.
    skip_lower = full_attention(hf.config)
    # Batches of similar length (longest first), each prefix prefilled in length groups: no
    # forward pays for another prompt's padding. Scores are put back in the caller's order.
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    for start in tqdm(range(0, len(order), batch_size), desc="sweep", disable=not progress):
        idx = order[start:start + batch_size]
        inp = to_model(_pad_batch([examples[i] for i in idx], "left", model.tokenizer.pad_token_id), model)
        b = inp["input_ids"].shape[0]
        cache = prefill(hf, {k: v[:, :-1] for k, v in inp.items()})
        last = {"input_ids": inp["input_ids"][:, -1:], "attention_mask": inp["attention_mask"],
                "position_ids": inp["position_ids"][:, -1:], "past_key_values": copy.deepcopy(cache)}
        hs = []
        with lm.trace(last) as tracer:
            for layer in layers:
                hs.append(envoys[layer].input[:, -1].save())  # [b, d]
            tracer.stop()
        for layer, h in zip(layers, hs, strict=True):
            dl = cast_like(deltas[layer], h)  # the activation's device and dtype
            per_chunk = max(1, max_rows // b)
            for c0 in range(0, len(dl), per_chunk):
                d = dl[c0:c0 + per_chunk]  # [k, d]
                k = len(d)
                rows = (h[:, None, :] + d[None, :, :]).reshape(b * k, 1, -1)  # row = prompt * k + cond
                big = copy.deepcopy(cache)
                big.batch_repeat_interleave(k)
                mask = inp["attention_mask"].repeat_interleave(k, 0)
                pos = inp["position_ids"][:, -1:].repeat_interleave(k, 0)
                if skip_lower:
                    with layers_from(model, layer):
                        logits = hf(inputs_embeds=rows, attention_mask=mask, position_ids=pos,
                                    past_key_values=big, use_cache=True, logits_to_keep=1).logits[:, -1]
                else:  # run every layer on the last token, replacing resid_pre@L
                    ids = inp["input_ids"][:, -1:].repeat_interleave(k, 0)
                    with lm.trace({"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                                   "past_key_values": big, "logits_to_keep": 1}):
                        envoys[layer].input[:, -1] = rows[:, 0]
                        logits = lm.output.logits[:, -1].save()
                out[layer][idx, c0:c0 + k] = reduce(logits.float()).view(b, k).cpu()
    return out


@torch.no_grad()
def naive_sweep(model: LoadedModel, examples: Sequence[Encoded], layer: int, deltas: torch.Tensor,
                reduce: Reduce, *, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """The same scores with one batched full forward per condition (nnsight intervention,
    ``logits_to_keep=1``): the fair baseline for ``last_token_sweep``."""
    _check(model, examples, layer, deltas)
    lm = model.lm
    envoy = resolve(lm, f"{layout(model.arch).layers}.{layer}")
    out = torch.empty(len(examples), len(deltas))
    for start in tqdm(range(0, len(examples), batch_size), desc="naive", disable=not progress):
        batch = examples[start:start + batch_size]
        inp = to_model(_pad_batch(batch, "left", model.tokenizer.pad_token_id), model)
        for c, d in enumerate(deltas):
            with lm.trace({**inp, "logits_to_keep": 1}):
                h = envoy.input
                h[:, -1] += cast_like(d, h)
                logits = lm.output.logits[:, -1].save()
            out[start:start + len(batch), c] = reduce(logits.float()).cpu()
    return out
