"""Steered generation, perturbation ratios and coefficient search.

- ``generate``: add one vector per condition to ``resid_pre@L`` at the last prompt token
  during the prefill pass only (the refusal-dial protocol; later tokens see the effect
  through the KV cache). Each prompt's prefix is run once and its KV cache shared by every
  condition (row = prompt × n_cond + condition), left-padded.
- ``generate_steered``: add ``Steer``s (a vector × coefficient at a site) at one or several
  sites at every generation step, at all positions or only response-producing ones. The
  additions live inside one nnsight trace per batch, so nothing stays on the model.
- ``coef_for_ratio`` / ``perturbation_ratio`` / ``activation_norms``: convert between raw
  coefficients and the perturbation ratio ``coef × ‖v‖ / ‖activation‖``.
- ``search_coefficient``: adaptive per-layer coefficient search under a coherence floor.
- ``Sampling``: how every generator here picks tokens: greedy (the default) or seeded
  temperature / top-p sampling, reproducible per row whatever the batch size.

On a local model every generator here decodes with ``_decode``: a row that has emitted its
end-of-turn token leaves the batch (its KV cache rows are dropped), so a batch costs the tokens
its rows generate, not rows × the longest answer. Remote models, and generation configs that
add logits processors (a repetition penalty, …), keep transformers' ``generate``.

Every addition is cast to the activation's device and dtype where it is made
(``activations.cast_like``), so float32 vectors on the CPU steer a half-precision model
on a GPU.

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

import copy
import hashlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .activations import _pad_batch, _remote, cast_like, to_model
from .chat import Encoded
from .models import LoadedModel
from .prefill import prefill
from .progress import tqdm
from .sites import Site, check_sites, envoy_value, layout, module_path, resolve

# ----------------------------------------------------------------------------------------
# Sampling: greedy by default; seeded temperature / top-p, reproducible per row
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """How generated tokens are picked.

    ``temperature == 0`` (the default) is greedy decoding, exactly as before sampling existed.
    Otherwise each token is drawn from ``softmax(logits / temperature)`` restricted to the
    smallest set of most likely tokens whose probability reaches ``top_p`` (nucleus sampling).

    Reproducibility: every row (the r-th prompt; prompt × condition in ``generate``) draws
    from its own random stream seeded from ``(seed, r)``, so one seed gives the same tokens
    whatever the batch size or order of the prompts (up to float noise in the logits between
    batch shapes, which moves a token only when a draw lands within that noise of a
    boundary). Repeat a prompt n times to draw n samples. ``seed=None`` takes one seed from
    torch's global generator per call (reproducible only under ``torch.manual_seed``).

    The logits sampled from are the ones greedy decoding sees (after the model's own
    generation-config processors, e.g. a repetition penalty); sampling settings in the
    model's generation config (its ``top_k``, ``temperature``) are not used.

    >>> Sampling().greedy, Sampling(temperature=0.7, top_p=0.9, seed=1).greedy
    (True, False)
    >>> Sampling(temperature=-1)
    Traceback (most recent call last):
    ValueError: Sampling: temperature must be a finite number >= 0 (0 = greedy), got -1
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        t, p = self.temperature, self.top_p
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ValueError(f"Sampling: temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise ValueError(f"Sampling: top_p must be in (0, 1] (1 = no cut), got {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ValueError(f"Sampling: seed must be a non-negative int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def parse(cls, spec: Sampling | Mapping | None) -> Sampling:
        """A ``Sampling`` from itself, None (greedy) or a mapping such as a profile's
        ``{temperature: 0.7, top_p: 0.9, seed: 0}``; unknown keys are a one-line error.

        >>> Sampling.parse({"temperature": 0.5, "seed": 3})
        Sampling(temperature=0.5, top_p=1.0, seed=3)
        """
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"sampling must be a mapping of temperature, top_p, seed; got {spec!r}")
        unknown = sorted(set(spec) - {"temperature", "top_p", "seed"})
        if unknown:
            raise ValueError(f"sampling: unknown key(s) {', '.join(map(str, unknown))}; "
                             "use temperature, top_p, seed")
        return cls(**spec)

    def base_seed(self) -> int:
        """The seed rows are derived from: ``seed``, or one draw from torch's global generator."""
        return self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)))


def row_seed(base: int, row: int) -> int:
    """The seed of row ``row``'s own random stream (a hash of both, so neighbours are unrelated).

    >>> row_seed(0, 1) != row_seed(0, 2) != row_seed(1, 1)
    True
    """
    return int.from_bytes(hashlib.sha256(f"traitlab-sampling:{base}:{row}".encode()).digest()[:8], "big") >> 1


def sample_tokens(scores: torch.Tensor, uniforms: torch.Tensor, temperature: float,
                  top_p: float) -> torch.Tensor:
    """One token per row of ``scores`` [b, vocab] by inverse-CDF sampling with ``uniforms`` [b]
    in [0, 1): tokens sorted by probability (ties keep vocabulary order), cut to the smallest
    prefix whose mass reaches ``top_p``, renormalised. In float64 on the CPU, so the pick does
    not depend on the device. A tiny ``top_p`` keeps only the most likely token (greedy).

    >>> s = torch.tensor([[0.0, 2.0, 1.0]])
    >>> sample_tokens(s, torch.tensor([0.99]), 1.0, 1e-9).tolist(), sample_tokens(s, torch.tensor([0.0]), 1.0, 1.0).tolist()
    ([1], [1])
    """
    probs = torch.softmax(scores.detach().to("cpu", torch.float64) / temperature, dim=-1)
    sp, si = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep = (sp.cumsum(-1) - sp) < top_p  # every token whose predecessors hold < top_p; the first always
    cdf = (sp * keep).cumsum(-1)
    target = uniforms.to(torch.float64)[:, None] * cdf[:, -1:]
    j = torch.searchsorted(cdf, target, right=True).clamp(max=probs.shape[-1] - 1)
    return si.gather(1, j)[:, 0]


class RowSampler:
    """A transformers logits processor that samples each row's token with ``sample_tokens`` and
    its own seeded stream, then leaves only that token finite, so greedy decoding (which
    ``generate`` keeps: ``do_sample=False``) emits it. One uniform per row per step."""

    def __init__(self, sampling: Sampling, base_seed: int, rows: Sequence[int]) -> None:
        self.sampling = sampling
        self.streams = [torch.Generator().manual_seed(row_seed(base_seed, r)) for r in rows]

    def pick(self, scores: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Each row's sampled token; ``rows``: the streams of the rows still in ``scores`` (all
        when None), each drawing one uniform."""
        streams = self.streams if rows is None else [self.streams[r] for r in rows]
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in streams])
        return sample_tokens(scores, u, self.sampling.temperature, self.sampling.top_p).to(scores.device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pick = self.pick(scores)
        out = torch.full_like(scores, -math.inf)
        out.scatter_(1, pick[:, None], 0.0)
        return out


def _gen_kwargs(model: LoadedModel, max_new_tokens: int, sampling: Sampling, base_seed: int,
                rows: Sequence[int]) -> dict:
    """``generate`` keyword arguments: greedy, plus a ``RowSampler`` when sampling."""
    from transformers import LogitsProcessorList

    gen: dict = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    if not sampling.greedy:
        gen["logits_processor"] = LogitsProcessorList([RowSampler(sampling, base_seed, rows)])
    return gen


def _eos_ids(model: LoadedModel) -> torch.Tensor:
    """The token ids that end a row, as transformers' ``generate`` reads them: the generation
    config's ``eos_token_id`` (an int or a list; none = rows run to ``max_new_tokens``)."""
    eos = getattr(model.hf.generation_config, "eos_token_id", None)
    return torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)


_PROCESSOR_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "min_length",
                     "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                     "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty",
                     "renormalize_logits", "encoder_repetition_penalty", "encoder_no_repeat_ngram_size",
                     "guidance_scale", "watermarking_config")
"""Generation-config fields that make transformers' greedy ``generate`` change the logits
(``_decode`` applies none of them, so a config that sets one keeps ``generate``)."""


def _decodes_itself(model: LoadedModel) -> bool:
    """True when ``_decode`` gives ``generate``'s tokens: a local model whose generation config
    sets none of ``_PROCESSOR_FIELDS`` away from transformers' defaults."""
    if model.remote:
        return False
    from transformers import GenerationConfig

    cfg, default = model.hf.generation_config, GenerationConfig()
    return all(getattr(cfg, f, None) == getattr(default, f, None) for f in _PROCESSOR_FIELDS)


Step = Callable[[dict, Any, torch.Tensor, bool], tuple[torch.Tensor, Any]]
"""``step(inputs, cache, rows, first) → (last-position logits [len(rows), vocab], cache)``: one
forward of ``inputs`` (``input_ids``, ``attention_mask``, ``position_ids``) for the batch rows
still decoding (``rows``: their indices in the starting batch, to pick their steering), on
``cache`` (None before the first step); ``first`` is the pass over the prompt."""


def _decode(model: LoadedModel, inputs: dict, step: Step, *, cache: Any = None, max_new_tokens: int,
            sampling: Sampling, base_seed: int, seeds: Sequence[int]) -> list[str]:
    """Decode a left-padded batch with ``step``, dropping each row from the batch (and its KV
    cache) once it emits an end token; the texts, special tokens removed.

    Tokens are transformers' ``generate``'s (greedy: the arg-max of the float32 logits; sampled:
    ``sample_tokens`` with row ``seeds[r]``'s stream, one draw per step while the row decodes), so
    only the float rounding of a smaller batch's matmuls can differ, which moves a token only in
    a near-tie. ``inputs["position_ids"]`` must be the prompt positions (``_pad_batch``'s).
    """
    n = inputs["input_ids"].shape[0]
    eos = _eos_ids(model).to(inputs["input_ids"].device)
    sampler = None if sampling.greedy else RowSampler(sampling, base_seed, seeds)
    rows = torch.arange(n)
    out: list[list[int]] = [[] for _ in range(n)]
    mask, pos = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    for t in range(max_new_tokens):
        logits, cache = step(inputs, cache, rows, t == 0)
        scores = logits.float()
        pick = scores.argmax(-1) if sampler is None else sampler.pick(scores, rows.tolist())
        for r, tok_id in zip(rows.tolist(), pick.tolist(), strict=True):
            out[r].append(tok_id)
        live = ~torch.isin(pick, eos)
        if t == max_new_tokens - 1 or not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, mask, pos, pick = rows[keep.cpu()], mask[keep], pos[keep], pick[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        pos = pos + 1
        inputs = {"input_ids": pick[:, None], "attention_mask": mask, "position_ids": pos}
    return model.tokenizer.batch_decode(out, skip_special_tokens=True)


def _forward_step(model: LoadedModel, inputs: dict, cache: Any,
                  edit: Callable[[], None] | None = None) -> tuple[torch.Tensor, Any]:
    """One forward on the KV cache (a ``Step`` body): plain, or inside an nnsight trace that
    runs ``edit`` (the interventions on envoys) when one is given."""
    if edit is None:
        o = model.hf(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return o.logits[:, -1], o.past_key_values
    with model.lm.trace({k: inputs[k] for k in ("input_ids", "attention_mask")},
                        position_ids=inputs["position_ids"], past_key_values=cache, use_cache=True,
                        logits_to_keep=1):
        edit()
        o = model.lm.output.save()
    return o.logits[:, -1], o.past_key_values


@torch.no_grad()
def generate(model: LoadedModel, examples: Sequence[Encoded], *, max_new_tokens: int,
             layer: int | None = None, deltas: torch.Tensor | None = None, batch_size: int = 32,
             progress: bool = False, sampling: Sampling | None = None) -> list[list[str]]:
    """Continuations ``out[prompt][condition]``: ``deltas[condition]`` added to ``resid_pre@layer``
    at the prompt's last token in the prefill only (greedy unless ``sampling`` says otherwise;
    row ``prompt × n_cond + condition`` seeds its own stream); no steering when ``deltas`` is None.

    Every condition sees the same prompt up to its last token, so each prompt's prefix (all but
    the last token) is run once, unsteered, with prompts of similar length together
    (``traitlab.prefill``: no forward pays for another prompt's padding), and its KV cache is
    shared by all conditions; only
    the last token (steered in one nnsight trace) and the decoding run per condition, ``batch_size``
    rows at a time. Identical greedy tokens to running each full prompt per condition (tested),
    up to float rounding in near-ties. Remote models, and prompts of one token, take that full path.
    """
    sampling = Sampling.parse(sampling)
    if not examples:
        raise ValueError("no prompts to generate from")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if deltas is not None:
        if layer is None or not 0 <= layer < model.n_layers:
            raise ValueError(f"steering needs a layer in 0..{model.n_layers - 1}, got {layer}")
        if deltas.ndim != 2 or deltas.shape[1] != model.d_model:
            raise ValueError(f"deltas must be [conditions, {model.d_model}], got {tuple(deltas.shape)}")
    if deltas is None or model.remote or min(len(e.ids) for e in examples) < 2:
        return _generate_full(model, examples, max_new_tokens=max_new_tokens, layer=layer, deltas=deltas,
                              batch_size=batch_size, progress=progress, sampling=sampling)
    n_cond = len(deltas)
    tok = model.tokenizer
    fast = _decodes_itself(model)
    envoy = resolve(model.lm, f"{layout(model.arch).layers}.{layer}")
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    per_prompt = max(1, batch_size // n_cond)  # prompts per batch; conditions split when they exceed it
    per_cond = min(n_cond, max(1, batch_size // per_prompt))
    texts: list[list[str]] = [[""] * n_cond for _ in examples]
    base = sampling.base_seed()
    jobs = [(order[k:k + per_prompt], list(range(c, min(c + per_cond, n_cond))))
            for k in range(0, len(order), per_prompt) for c in range(0, n_cond, per_cond)]
    prefix = _Prefix(model, grouped=True)
    for idx, conds in tqdm(jobs, desc="generate", disable=not progress):
        full = to_model(_pad_batch([examples[i] for i in idx], "left", tok.pad_token_id), model)
        cache = prefix.rows(idx, full, torch.arange(len(idx)).repeat_interleave(len(conds)))  # prompt × len(conds) + condition
        kwargs = {"input_ids": full["input_ids"].repeat_interleave(len(conds), 0),
                  "attention_mask": full["attention_mask"].repeat_interleave(len(conds), 0)}
        seeds = [i * n_cond + c for i in idx for c in conds]
        add = deltas[conds].repeat(len(idx), 1)
        if fast:
            last = {"input_ids": kwargs["input_ids"][:, -1:], "attention_mask": kwargs["attention_mask"],
                    "position_ids": full["position_ids"][:, -1:].repeat_interleave(len(conds), 0)}
            new = _decode(model, last, _prefill_steer(model, envoy, add), cache=cache,
                          max_new_tokens=max_new_tokens, sampling=sampling, base_seed=base, seeds=seeds)
        else:
            gen = _gen_kwargs(model, max_new_tokens, sampling, base, seeds)
            with model.lm.generate(kwargs, past_key_values=cache, **gen) as tracer:
                h = envoy.input
                h[:, -1] += cast_like(add, h)  # the first forward runs only the last prompt token
                ids = tracer.result.save()
            new = tok.batch_decode(ids[:, kwargs["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, t in enumerate(new):
            texts[idx[r // len(conds)]][conds[r % len(conds)]] = t
    return texts


class _Prefix:
    """The KV cache of a left-padded prompt batch without its last token, what every condition
    that steers only from the last prompt token on shares: one unsteered forward per prompt batch
    (the last batch's is kept), handed out as copies with the rows each job needs."""

    def __init__(self, model: LoadedModel, grouped: bool = False) -> None:
        self.model, self.grouped, self.idx, self.cache = model, grouped, None, None

    def rows(self, idx: Sequence[int], full: dict[str, torch.Tensor], rows: torch.Tensor) -> Any:
        """A copy of prompt batch ``idx``'s prefix cache whose row r is the batch's prompt ``rows[r]``
        (``grouped``: prompts of similar length prefilled together, ``traitlab.prefill``; the
        steering grid keeps the plain prefill, as its cached answers were made with it)."""
        if self.idx != tuple(idx):
            prefix = {k: full[k][:, :-1] for k in ("input_ids", "attention_mask", "position_ids")}
            self.idx = tuple(idx)
            self.cache = (prefill(self.model.hf, prefix) if self.grouped else
                          self.model.hf(**prefix, use_cache=True, logits_to_keep=1).past_key_values)
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(rows.to(full["input_ids"].device))
        return cache


def _prefill_steer(model: LoadedModel, envoy: Any, add: torch.Tensor) -> Step:
    """``generate``'s ``Step``: ``add[row]`` at ``resid_pre`` of the last prompt token in the first
    forward (which runs only that token on the prefix's cache), plain forwards after it."""

    def edit() -> None:
        h = envoy.input
        h[:, -1] += cast_like(add, h)

    def step(inputs: dict, cache: Any, rows: torch.Tensor, first: bool) -> tuple[torch.Tensor, Any]:
        return _forward_step(model, inputs, cache, edit if first else None)

    return step


@torch.no_grad()
def _generate_full(model: LoadedModel, examples: Sequence[Encoded], *, max_new_tokens: int,
                   layer: int | None, deltas: torch.Tensor | None, batch_size: int, progress: bool,
                   sampling: Sampling) -> list[list[str]]:
    """``generate`` with the whole prompt run once per (prompt, condition) row."""
    n_cond = 1 if deltas is None else len(deltas)
    rows = [(i, c) for i in range(len(examples)) for c in range(n_cond)]
    order = sorted(range(len(rows)), key=lambda r: -len(examples[rows[r][0]].ids))
    texts: list[list[str]] = [[""] * n_cond for _ in examples]
    lm, tok = model.lm, model.tokenizer
    envoy = resolve(lm, f"{layout(model.arch).layers}.{layer}") if deltas is not None else None
    base = sampling.base_seed()
    fast = envoy is None and _decodes_itself(model)  # unsteered and local: finished rows leave the batch
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
        chunk = [rows[r] for r in order[start:start + batch_size]]
        inp = to_model(_pad_batch([examples[i] for i, _ in chunk], "left", tok.pad_token_id), model)
        kwargs = {"input_ids": inp["input_ids"], "attention_mask": inp["attention_mask"]}
        seeds = [i * n_cond + c for i, c in chunk]
        if fast:
            new = _decode(model, inp, lambda x, cache, _rows, _first: _forward_step(model, x, cache),
                          max_new_tokens=max_new_tokens, sampling=sampling, base_seed=base, seeds=seeds)
            for (i, c), t in zip(chunk, new, strict=True):
                texts[i][c] = t
            continue
        gen = _gen_kwargs(model, max_new_tokens, sampling, base, seeds)
        if envoy is None and not model.remote:
            ids = model.hf.generate(**kwargs, **gen)
        elif envoy is None:
            with lm.generate(kwargs, **gen, **_remote(model)) as tracer:
                ids = tracer.result.save()
        else:
            add = deltas[[c for _, c in chunk]]
            with lm.generate(kwargs, **gen, **_remote(model)) as tracer:
                h = envoy.input
                h[:, -1] += cast_like(add, h)  # prefill pass only
                ids = tracer.result.save()
        new = ids[:, inp["input_ids"].shape[1]:]
        for (i, c), t in zip(chunk, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            texts[i][c] = t
    return texts


# ----------------------------------------------------------------------------------------
# Multi-site steering during generation
# ----------------------------------------------------------------------------------------

Positions = Literal["all", "response"]
"""Where a steer is added: ``all`` = every prompt and response position; ``response`` =
the positions that produce response tokens (the last prompt position, then each generated
token), so the prompt's own representations are left alone."""


@dataclass(frozen=True)
class Steer:
    """Add ``coef × vector`` at ``site`` (``"resid_pre@12"`` or a ``Site``).

    ``vector`` is used as given (not re-normalised), so ``coef`` is in units of its norm;
    see ``coef_for_ratio`` to set ``coef`` from a perturbation ratio instead.
    """

    site: Site
    vector: torch.Tensor = field(repr=False)
    coef: float

    def __post_init__(self) -> None:
        if isinstance(self.site, str):
            object.__setattr__(self, "site", Site.parse(self.site))
        if self.site.name == "v":
            raise ValueError("steering at 'v' is not supported; use resid_pre, resid_post, "
                             "attn_out or mlp_out")
        if self.vector.ndim != 1:
            raise ValueError(f"a steering vector must be 1-D, got shape {tuple(self.vector.shape)}")
        if not math.isfinite(self.coef):
            raise ValueError(f"coef must be finite, got {self.coef}")

    @property
    def delta(self) -> torch.Tensor:
        return self.coef * self.vector


def same_vector(vector: torch.Tensor, sites: Sequence[Site | str], coef: float) -> list[Steer]:
    """Multi-layer steering with one vector added at every site (e.g. layers 6–10)."""
    return [Steer(s, vector, coef) for s in sites]


def per_site_vectors(vectors: Mapping[Site | str, torch.Tensor], coef: float) -> list[Steer]:
    """Multi-layer steering with each site's own vector (e.g. each layer's mean_diff)."""
    return [Steer(s, v, coef) for s, v in vectors.items()]


def _check_steers(model: LoadedModel, steers: Sequence[Steer]) -> None:
    seen = set()
    for s in steers:
        check_sites([s.site], model.arch, model.n_layers)
        if s.vector.shape[0] != model.d_model:
            raise ValueError(f"{s.site}: vector has {s.vector.shape[0]} dims, the model {model.d_model}")
        if s.site in seen:
            raise ValueError(f"{s.site} is steered twice; add the vectors into one Steer")
        seen.add(s.site)


def _apply(value: torch.Tensor, delta: torch.Tensor, positions: Positions) -> None:
    """Inside a trace: add ``delta`` (cast to the value's device and dtype) in place."""
    delta = cast_like(delta, value)
    if positions == "all":
        value[:] += delta
    else:
        value[:, -1] += delta


def _plan(model: LoadedModel, steers: Sequence[Steer], positions: Positions) -> list[tuple]:
    """Checked steers in execution order as (site, envoy, delta); ``_apply`` casts each delta
    to its activation's device and dtype where it is added."""
    if positions not in ("all", "response"):
        raise ValueError(f"positions must be 'all' or 'response', got {positions!r}")
    _check_steers(model, steers)
    return [(s.site, resolve(model.lm, module_path(model.arch, s.site)), s.delta)
            for s in sorted(steers, key=lambda s: s.site.order)]


def _apply_plan(plan: list[tuple], positions: Positions) -> None:
    """Inside a trace: add every planned steer at its site."""
    for site, envoy, delta in plan:
        _apply(envoy_value(envoy, site), delta, positions)


@torch.no_grad()
def generate_steered(model: LoadedModel, examples: Sequence[Encoded], steers: Sequence[Steer], *,
                     max_new_tokens: int, positions: Positions = "response", batch_size: int = 16,
                     progress: bool = False, sampling: Sampling | None = None) -> list[str]:
    """Continuations with every ``Steer`` applied at every generation step.

    One nnsight ``generate`` trace per batch; the additions live inside the trace, so
    nothing is left on the model afterwards. With no steers this is plain decoding.
    Greedy unless ``sampling`` (see ``Sampling``) says otherwise; example ``i`` seeds its
    own stream, so a seed gives the same texts at any batch size.

    Example:
        >>> import torch
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-llama")
        >>> v = torch.ones(m.d_model)
        >>> out = generate_steered(m, [m.chat.encode("Hi")], [Steer("resid_pre@1", v, 4.0)],
        ...                        max_new_tokens=3)
        >>> len(out)
        1
    """
    return generate_steered_grid(model, examples, [steers], max_new_tokens=max_new_tokens, positions=positions,
                                 batch_size=batch_size, progress=progress, sampling=sampling)[0]


def _apply_rows(value: torch.Tensor, deltas: torch.Tensor, positions: Positions) -> None:
    """Inside a trace: add row r's ``deltas[r]`` to row r of ``value`` (cast to its dtype)."""
    deltas = cast_like(deltas, value)
    if positions == "all":
        value[:] += deltas[:, None, :]
    else:
        value[:, -1] += deltas


DECODE_ROWS = 256
"""Rows (prompts × conditions) ``generate_steered_grid`` decodes together by default. A decode step
multiplies [rows, d] activations by every weight matrix, and on a 2-core CPU those products run
far below the machine's matrix throughput at a few dozen rows: 16 conditions × 16 prompts decoded
1.39× faster at 256 rows a step than at 64 (``benchmarks/steered_eval.py``; the refusal dial's
generation 1.51× at 288 against 48, ``benchmarks/decode_floor.py``), with identical tokens. The
KV cache of 256 short answers is small beside the weights."""


@torch.no_grad()
def generate_steered_grid(model: LoadedModel, examples: Sequence[Encoded],
                          conditions: Sequence[Sequence[Steer]], *, max_new_tokens: int,
                          positions: Positions = "response", batch_size: int = 16, max_rows: int = DECODE_ROWS,
                          progress: bool = False, sampling: Sampling | None = None,
                          desc: str = "generate") -> list[list[str]]:
    """``texts[condition][example]``: ``generate_steered`` for every condition (a list of
    ``Steer``s; empty = unsteered), with the conditions decoded together.

    Each batch holds the prompts ``generate_steered`` would batch (same order, same left padding)
    once per condition of a chunk, up to ``max_rows`` rows; every row carries its own condition's
    additions (zero where a condition does not steer a site). On a CPU, decoding is bound by
    reading the weights once per step, so a step for 8 conditions costs little more than for one.
    With ``positions="response"`` nothing is added before the last prompt token, so each prompt
    batch's prefix (all but that token) is run once, unsteered, and its KV cache is copied to every
    condition's rows; only the last prompt token and the decoding run per condition (local models
    that decode themselves; others run every row's whole prompt). Greedy tokens equal the
    per-condition calls' and transformers' ``generate`` on whole prompts (tested); sampled rows
    seed their streams by example, as ``generate_steered`` does, so each condition sees the same draws.

    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> v = torch.ones(m.d_model)
    >>> texts = generate_steered_grid(m, [m.chat.encode("Hi")], [[], [Steer("resid_pre@1", v, 4.0)]],
    ...                               max_new_tokens=3)
    >>> [len(t) for t in texts]  # conditions × examples
    [1, 1]
    """
    if not examples:
        raise ValueError("no prompts to generate from")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if positions not in ("all", "response"):
        raise ValueError(f"positions must be 'all' or 'response', got {positions!r}")
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size and max_rows must be >= 1, got {batch_size} and {max_rows}")
    sampling = Sampling.parse(sampling)
    for steers in conditions:
        _check_steers(model, steers)
    sites = sorted({s.site for steers in conditions for s in steers}, key=lambda x: x.order)
    envoys = {site: resolve(model.lm, module_path(model.arch, site)) for site in sites}
    per_cond = [{s.site: s.delta for s in steers} for steers in conditions]
    tok = model.tokenizer
    fast = _decodes_itself(model)
    share = fast and positions == "response" and min(len(e.ids) for e in examples) >= 2
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    texts = [[""] * len(examples) for _ in conditions]
    base = sampling.base_seed()
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    jobs = []
    for idx in batches:
        per = max(1, max_rows // len(idx))
        jobs += [(idx, list(range(c, min(c + per, len(conditions))))) for c in range(0, len(conditions), per)]
    prefix = _Prefix(model)
    for idx, conds in tqdm(jobs, desc=desc, disable=not progress):
        one = to_model(_pad_batch([examples[i] for i in idx], "left", tok.pad_token_id), model)
        inp = {k: v.repeat(len(conds), 1) for k, v in one.items()}  # row = condition × len(idx) + prompt
        used = [site for site in sites if any(site in per_cond[c] for c in conds)]
        plan = []
        for site in used:
            ref = next(per_cond[c][site] for c in conds if site in per_cond[c])
            rows = [per_cond[c].get(site, torch.zeros_like(ref)) for c in conds for _ in idx]
            plan.append((site, envoys[site], torch.stack(rows)))
        if fast:
            cache = None
            if share:
                cache = prefix.rows(idx, one, torch.arange(len(idx)).repeat(len(conds)))
                inp = {"input_ids": inp["input_ids"][:, -1:], "attention_mask": inp["attention_mask"],
                       "position_ids": inp["position_ids"][:, -1:]}
            new = _decode(model, inp, _row_steer(model, plan, positions), cache=cache,
                          max_new_tokens=max_new_tokens, sampling=sampling, base_seed=base, seeds=idx * len(conds))
        else:
            new = _generate_rows(model, inp, plan, positions, max_new_tokens,
                                 _gen_kwargs(model, max_new_tokens, sampling, base, idx * len(conds)))
        for r, t in enumerate(new):
            texts[conds[r // len(idx)]][idx[r % len(idx)]] = t
    return texts


def _generate_rows(model: LoadedModel, inp: dict, plan: list[tuple], positions: Positions, max_new_tokens: int,
                   gen: dict) -> list[str]:
    """One grid batch by transformers' ``generate`` (every row decoded to the longest answer), for
    remote models and generation configs with logits processors: ``plan``'s per-row additions at
    every step inside one nnsight trace, or plain ``generate`` when nothing steers a local model."""
    kwargs = {"input_ids": inp["input_ids"], "attention_mask": inp["attention_mask"]}
    if not plan and not model.remote:
        ids = model.hf.generate(**kwargs, **gen)
    else:
        with warnings.catch_warnings(), model.lm.generate(**gen, **_remote(model)) as tracer:
            warnings.filterwarnings("ignore", message=".*was never reached.*")  # early stop: expected
            with tracer.invoke(kwargs):
                for _step in tracer.iter[:max_new_tokens]:
                    for site, envoy, d in plan:
                        _apply_rows(envoy_value(envoy, site), d, positions)
            with tracer.invoke():
                ids = tracer.result.save()
    return model.tokenizer.batch_decode(ids[:, inp["input_ids"].shape[1]:], skip_special_tokens=True)


def _row_steer(model: LoadedModel, plan: list[tuple], positions: Positions) -> Step:
    """``generate_steered_grid``'s ``Step``: each ``(site, envoy, deltas)`` of ``plan`` adds
    ``deltas[row]`` to the rows still decoding, at every forward (``_apply_rows``)."""

    def step(inputs: dict, cache: Any, rows: torch.Tensor, first: bool) -> tuple[torch.Tensor, Any]:
        live = [(site, envoy, d[rows]) for site, envoy, d in plan]

        def edit() -> None:
            for site, envoy, d in live:
                _apply_rows(envoy_value(envoy, site), d, positions)

        return _forward_step(model, inputs, cache, edit if live else None)

    return step


@torch.no_grad()
def steered_logits(model: LoadedModel, examples: Sequence[Encoded], steers: Sequence[Steer], *,
                   positions: Positions = "all", batch_size: int = 16) -> torch.Tensor:
    """Next-token logits after each example's last token, with ``steers`` applied: [n, vocab].

    One teacher-forced forward per batch (left-padded, explicit position ids, so batching
    does not change the result). ``positions="all"`` adds every steer at every position, as
    hook-based libraries do; ``"response"`` only at the last position. With no steers these
    are the model's own logits. The benchmark uses this for logit parity with the peers.

    Example:
        >>> import torch
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-llama")
        >>> ex = [m.chat.encode("Hi")]
        >>> plain = steered_logits(m, ex, [])
        >>> pushed = steered_logits(m, ex, [Steer("resid_post@1", torch.ones(m.d_model), 3.0)])
        >>> plain.shape == pushed.shape, bool((plain != pushed).any())
        (True, True)
    """
    if not examples:
        raise ValueError("no prompts to score")
    plan = _plan(model, steers, positions)
    out = []
    for start in range(0, len(examples), batch_size):
        inp = to_model(_pad_batch(examples[start:start + batch_size], "left", model.tokenizer.pad_token_id),
                       model)
        with model.lm.trace(inp, **_remote(model)):
            _apply_plan(plan, positions)
            logits = model.lm.output.logits[:, -1].save()
        out.append(logits.float().cpu())
    return torch.cat(out)


class Steered:
    """A model handle whose ``generate`` applies fixed ``Steer``s; see ``steered``."""

    def __init__(self, model: LoadedModel, steers: Sequence[Steer], positions: Positions) -> None:
        _check_steers(model, steers)
        self.model, self.steers, self.positions = model, tuple(steers), positions
        self.active = True

    def generate(self, examples: Sequence[Encoded], *, max_new_tokens: int, batch_size: int = 16,
                 progress: bool = False, sampling: Sampling | None = None) -> list[str]:
        if not self.active:
            raise RuntimeError("this steering context has exited; open a new `steered(...)` block")
        return generate_steered(self.model, examples, self.steers, max_new_tokens=max_new_tokens,
                                positions=self.positions, batch_size=batch_size, progress=progress,
                                sampling=sampling)


@contextmanager
def steered(model: LoadedModel, steers: Sequence[Steer], *,
            positions: Positions = "response") -> Iterator[Steered]:
    """Context-manager form of ``generate_steered``: steers are checked on entry, and the
    handle stops working on exit. The model itself is never modified (each ``generate`` is
    one nnsight trace), so nothing can be left behind, even after an error.

    Example:
        >>> import torch
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-llama")
        >>> with steered(m, [Steer("resid_pre@1", torch.ones(m.d_model), 2.0)]) as s:
        ...     out = s.generate([m.chat.encode("Hi")], max_new_tokens=2)
    """
    handle = Steered(model, steers, positions)
    try:
        yield handle
    finally:
        handle.active = False


# ----------------------------------------------------------------------------------------
# Perturbation ratio and coefficient search
# ----------------------------------------------------------------------------------------

def coef_for_ratio(ratio: float, vector_norm: float, activation_norm: float) -> float:
    """The coefficient whose addition has ``ratio = coef × ‖v‖ / ‖activation‖``.

    >>> coef_for_ratio(0.5, vector_norm=2.0, activation_norm=40.0)
    10.0
    """
    if vector_norm <= 0 or activation_norm <= 0:
        raise ValueError("vector and activation norms must be positive")
    return ratio * activation_norm / vector_norm


def perturbation_ratio(coef: float, vector_norm: float, activation_norm: float) -> float:
    """``coef × ‖v‖ / ‖activation‖``: the seed found 0.5–0.8 best, 1.0–1.3 breaking, >1.3 broken."""
    return coef * vector_norm / activation_norm


@torch.no_grad()
def activation_norms(model: LoadedModel, examples: Sequence[Encoded], sites: Sequence[Site | str], *,
                     batch_size: int = 16, progress: bool = False) -> dict[str, float]:
    """Per-site mean L2 norm of the activation at response-producing positions.

    The norm table behind perturbation ratios: for each site, the mean over examples of
    ``‖activation‖`` at every position from the last prompt token on (the ``response`` column
    of ``position_norms``).
    """
    return {s: v["response"] for s, v in position_norms(model, examples, sites, batch_size=batch_size,
                                                         progress=progress).items()}


def position_norms(model: LoadedModel, examples: Sequence[Encoded], sites: Sequence[Site | str], *,
                   batch_size: int = 16, progress: bool = False) -> dict[str, dict[str, float]]:
    """Per site, the mean over examples of each example's mean ``‖activation‖`` over four
    position sets, from one forward pass: ``response`` (from the last prompt token on, where
    response steering adds its vector), ``all``, ``no_first`` (all but position 0) and ``first``
    (position 0 alone: the attention-sink token, whose norm is often many times the rest).

    Example (a tiny random model):
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-llama")
        >>> t = position_norms(m, [m.chat.encode("Hi", "Hello there")], ["resid_post@0"])
        >>> sorted(t["resid_post@0"])
        ['all', 'first', 'no_first', 'response']
    """
    from .activations import extract

    sites = [Site.parse(s) if isinstance(s, str) else s for s in sites]
    acts = extract(model, examples, sites, position="all", batch_size=batch_size, cache=False,
                   progress=progress)
    table = {}
    for s in sites:
        norms = [a.norm(dim=-1) for a in acts.per_example(s)]
        sets = {"response": [n[max(e.prompt_len - 1, 0):].mean() for n, e in zip(norms, examples, strict=True)],
                "all": [n.mean() for n in norms], "no_first": [n[1:].mean() for n in norms],
                "first": [n[0] for n in norms]}
        table[str(s)] = {k: float(torch.stack(v).mean()) for k, v in sets.items()}
    return table


@dataclass(frozen=True)
class SearchPoint:
    coef: float
    trait: float
    coherence: float


@dataclass(frozen=True)
class SearchResult:
    """Every coefficient tried, and the best one whose coherence stays above the floor."""

    points: tuple[SearchPoint, ...]
    best: SearchPoint | None
    floor: float


def search_coefficient(evaluate: Callable[[float], tuple[float, float]], *, start: float,
                       floor: float = 50.0, grow: float = 2.0, max_coef: float = 64.0,
                       refine: int = 2) -> SearchResult:
    """Adaptive search for the coefficient with the highest trait score at coherence ≥ floor.

    ``evaluate(coef) -> (trait, coherence)`` (e.g. judge means over training questions).
    Coefficients grow geometrically from ``start`` until coherence drops below ``floor`` (or
    ``max_coef``); then ``refine`` bisection steps between the last coherent and the first
    incoherent coefficient. Negative ``start`` searches the negative direction.

    >>> r = search_coefficient(lambda c: (min(100, 20 * c), 100 - 10 * c), start=1, floor=50)
    >>> [p.coef for p in r.points], r.best.coef
    ([1, 2.0, 4.0, 8.0, 6.0, 5.0], 5.0)
    """
    if start == 0 or grow <= 1:
        raise ValueError("start must be non-zero and grow > 1")
    points: list[SearchPoint] = []

    def run(c: float) -> SearchPoint:
        t, h = evaluate(c)
        p = SearchPoint(c, float(t), float(h))
        points.append(p)
        return p

    good, bad = None, None
    c = start
    while abs(c) <= max_coef:
        p = run(c)
        if p.coherence >= floor:
            good = p
            c *= grow
        else:
            bad = p
            break
    if good is not None and bad is not None:
        lo, hi = good.coef, bad.coef
        for _ in range(refine):
            mid = (lo + hi) / 2
            p = run(mid)
            lo, hi = (mid, hi) if p.coherence >= floor else (lo, mid)
    ok = [p for p in points if p.coherence >= floor]
    best = max(ok, key=lambda p: (p.trait, -abs(p.coef))) if ok else None
    return SearchResult(tuple(points), best, floor)
