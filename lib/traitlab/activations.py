"""Batched activation extraction: many sites × layers in one forward pass.

Positions:

- ``last``: the last prompt token (``ids[prompt_len - 1]``), where the model decides how
  to respond;
- ``mean``: the mean over response tokens (``ids[prompt_len:]``);
- ``all``: every token, concatenated over examples (``ActivationSet.lengths`` splits them).

Batches are sorted by length, padded on the chosen side with an attention mask and
explicit position ids, so batch size and padding side do not change the result. One
nnsight trace per batch reads every requested site, reduces it to the position inside
the trace, and stops the forward pass after the last layer needed.

Results are cached on disk under a key made of the model fingerprint, dtype, the
token ids of every example, the sites and the position. Each batch is written
atomically as a shard; an interrupted run resumes from the shards it finds, and a
finished run consolidates them into one safetensors file.

``stream=True`` keeps nothing in memory: each batch goes to its shard on disk and the
result is a ``DiskActivations`` that reads one site at a time (every layer's per-token
activations of thousands of prompts do not fit in RAM; one site's usually does).

Example:
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> ex = [m.chat.encode("Hello", "Hi there"), m.chat.encode("Bye", "See you")]
    >>> acts = extract(m, ex, [Site("resid_post", 1)], position="mean", cache=False, progress=False)
    >>> tuple(acts[Site("resid_post", 1)].shape)
    (2, 64)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from .atomic import load_tensors, save_tensors, stable_hash, write_json
from .chat import Encoded
from .models import LoadedModel
from .paths import cache_dir
from .sites import Site, check_sites, envoy_value, module_path, resolve

Position = Literal["last", "mean", "all"]
POSITIONS: tuple[str, ...] = ("last", "mean", "all")
PaddingSide = Literal["left", "right"]


class ExtractionError(ValueError):
    """Bad input to ``extract`` (empty prompt set, no response for 'mean', ...)."""


@dataclass(frozen=True)
class ActivationSet:
    """Activations per site. ``last``/``mean``: [n_examples, d]; ``all``: [n_tokens, d]."""

    sites: tuple[Site, ...]
    position: str
    data: dict[Site, torch.Tensor] = field(repr=False)
    lengths: torch.Tensor | None = field(default=None, repr=False)  # tokens per example ('all')

    def __getitem__(self, site: Site | str) -> torch.Tensor:
        site = Site.parse(site) if isinstance(site, str) else site
        if site not in self.data:
            raise KeyError(f"{site} was not extracted; have {', '.join(map(str, self.sites))}")
        return self.data[site]

    def per_example(self, site: Site | str) -> list[torch.Tensor]:
        """For position 'all': one [len_i, d] tensor per example."""
        if self.lengths is None:
            raise ValueError("per_example is only for position 'all'")
        return list(torch.split(self[site], self.lengths.tolist()))


@dataclass(frozen=True)
class DiskActivations:
    """Activations streamed to disk by ``extract(..., stream=True)``.

    Same reading interface as ``ActivationSet``; ``acts[site]`` reads that site's rows from
    every shard (memory holds one site, never all of them), in example order.
    """

    sites: tuple[Site, ...]
    position: str
    folder: Path
    n_examples: int
    lengths: torch.Tensor | None = field(default=None, repr=False)

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard_*.safetensors"))

    def __getitem__(self, site: Site | str) -> torch.Tensor:
        from safetensors import safe_open

        site = Site.parse(site) if isinstance(site, str) else site
        if site not in self.sites:
            raise KeyError(f"{site} was not extracted; have {', '.join(map(str, self.sites))}")
        lengths = self.lengths
        starts = None if lengths is None else torch.cumsum(lengths, 0) - lengths
        out: torch.Tensor | None = None
        for shard in self._shards():
            with safe_open(str(shard), framework="pt") as f:
                block, idx = f.get_tensor(str(site)), f.get_tensor("index").tolist()
            if out is None:
                rows = self.n_examples if lengths is None else int(lengths.sum())
                out = torch.empty(rows, block.shape[-1], dtype=block.dtype)
            _place_rows(out, block, idx, lengths, starts)
        assert out is not None
        return out

    def per_example(self, site: Site | str) -> list[torch.Tensor]:
        """For position 'all': one [len_i, d] tensor per example."""
        if self.lengths is None:
            raise ValueError("per_example is only for position 'all'")
        return list(torch.split(self[site], self.lengths.tolist()))


def _place_rows(out: torch.Tensor, block: torch.Tensor, idx: list[int], lengths: torch.Tensor | None,
                starts: torch.Tensor | None) -> None:
    """Write a shard's rows (examples ``idx``, in shard order) into ``out`` in example order."""
    if lengths is None or starts is None:
        out[idx] = block
        return
    offset = 0
    for i in idx:
        n = int(lengths[i])
        out[int(starts[i]):int(starts[i]) + n] = block[offset:offset + n]
        offset += n


def _pad_batch(batch: Sequence[Encoded], side: PaddingSide, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(e.ids)
        mask[i, sl] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def _reducers(batch: Sequence[Encoded], side: PaddingSide, width: int, position: str):
    """Index tensors that pick the wanted positions out of a padded [b, width, d] tensor."""
    offsets = [width - len(e.ids) if side == "left" else 0 for e in batch]
    if position == "last":
        return torch.tensor([o + e.prompt_len - 1 for o, e in zip(offsets, batch, strict=True)])
    weights = torch.zeros(len(batch), width)
    for i, (o, e) in enumerate(zip(offsets, batch, strict=True)):
        lo = o + (e.prompt_len if position == "mean" else 0)
        hi = o + len(e.ids)
        weights[i, lo:hi] = 1.0 / (hi - lo) if position == "mean" else 1.0
    return weights


def _remote(model: LoadedModel) -> dict:
    """nnsight's ``remote=`` for a trace, only when set (NDIF, or ``"local"`` simulation).

    A remote trace ships its code; traitlab is not installed on the server, so its functions
    used inside traces (site lookups, steering adds) are registered to travel by value."""
    if not getattr(model, "remote", False):
        return {}
    import nnsight

    nnsight.register("traitlab")
    return {"remote": model.remote}


def _run_batch(model: LoadedModel, batch: Sequence[Encoded], sites: Sequence[Site],
               position: str, side: PaddingSide) -> dict[Site, torch.Tensor]:
    inputs = _pad_batch(batch, side, model.tokenizer.pad_token_id)
    width = inputs["input_ids"].shape[1]
    red = _reducers(batch, side, width, position)
    lm = model.lm
    ordered = sorted(sites, key=lambda s: s.order)
    envoys = [resolve(lm, module_path(model.arch, s)) for s in ordered]
    saved: list[torch.Tensor] = []
    rows = torch.arange(len(batch))
    with torch.no_grad(), lm.trace(inputs, **_remote(model)) as tracer:
        for site, envoy in zip(ordered, envoys, strict=True):
            h = envoy_value(envoy, site)  # [b, width, d]
            if position == "last":
                out = h[rows, red]
            elif position == "mean":
                out = torch.einsum("bp,bpd->bd", red.to(h.dtype), h)
            else:
                out = h[red.bool()]
            saved.append(out.save())
        tracer.stop()
    return {s: t.detach().float().cpu() for s, t in zip(ordered, saved, strict=True)}


def cache_key(model: LoadedModel, examples: Sequence[Encoded], sites: Sequence[Site],
              position: str, stream: bool = False) -> str:
    """The activation-cache key: model fingerprint, dtype, token ids, sites, position, layout."""
    key = {
        "model": model.fingerprint, "dtype": model.dtype,
        "examples": stable_hash([(e.ids, e.prompt_len) for e in examples], 32),
        "sites": sorted(map(str, sites)), "position": position, "format": 1,
    }
    if stream:
        key["layout"] = "stream"
    return stable_hash(key, 24)


def extract(model: LoadedModel, examples: Sequence[Encoded], sites: Sequence[Site], *,
            position: Position = "last", batch_size: int = 16, padding_side: PaddingSide = "left",
            cache: bool | Path = True, progress: bool = True,
            stream: bool = False) -> ActivationSet | DiskActivations:
    """Activations of ``examples`` at every site in ``sites``, reduced to ``position``.

    ``cache``: True uses ``$TRAITLAB_CACHE/activations``, a path uses that folder, False
    computes in memory only. ``stream``: write each batch to its shard and return a
    ``DiskActivations`` (peak memory: the model plus one batch); needs a cache folder.

    Example (streamed):
        >>> import tempfile
        >>> from pathlib import Path
        >>> from traitlab.models import load_model
        >>> m = load_model("tiny-llama")
        >>> ex = [m.chat.encode("Hello", "Hi there"), m.chat.encode("Bye", "See you")]
        >>> acts = extract(m, ex, [Site("resid_post", 0)], position="all", cache=Path(tempfile.mkdtemp()),
        ...                stream=True, progress=False)
        >>> [tuple(a.shape) for a in acts.per_example("resid_post@0")] == [(len(e.ids), 64) for e in ex]
        True
    """
    sites = tuple(dict.fromkeys(sites))
    if not examples:
        raise ExtractionError("no examples to extract: the prompt set is empty")
    if not sites:
        raise ExtractionError("no sites given; e.g. [Site('resid_post', 12)]")
    if position not in POSITIONS:
        raise ExtractionError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if padding_side not in ("left", "right"):
        raise ExtractionError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    if stream and not cache:
        raise ExtractionError("stream=True writes each batch to disk: pass cache=True (the cache folder) "
                              "or cache=Path('some/folder'), not cache=False")
    if position == "mean" and any(e.prompt_len == len(e.ids) for e in examples):
        raise ExtractionError("position 'mean' averages response tokens, but some examples have no response")
    check_sites(list(sites), model.arch, model.n_layers)

    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    folder: Path | None = None
    if cache:
        base = Path(cache) if isinstance(cache, Path) else cache_dir("activations")
        folder = base / cache_key(model, examples, sites, position, stream)
        final = folder / "acts.safetensors"
        if final.exists():
            return _assemble(load_tensors(final), sites, position, len(examples))
        if stream and (folder / "manifest.json").exists():
            return _on_disk(folder, sites, position, examples)
        folder.mkdir(parents=True, exist_ok=True)
        layout = folder / "layout.json"
        if layout.exists() and layout.read_text() != f"{batch_size}\n":
            shutil.rmtree(folder)  # shards from another batch size: start over
            folder.mkdir(parents=True)
        layout.write_text(f"{batch_size}\n")

    # Results are written straight into preallocated tensors in example order, so memory holds
    # every activation once (plus one batch), never a list of shards and a merged copy.
    lengths = torch.tensor([len(e.ids) for e in examples])
    starts = torch.cumsum(lengths, 0) - lengths
    rows_total = int(lengths.sum()) if position == "all" else len(examples)
    merged: dict[str, torch.Tensor] = {}

    def place(shard: dict[str, torch.Tensor]) -> None:
        idx = shard["index"].tolist()
        for site in sites:
            key = str(site)
            block = shard[key]
            if key not in merged:
                merged[key] = torch.empty(rows_total, block.shape[-1], dtype=block.dtype)
            _place_rows(merged[key], block, idx, lengths if position == "all" else None, starts)

    for b, idx in enumerate(tqdm(batches, desc="extract", unit="batch", disable=not progress)):
        shard_file = folder / f"shard_{b:05d}.safetensors" if folder else None
        if shard_file is not None and shard_file.exists():
            if not stream:
                place(load_tensors(shard_file))
            continue
        batch = [examples[i] for i in idx]
        out = _run_batch(model, batch, sites, position, padding_side)
        shard = {str(s): t for s, t in out.items()}
        shard["index"] = torch.tensor(idx)
        if shard_file is not None:
            save_tensors(shard_file, shard)
        if not stream:  # streamed: the shard on disk is the result
            place(shard)

    if stream:
        assert folder is not None
        write_json(folder / "manifest.json", {"model": model.record(), "n_examples": len(examples),
                                              "sites": [str(s) for s in sites], "position": position,
                                              "layout": "stream", "n_shards": len(batches)})
        return _on_disk(folder, sites, position, examples)
    if position == "all":
        merged["lengths"] = lengths
    if folder is not None:
        save_tensors(folder / "acts.safetensors", merged)
        write_json(folder / "manifest.json", {"model": model.record(), "n_examples": len(examples),
                                              "sites": [str(s) for s in sites], "position": position})
        for f in folder.glob("shard_*.safetensors"):
            f.unlink()
    return _assemble(merged, sites, position, len(examples))


def _on_disk(folder: Path, sites: Sequence[Site], position: str,
             examples: Sequence[Encoded]) -> DiskActivations:
    lengths = torch.tensor([len(e.ids) for e in examples]) if position == "all" else None
    return DiskActivations(tuple(sites), position, folder, len(examples), lengths)


def _assemble(merged: dict[str, torch.Tensor], sites: Sequence[Site], position: str,
              n: int) -> ActivationSet:
    data = {s: merged[str(s)] for s in sites}
    return ActivationSet(tuple(sites), position, data, merged.get("lengths"))
