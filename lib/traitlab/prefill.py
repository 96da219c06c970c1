"""The KV cache of a left-padded prompt batch, run in groups of similar length.

A batch padded to its longest prompt pays for the padding in every layer: the refusal dial's 64
HARMFUL prompts hold 3,212 tokens but pad to 13,632 in one batch (one 213-token HarmBench prompt
among ~50-token ones). ``prefill`` runs each group of rows whose lengths are within ``keep`` of
the group's longest at that group's own width, left-pads its keys and values with zeros to the
batch's width and joins the groups in the batch's row order. The padded positions are masked
either way, so the cache is the whole-batch one up to float rounding (each row's sums now run
over a different padding), at the cost of the tokens themselves.

Example (rows of 9 and 3 tokens: two groups, and the same cache):
    >>> import torch
    >>> from traitlab.activations import _pad_batch
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> batch = _pad_batch([m.chat.encode("Tell me a long story about the sea"), m.chat.encode("Hi")],
    ...                    "left", m.tokenizer.pad_token_id)
    >>> length_groups(batch["attention_mask"].sum(1).tolist())
    [[0], [1]]
    >>> whole = m.hf(**batch, use_cache=True).past_key_values
    >>> grouped = prefill(m.hf, batch)
    >>> real = batch["attention_mask"].bool()
    >>> torch.allclose(grouped.layers[0].keys[1][:, real[1]], whole.layers[0].keys[1][:, real[1]], atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from .models import full_attention

KEEP = 0.75
"""A group holds rows at least this fraction of its longest row's length, so padding is at most
a third of a group's tokens; lower merges more rows into fewer, wider forwards."""


def length_groups(lengths: Sequence[int], keep: float = KEEP) -> list[list[int]]:
    """Row indices in groups of similar length: rows taken longest first (ties in row order), a
    new group started when a row is shorter than ``keep`` × its group's first row.

    >>> length_groups([213, 50, 48, 109, 40])
    [[0], [3], [1, 2, 4]]
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    groups: list[list[int]] = []
    for r in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and lengths[r] >= keep * lengths[groups[-1][0]]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


@torch.no_grad()
def prefill(hf: torch.nn.Module, inputs: Mapping[str, torch.Tensor], keep: float = KEEP) -> Any:
    """``hf(**inputs, use_cache=True, logits_to_keep=1).past_key_values`` for a left-padded batch
    (``input_ids``, ``attention_mask``, ``position_ids``), each of its ``length_groups`` run at
    its own width. Where a group's cache is not plain full attention (sliding-window layers keep
    a window, not the whole prompt) the batch is run whole, as is a batch of one group or one
    with a row of padding only."""
    mask = inputs["attention_mask"]
    width = mask.shape[1]
    lengths = mask.sum(1).tolist()
    groups = length_groups(lengths, keep)

    def run(rows: list[int] | None, w: int) -> Any:
        sub = {k: (v if rows is None else v[torch.tensor(rows, device=v.device)])[:, width - w:]
               for k, v in inputs.items()}
        return hf(**sub, use_cache=True, logits_to_keep=1).past_key_values

    full = full_attention(getattr(hf, "config", None))
    if len(groups) == 1 or not full or min(lengths) == 0:  # a row of padding only has no width of its own
        return run(None, width)
    parts = []
    for rows in groups:
        part = run(rows, lengths[rows[0]])
        if not all(type(layer) is DynamicLayer for layer in part.layers):
            return run(None, width)
        parts.append(part)
    back = torch.argsort(torch.tensor([r for rows in groups for r in rows]))
    cache = parts[0]
    for i, layer in enumerate(cache.layers):
        for name in ("keys", "values"):
            kv = [getattr(p.layers[i], name) for p in parts]  # [rows, heads, w, head_dim]
            joined = torch.cat([F.pad(t, (0, 0, width - t.shape[-2], 0)) for t in kv])
            setattr(layer, name, joined[back.to(joined.device)])
    return cache
