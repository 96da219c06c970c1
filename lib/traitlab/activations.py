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

Nothing on disk is trusted by its existence alone. Each shard is written with a record of
its size and sha256 (``shard_NNNNN.json``), and the manifest lists the digest of every file
that makes up a result. A resumed run re-hashes the shards it reuses; reading a cached
result checks its size and digest. A truncated, altered or unrecorded file is deleted and
recomputed with a ``CacheRepairWarning``; where nothing can be recomputed (reading a
``DiskActivations``), an ``ActivationCacheError`` names the file and the fix.

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

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from . import cachelog
from .atomic import (
    load_tensors,
    save_tensors,
    sha256_file,
    stable_hash,
    write_bytes,
    write_json,
    write_text,
)
from .chat import Encoded
from .models import LoadedModel
from .paths import cache_dir
from .progress import tqdm
from .sites import Site, check_sites, envoy_value, module_path, resolve

Position = Literal["last", "mean", "all"]
POSITIONS: tuple[str, ...] = ("last", "mean", "all")
PaddingSide = Literal["left", "right"]


class ExtractionError(ValueError):
    """Bad input to ``extract`` (empty prompt set, no response for 'mean', ...)."""


class ActivationCacheError(RuntimeError):
    """A cached activation file is missing or damaged and cannot be recomputed here."""


class CacheRepairWarning(UserWarning):
    """A damaged cached activation file was found, deleted, and is being recomputed."""


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

    ``shards`` maps each shard's file name to its record (``{"sha256", "bytes"}``, from the
    manifest). Every read checks each shard's size; its digest is checked on the first read
    and again whenever the file's size or modification time changes. A missing or damaged
    shard raises ``ActivationCacheError`` (rerunning the same ``extract`` recomputes it).
    """

    sites: tuple[Site, ...]
    position: str
    folder: Path
    n_examples: int
    lengths: torch.Tensor | None = field(default=None, repr=False)
    shards: dict[str, dict] = field(default_factory=dict, repr=False, compare=False)
    checked: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    def _shards(self) -> list[Path]:
        if self.shards:
            return [self.folder / name for name in sorted(self.shards)]
        return sorted(self.folder.glob(SHARD_GLOB))  # a hand-made handle: no records to check

    def _verify(self, shard: Path) -> None:
        record = self.shards.get(shard.name)
        if record is None:
            return
        fix = "rerun the same extract(..., stream=True) call to recompute it"
        try:
            stat = shard.stat()
        except FileNotFoundError:
            raise ActivationCacheError(f"activation shard {shard} is missing; {fix}") from None
        if stat.st_size != record["bytes"]:
            raise ActivationCacheError(f"activation shard {shard} is damaged ({stat.st_size} bytes, "
                                       f"its record says {record['bytes']}); {fix}")
        stamp = (stat.st_size, stat.st_mtime_ns)
        if self.checked.get(shard.name) == stamp:
            return
        if sha256_file(shard) != record["sha256"]:
            raise ActivationCacheError(f"activation shard {shard} is damaged (sha256 differs from its "
                                       f"record); {fix}")
        self.checked[shard.name] = stamp

    def __getitem__(self, site: Site | str) -> torch.Tensor:
        from safetensors import safe_open

        site = Site.parse(site) if isinstance(site, str) else site
        if site not in self.sites:
            raise KeyError(f"{site} was not extracted; have {', '.join(map(str, self.sites))}")
        lengths = self.lengths
        starts = None if lengths is None else torch.cumsum(lengths, 0) - lengths
        out: torch.Tensor | None = None
        for shard in self._shards():
            self._verify(shard)
            try:
                with safe_open(str(shard), framework="pt") as f:
                    block, idx = f.get_tensor(str(site)), f.get_tensor("index").tolist()
            except Exception as err:  # noqa: BLE001 - any unreadable shard gets the same one-line error
                raise ActivationCacheError(f"activation shard {shard} cannot be read ({type(err).__name__}); "
                                           "rerun the same extract(..., stream=True) call to recompute it") from None
            if out is None:
                rows = self.n_examples if lengths is None else int(lengths.sum())
                out = torch.empty(rows, block.shape[-1], dtype=block.dtype)
            _place_rows(out, block, idx, lengths, starts)
        if out is None:
            raise ActivationCacheError(f"no activation shards in {self.folder}; rerun the same "
                                       "extract(..., stream=True) call to recompute them")
        return out

    def per_example(self, site: Site | str) -> list[torch.Tensor]:
        """For position 'all': one [len_i, d] tensor per example."""
        if self.lengths is None:
            raise ValueError("per_example is only for position 'all'")
        return list(torch.split(self[site], self.lengths.tolist()))


# ----------------------------------------------------------------------------------------
# Files that cannot lie: every cached file carries its size and sha256
# ----------------------------------------------------------------------------------------

SHARD_GLOB = "shard_*.safetensors"
FINAL = "acts.safetensors"
MANIFEST = "manifest.json"


def _record_path(shard: Path) -> Path:
    """A shard's own record (``shard_00003.json``), written right after the shard."""
    return shard.with_suffix(".json")


def _write_recorded(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write ``tensors`` atomically as safetensors; return ``{"sha256", "bytes"}`` of those bytes."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()})
    write_bytes(path, data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, truncated or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _valid_record(rec: object) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("sha256"), str) and len(rec["sha256"]) == 64
            and isinstance(rec.get("bytes"), int))


def _fault(path: Path, record: dict | None) -> str | None:
    """Why ``path`` does not match ``record`` (None: it matches); size first, then sha256."""
    if not _valid_record(record):
        return "no valid record of its size and sha256"
    assert record is not None
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != record["bytes"]:
        return f"{size} bytes, its record says {record['bytes']}"
    if sha256_file(path) != record["sha256"]:
        return "sha256 differs from its record"
    return None


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _discard(paths: Sequence[Path], why: str) -> None:
    """Warn once and delete ``paths`` (a damaged file and its record), so they are recomputed."""
    warnings.warn(f"activation cache: {paths[0]} is damaged ({why}); deleting it and recomputing",
                  CacheRepairWarning, stacklevel=4)  # -> the caller of extract
    for p in paths:
        p.unlink(missing_ok=True)


def _load_final(folder: Path, sites: Sequence[Site], rows: int) -> dict[str, torch.Tensor] | None:
    """The consolidated result, verified against the manifest, or None (deleted, to recompute).

    A manifest from before digests were recorded (no ``acts`` entry) is accepted when the file
    loads with every site and the right row count, and its digest is then recorded."""
    final, manifest_path = folder / FINAL, folder / MANIFEST
    manifest = _read_json(manifest_path)
    legacy = manifest is not None and "acts" not in manifest
    why = None
    if manifest is None:
        why = f"{MANIFEST} is missing or unreadable"
    elif not legacy:
        why = _fault(final, manifest.get("acts"))
    merged = None
    if why is None:
        try:
            merged = load_tensors(final)
        except Exception as err:  # noqa: BLE001 - a file safetensors cannot parse is damaged, whatever the error
            why = f"safetensors cannot load it: {type(err).__name__}"
    if merged is not None:
        bad = [str(s) for s in sites if str(s) not in merged or merged[str(s)].shape[0] != rows]
        if bad:
            why, merged = f"sites missing or with the wrong row count: {', '.join(bad)}", None
    if merged is None:
        _discard([final, manifest_path], why or "unreadable")
        return None
    if legacy:
        assert manifest is not None
        write_json(manifest_path, {**manifest, "acts": {"sha256": sha256_file(final), "bytes": final.stat().st_size}})
    return merged


def _stream_manifest(folder: Path) -> dict[str, dict] | None:
    """The shard records of a finished streamed result whose every shard checks out, or None.

    Damaged shards are deleted (their records too) and the manifest removed, so the resumed
    extraction recomputes exactly those. Shards the manifest does not list are ignored."""
    manifest_path = folder / MANIFEST
    manifest = _read_json(manifest_path)
    records = manifest.get("shards") if manifest else None
    n_shards = manifest.get("n_shards") if manifest else None
    expected = [f"shard_{b:05d}.safetensors" for b in range(n_shards if isinstance(n_shards, int) else 0)]
    if not isinstance(records, dict) or not expected or sorted(records) != expected:
        warnings.warn(f"activation cache: {manifest_path} is unreadable or incomplete; checking every "
                      "shard against its own record and recomputing what does not match",
                      CacheRepairWarning, stacklevel=3)
        manifest_path.unlink(missing_ok=True)
        return None
    ok = True
    for name in expected:
        shard = folder / name
        why = _fault(shard, records[name])
        if why is not None:
            _discard([shard, _record_path(shard)], why)
            ok = False
    if not ok:
        manifest_path.unlink(missing_ok=True)
        return None
    return records


def _reuse_shard(shard: Path, idx: list[int], sites: Sequence[Site],
                 load: bool) -> tuple[dict | None, dict[str, torch.Tensor] | None]:
    """(record, tensors when ``load``) of a shard left by an earlier run, if it matches its own
    record (and, loaded, holds this batch's examples and sites); otherwise the shard and its
    record are deleted and (None, None) returned, so the batch is recomputed."""
    from safetensors.torch import load as load_bytes

    record = _read_json(_record_path(shard))
    if not load:
        why = _fault(shard, record)
        if why is not None:
            _discard([shard, _record_path(shard)], why)
            return None, None
        return record, None
    tensors, why = None, None
    if not _valid_record(record):
        why = "no valid record of its size and sha256"
    else:
        assert record is not None
        data = shard.read_bytes()  # one read: the bytes hashed are the bytes loaded
        if len(data) != record["bytes"]:
            why = f"{len(data)} bytes, its record says {record['bytes']}"
        elif hashlib.sha256(data).hexdigest() != record["sha256"]:
            why = "sha256 differs from its record"
        else:
            try:
                tensors = load_bytes(data)
            except Exception as err:  # noqa: BLE001 - a file safetensors cannot parse is damaged
                why = f"safetensors cannot load it: {type(err).__name__}"
    if tensors is not None and ("index" not in tensors or tensors["index"].tolist() != idx
                                or any(str(s) not in tensors for s in sites)):
        why, tensors = "it does not hold this batch's examples and sites", None
    if why is not None:
        _discard([shard, _record_path(shard)], why)
        return None, None
    return record, tensors


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


def input_device(model: LoadedModel) -> torch.device | None:
    """Where a model's inputs must live: its input embeddings' device (None on NDIF, whose
    weights live on the server)."""
    if getattr(model, "remote", False) is True:
        return None
    return model.hf.get_input_embeddings().weight.device


def to_model(inputs: dict[str, torch.Tensor], model: LoadedModel) -> dict[str, torch.Tensor]:
    """``inputs`` moved to ``input_device(model)`` (unchanged where that is None).

    >>> from traitlab.models import load_model
    >>> to_model({"input_ids": torch.ones(1, 2, dtype=torch.long)}, load_model("tiny-llama"))["input_ids"].device
    device(type='cpu')
    """
    device = input_device(model)
    return inputs if device is None else {k: v.to(device) for k, v in inputs.items()}


def cast_like(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``x`` on ``value``'s device and in its dtype: every intervention (steering vectors,
    sweep deltas, patched values) passes through this at the point of use, so a float32
    vector on the CPU steers a bfloat16 model on a GPU.

    >>> cast_like(torch.ones(2), torch.zeros(3, 2, dtype=torch.bfloat16)).dtype
    torch.bfloat16
    """
    return x.to(device=value.device, dtype=value.dtype)


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
    inputs = to_model(_pad_batch(batch, side, model.tokenizer.pad_token_id), model)
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
                out = h[rows.to(h.device), red.to(h.device)]
            elif position == "mean":
                out = torch.einsum("bp,bpd->bd", cast_like(red, h), h)
            else:
                out = h[red.bool().to(h.device)]
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
    lengths = torch.tensor([len(e.ids) for e in examples])
    rows_total = int(lengths.sum()) if position == "all" else len(examples)
    folder: Path | None = None
    records: dict[str, dict] = {}  # shard name -> {"sha256", "bytes"}
    checked: dict[str, tuple[int, int]] = {}  # shard name -> (size, mtime) when last verified
    if cache:
        base = Path(cache) if isinstance(cache, Path) else cache_dir("activations")
        folder = base / cache_key(model, examples, sites, position, stream)
        if not stream and (folder / FINAL).exists():
            merged_final = _load_final(folder, sites, rows_total)
            if merged_final is not None:
                cachelog.note("activations", read=len(examples), computed=0)
                return _assemble(merged_final, sites, position, len(examples))
        if stream and (folder / MANIFEST).exists():
            done = _stream_manifest(folder)
            if done is not None:
                stamps = {name: _stamp(folder / name) for name in done}
                cachelog.note("activations", read=len(examples), computed=0)
                return _on_disk(folder, sites, position, examples, done, stamps)
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob(".*.tmp"):  # left by a killed run (atomic writes never rename them)
            tmp.unlink(missing_ok=True)
        layout = folder / "layout.json"
        if layout.exists() and _read_text(layout) != f"{batch_size}\n":
            shutil.rmtree(folder)  # shards from another batch size (or an unreadable layout): start over
            folder.mkdir(parents=True)
        write_text(layout, f"{batch_size}\n")

    # Results are written straight into preallocated tensors in example order, so memory holds
    # every activation once (plus one batch), never a list of shards and a merged copy.
    starts = torch.cumsum(lengths, 0) - lengths
    merged: dict[str, torch.Tensor] = {}

    def place(shard: dict[str, torch.Tensor]) -> None:
        idx = shard["index"].tolist()
        for site in sites:
            key = str(site)
            block = shard[key]
            if key not in merged:
                merged[key] = torch.empty(rows_total, block.shape[-1], dtype=block.dtype)
            _place_rows(merged[key], block, idx, lengths if position == "all" else None, starts)

    reused = 0  # examples whose shard a killed run had already written
    for b, idx in enumerate(tqdm(batches, desc="extract", unit="batch", disable=not progress)):
        shard_file = folder / f"shard_{b:05d}.safetensors" if folder else None
        if shard_file is not None and shard_file.exists():
            record, tensors = _reuse_shard(shard_file, idx, sites, load=not stream)
            if record is not None:  # verified against its own record; otherwise deleted: recompute
                records[shard_file.name] = record
                checked[shard_file.name] = _stamp(shard_file)
                if tensors is not None:
                    place(tensors)
                reused += len(idx)
                continue
        batch = [examples[i] for i in idx]
        out = _run_batch(model, batch, sites, position, padding_side)
        shard = {str(s): t for s, t in out.items()}
        shard["index"] = torch.tensor(idx)
        if shard_file is not None:
            record = _write_recorded(shard_file, shard)
            write_json(_record_path(shard_file), record)  # after the shard: a shard without one is redone
            records[shard_file.name] = record
            checked[shard_file.name] = _stamp(shard_file)
        if not stream:  # streamed: the shard on disk is the result
            place(shard)

    if folder is not None:
        cachelog.note("activations", read=reused, computed=len(examples) - reused)
    if stream:
        assert folder is not None
        write_json(folder / MANIFEST, {"model": model.record(), "n_examples": len(examples),
                                       "sites": [str(s) for s in sites], "position": position,
                                       "layout": "stream", "n_shards": len(batches), "shards": records})
        return _on_disk(folder, sites, position, examples, records, checked)
    if position == "all":
        merged["lengths"] = lengths
    if folder is not None:
        save_tensors(folder / FINAL, merged)
        acts = {"sha256": sha256_file(folder / FINAL), "bytes": (folder / FINAL).stat().st_size}
        write_json(folder / MANIFEST, {"model": model.record(), "n_examples": len(examples),
                                       "sites": [str(s) for s in sites], "position": position, "acts": acts})
        for f in folder.glob(SHARD_GLOB):
            f.unlink()
            _record_path(f).unlink(missing_ok=True)
    return _assemble(merged, sites, position, len(examples))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _on_disk(folder: Path, sites: Sequence[Site], position: str, examples: Sequence[Encoded],
             records: dict[str, dict], checked: dict[str, tuple[int, int]]) -> DiskActivations:
    lengths = torch.tensor([len(e.ids) for e in examples]) if position == "all" else None
    return DiskActivations(tuple(sites), position, folder, len(examples), lengths, dict(records), dict(checked))


def _assemble(merged: dict[str, torch.Tensor], sites: Sequence[Site], position: str,
              n: int) -> ActivationSet:
    data = {s: merged[str(s)] for s in sites}
    return ActivationSet(tuple(sites), position, data, merged.get("lengths"))
