"""Steered generation: add a vector to ``resid_pre@L`` at the last prompt token, then decode.

The addition is made during the prefill pass only (the position the model reads to start
its answer), as in the refusal-dial study; later tokens see its effect through the KV
cache. Prompts × conditions are generated together as one batch (row = prompt × n_cond +
condition), greedy, left-padded.

Example:
    >>> import torch
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> ex = [m.chat.encode("Hello")]
    >>> out = generate(m, ex, max_new_tokens=3, layer=1, deltas=torch.zeros(2, m.d_model))
    >>> len(out), len(out[0])
    (1, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from .activations import _pad_batch
from .chat import Encoded
from .models import LoadedModel
from .sites import layout, resolve


@torch.no_grad()
def generate(model: LoadedModel, examples: Sequence[Encoded], *, max_new_tokens: int,
             layer: int | None = None, deltas: torch.Tensor | None = None, batch_size: int = 32,
             progress: bool = False) -> list[list[str]]:
    """Greedy continuations, ``out[prompt][condition]``; no steering when ``deltas`` is None."""
    if not examples:
        raise ValueError("no prompts to generate from")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if deltas is not None:
        if layer is None or not 0 <= layer < model.n_layers:
            raise ValueError(f"steering needs a layer in 0..{model.n_layers - 1}, got {layer}")
        if deltas.ndim != 2 or deltas.shape[1] != model.d_model:
            raise ValueError(f"deltas must be [conditions, {model.d_model}], got {tuple(deltas.shape)}")
    n_cond = 1 if deltas is None else len(deltas)
    rows = [(i, c) for i in range(len(examples)) for c in range(n_cond)]
    order = sorted(range(len(rows)), key=lambda r: -len(examples[rows[r][0]].ids))
    texts: list[list[str]] = [[""] * n_cond for _ in examples]
    lm, tok = model.lm, model.tokenizer
    envoy = resolve(lm, f"{layout(model.arch).layers}.{layer}") if deltas is not None else None
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
        chunk = [rows[r] for r in order[start:start + batch_size]]
        inp = _pad_batch([examples[i] for i, _ in chunk], "left", tok.pad_token_id)
        kwargs = {"input_ids": inp["input_ids"], "attention_mask": inp["attention_mask"]}
        gen = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        if envoy is None:
            ids = model.hf.generate(**kwargs, **gen)
        else:
            add = deltas[[c for _, c in chunk]].to(next(model.hf.parameters()).dtype)
            with lm.generate(kwargs, **gen) as tracer:
                envoy.input[:, -1] += add  # prefill pass only
                ids = tracer.result.save()
        new = ids[:, inp["input_ids"].shape[1]:]
        for (i, c), t in zip(chunk, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            texts[i][c] = t
    return texts
