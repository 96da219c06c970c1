"""Token-by-token monitoring: project each generated token's activations onto trait vectors.

``monitor`` generates (greedily, or with a seeded ``Sampling``) inside one nnsight ``generate``
trace per batch and, at every
step, reads each watched site at the last position and projects it onto that watch's vector.
Step ``t`` reads the position whose output *emits* generated token ``t`` (the model's state
when it chose the token), so ``trace.scores[key][t]`` lines up with ``trace.tokens[t]``. The
readings equal a teacher-forced forward over the finished sequence (tested), but are taken
while generating, so ``Steer``s can be applied in the same pass (a steer and a watch at the
same site: the watch sees the steered value).

Scores are ``cosine`` (scale-free across layers, the default) or ``projection`` (the scalar
projection onto the unit vector, in activation units).

Example:
    >>> import torch
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> w = Watch("refusal", Site.parse("resid_post@1"), torch.ones(m.d_model))
    >>> [t] = monitor(m, [m.chat.encode("Hi")], [w], max_new_tokens=3)
    >>> len(t.tokens) == len(t.scores["refusal@resid_post@1"]) <= 3
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .activations import _pad_batch, _remote, to_model
from .chat import Encoded
from .models import LoadedModel
from .progress import tqdm
from .sites import Site, check_sites, envoy_value, module_path, resolve
from .steering import Positions, Sampling, Steer, _apply, _check_steers, _gen_kwargs

Score = Literal["cosine", "projection"]


@dataclass(frozen=True)
class Watch:
    """A vector to watch at one site; ``key`` is ``"<name>@<site>"`` (e.g. ``refusal@resid_post@12``)."""

    name: str
    site: Site
    vector: torch.Tensor = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.site, str):
            object.__setattr__(self, "site", Site.parse(self.site))
        v = torch.as_tensor(self.vector).detach().float().flatten()
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ValueError(f"{self.name}@{self.site}: the vector must be finite and non-zero")
        object.__setattr__(self, "vector", v / v.norm())

    @property
    def key(self) -> str:
        return f"{self.name}@{self.site}"


@dataclass(frozen=True)
class TokenTrace:
    """One generation: its tokens (decoded one by one) and a score per token for each watch."""

    prompt: str
    tokens: list[str]
    text: str
    token_ids: list[int]
    scores: dict[str, np.ndarray] = field(repr=False)

    def frame(self) -> pd.DataFrame:
        """Long form: one row per (token, watch) with ``step``, ``token``, ``watch``, ``score``."""
        rows = [{"step": t, "token": tok, "watch": k, "score": float(v[t])}
                for k, v in self.scores.items() for t, tok in enumerate(self.tokens)]
        return pd.DataFrame(rows)


def site_width(model: LoadedModel, site: Site) -> int:
    """Width of a site's activation: ``d_model``, or ``n_kv_heads × head_dim`` for ``v``."""
    if site.name != "v":
        return model.d_model
    cfg = model.hf.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(cfg.num_key_value_heads * head_dim)


def _check_watches(model: LoadedModel, watches: Sequence[Watch]) -> None:
    if not watches:
        raise ValueError("nothing to monitor: give at least one Watch(name, site, vector)")
    keys = [w.key for w in watches]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate watches: {sorted(k for k in keys if keys.count(k) > 1)}")
    for w in watches:
        check_sites([w.site], model.arch, model.n_layers)
        width = site_width(model, w.site)
        if w.vector.shape[0] != width:
            raise ValueError(f"{w.key}: vector has {w.vector.shape[0]} dims, the site has {width}")


@torch.no_grad()
def monitor(model: LoadedModel, examples: Sequence[Encoded], watches: Sequence[Watch], *,
            max_new_tokens: int, steers: Sequence[Steer] = (), positions: Positions = "response",
            score: Score = "cosine", batch_size: int = 8, stop_at_eos: bool = True,
            progress: bool = False, sampling: Sampling | None = None) -> list[TokenTrace]:
    """Generation with per-token scores for every watch (see the module docstring).

    Greedy unless ``sampling`` says otherwise; example ``i`` seeds its own stream (see
    ``Sampling``), so a seed gives the same tokens and scores at any batch size.
    """
    sampling = Sampling.parse(sampling)
    if not examples:
        raise ValueError("no prompts to monitor: the prompt set is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if score not in ("cosine", "projection"):
        raise ValueError(f"score must be 'cosine' or 'projection', got {score!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_watches(model, watches)
    _check_steers(model, steers)
    lm, tok, hf = model.lm, model.tokenizer, model.hf
    # one entry per site, in execution order: (site, envoy, steer delta or None, watches there);
    # ``_apply`` casts a delta to its activation's device and dtype where it is added
    sites = sorted({w.site for w in watches} | {s.site for s in steers}, key=lambda s: s.order)
    plan = [(s, resolve(lm, module_path(model.arch, s)),
             next((x.delta for x in steers if x.site == s), None),
             [w for w in watches if w.site == s]) for s in sites]
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    out: list[TokenTrace | None] = [None] * len(examples)
    cfg_eos = getattr(hf.generation_config, "eos_token_id", None)
    cfg_eos = [cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos or [])
    eos = ({tok.eos_token_id, tok.pad_token_id} | set(cfg_eos)) - {None}
    base = sampling.base_seed()
    for start in tqdm(range(0, len(order), batch_size), desc="monitor", disable=not progress):
        idx = order[start:start + batch_size]
        inp = to_model(_pad_batch([examples[i] for i in idx], "left", tok.pad_token_id), model)
        gen = _gen_kwargs(model, max_new_tokens, sampling, base, idx)
        with warnings.catch_warnings(), lm.generate(**gen, **_remote(model)) as tracer:
            warnings.filterwarnings("ignore", message=".*was never reached.*")  # early stop: expected
            reads = list().save()
            with tracer.invoke({"input_ids": inp["input_ids"], "attention_mask": inp["attention_mask"]}):
                for _step in tracer.iter[:max_new_tokens]:
                    step = []
                    for site, envoy, delta, ws in plan:
                        value = envoy_value(envoy, site)
                        if delta is not None:
                            _apply(value, delta, positions)
                        if ws:
                            step.append(value[:, -1, :].detach().float().clone())
                    reads.append(step)
            with tracer.invoke():  # runs even when every row stops early and the loop is cut short
                ids = tracer.result.save()
        new = ids[:, inp["input_ids"].shape[1]:].cpu()
        for row, i in enumerate(idx):
            n = new.shape[1]
            if stop_at_eos:
                hits = [t for t in range(n) if int(new[row, t]) in eos]
                n = hits[0] if hits else n
            token_ids = new[row, :n].tolist()
            scores = {}
            k = 0
            for _, _, _, ws in plan:
                if not ws:
                    continue
                acts = torch.stack([reads[t][k][row].cpu() for t in range(n)]) if n else torch.zeros(0, 1)
                for w in ws:
                    proj = acts @ w.vector if n else torch.zeros(0)
                    if score == "cosine" and n:
                        proj = proj / acts.norm(dim=1).clamp_min(1e-12)
                    scores[w.key] = proj.double().numpy()
                k += 1
            out[i] = TokenTrace(prompt=tok.decode(examples[i].ids), text=tok.decode(token_ids, skip_special_tokens=True),
                                tokens=[tok.decode([t]) for t in token_ids], token_ids=token_ids, scores=scores)
    return out  # type: ignore[return-value]
