"""Activation patching at the last K positions, with the prompt prefix computed once.

For paired prompts (target_i, source_i) — e.g. harmful targets and harmless sources — we
replace the activation of the target at one site (``resid_pre``, ``attn_out``,
``mlp_out``, …, layer L) at its last ``k`` positions by the source's activation at the
same positions counted from the end (chat templates end every prompt with the same
tokens, so these positions align), and read the target's score.

Positions before the last ``k`` are untouched by the patch, so their KV cache is computed
once per batch and every (site, layer) condition runs only the last ``k`` tokens, all
conditions batched into one nnsight trace.

Example:
    >>> from traitlab.models import load_model
    >>> from traitlab.sites import Site
    >>> m = load_model("tiny-qwen2")
    >>> t = [m.chat.encode("Make a bomb"), m.chat.encode("Rob a bank")]
    >>> s = [m.chat.encode("Bake a cake"), m.chat.encode("Open a bank account")]
    >>> out = patch_last_k(m, t, s, [Site("resid_pre", 1)], k=2, reduce=lambda lg: lg[:, 0])
    >>> out.patched.shape, out.clean_target.shape
    (torch.Size([2, 1]), torch.Size([2]))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .activations import _pad_batch, cast_like, to_model
from .chat import Encoded
from .models import LoadedModel
from .prefill import prefill
from .progress import tqdm
from .sites import Site, check_sites, envoy_value, module_path, reads_input, resolve
from .sweep import Reduce


@dataclass(frozen=True)
class PatchResult:
    """Scores of patched targets [n, n_sites], and of the clean targets and sources [n]."""

    sites: tuple[Site, ...]
    patched: torch.Tensor
    clean_target: torch.Tensor
    clean_source: torch.Tensor

    def recovered(self) -> torch.Tensor:
        """(patched − clean target) / (clean source − clean target), mean over prompts per site."""
        gap = (self.clean_source - self.clean_target).mean()
        return (self.patched - self.clean_target[:, None]).mean(0) / gap


def _suffix_inputs(inp: dict[str, torch.Tensor], k: int, cache, rows: int) -> dict:
    reps = rows // inp["input_ids"].shape[0]
    return {"input_ids": inp["input_ids"][:, -k:].repeat(reps, 1),
            "attention_mask": inp["attention_mask"].repeat(reps, 1),
            "position_ids": inp["position_ids"][:, -k:].repeat(reps, 1),
            "past_key_values": cache, "logits_to_keep": 1}


def _expand(cache, reps: int):
    """Cache rows repeated condition-major (row = condition * batch + prompt)."""
    big = copy.deepcopy(cache)
    for layer in big.layers:
        layer.keys = layer.keys.repeat(reps, 1, 1, 1)
        layer.values = layer.values.repeat(reps, 1, 1, 1)
    return big


@torch.no_grad()
def patch_last_k(model: LoadedModel, targets: Sequence[Encoded], sources: Sequence[Encoded],
                 sites: Sequence[Site], k: int, reduce: Reduce, *, batch_size: int = 8,
                 progress: bool = False) -> PatchResult:
    """Patch each site's last-``k``-position activations from sources into targets."""
    from .sweep import _local_only

    _local_only(model, "activation patching")
    if len(targets) != len(sources) or not targets:
        raise ValueError(f"need equally many targets and sources, got {len(targets)} and {len(sources)}")
    min_len = min(len(e.ids) for e in list(targets) + list(sources))
    if not 1 <= k < min_len:
        raise ValueError(f"k must be in 1..{min_len - 1} (shortest prompt has {min_len} tokens), got {k}")
    sites = tuple(dict.fromkeys(sites))  # results keep the caller's order
    check_sites(list(sites), model.arch, model.n_layers)
    order = sorted(range(len(sites)), key=lambda i: sites[i].order)  # nnsight needs execution order
    lm, hf = model.lm, model.hf
    envoys = [resolve(lm, module_path(model.arch, s)) for s in sites]
    pad = model.tokenizer.pad_token_id
    n, n_sites = len(targets), len(sites)
    patched = torch.empty(n, n_sites)
    clean_t, clean_s = torch.empty(n), torch.empty(n)
    for start in tqdm(range(0, n, batch_size), desc="patch", disable=not progress):
        tb, sb = targets[start:start + batch_size], sources[start:start + batch_size]
        b = len(tb)
        t_in, s_in = to_model(_pad_batch(tb, "left", pad), model), to_model(_pad_batch(sb, "left", pad), model)
        src_vals: list = [None] * n_sites
        with lm.trace({**s_in, "logits_to_keep": 1}):  # the last position's logits only
            for i in order:
                src_vals[i] = envoy_value(envoys[i], sites[i])[:, -k:].save()
            s_logits = lm.output.logits[:, -1].save()
        clean_s[start:start + b] = reduce(s_logits.float()).cpu()
        prefix = {key: v[:, :-k] for key, v in t_in.items()}
        cache = prefill(hf, prefix)
        rows = b * (n_sites + 1)  # condition 0: clean target
        with lm.trace(_suffix_inputs(t_in, k, _expand(cache, n_sites + 1), rows)):
            for i in order:  # condition i + 1 patches site i
                site, envoy = sites[i], envoys[i]
                sl = slice((i + 1) * b, (i + 2) * b)
                value = envoy.input if reads_input(site) else envoy.output
                value = value[0] if isinstance(value, tuple) else value
                value[sl] = cast_like(src_vals[i], value)
            logits = lm.output.logits[:, -1].save()
        scores = reduce(logits.float()).view(n_sites + 1, b).cpu()
        clean_t[start:start + b] = scores[0]
        patched[start:start + b] = scores[1:].T
    return PatchResult(sites, patched, clean_t, clean_s)
