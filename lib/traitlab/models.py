"""Load a model into nnsight from a hub id, a local folder, a GGUF file or the offline zoo.

``describe`` answers what a model is (architecture, layer count, width) without loading
weights, so parameters can be validated before any model work; ``load_model`` returns a
``LoadedModel`` with the nnsight wrapper, the tokenizer, the chat format and a record of
exactly which weights were used.

Model specs, tried in this order:

- ``"tiny-llama"``, ``"tiny-qwen2"``, ``"tiny-gemma3"``: tiny random models built in-process
  (seeded), for unit tests;
- a name in the offline zoo (``traitlab.zoo.ZOO``), e.g. ``"smollm2-135m-instruct"``;
- a path to a ``.gguf`` file, or a local folder with ``config.json``;
- otherwise a Hugging Face hub id such as ``"Qwen/Qwen2.5-0.5B-Instruct"`` (with ``revision``).

Example:
    >>> info = describe("smollm2-135m-instruct")
    >>> info.arch, info.n_layers, info.d_model
    ('llama', 30, 576)
    >>> m = load_model("tiny-qwen2")
    >>> m.n_layers, m.chat.name
    (2, 'chat_template')
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from . import paths, runinfo, tiny, zoo
from .atomic import read_json, stable_hash, write_json
from .chat import ChatFormat
from .progress import hf_bars

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("auto", *_DTYPES)

_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (``/proc/cpuinfo``) of native bf16 matmuls; without one, torch emulates bf16 and
is 5–60× slower than float32 (measured: 60× on an AVX2-only EPYC for a 64×1536×1536 matmul)."""
_RESOLVED: dict[str, tuple[str, str]] = {}


def _cpu_flags() -> set[str]:
    return runinfo.cpu_flags()


def _matmul_seconds(dtype: torch.dtype, device: str, reps: int = 5) -> float:
    import time

    a = torch.randn(64, 512, device=device).to(dtype)
    w = torch.randn(512, 512, device=device).to(dtype)
    a @ w  # warm-up
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ w
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def resolve_dtype(name: str, device: str | None = None) -> tuple[str, str]:
    """The dtype a model loads in, and why: ``name`` itself unless it is ``"auto"``.

    ``auto`` picks bfloat16 only where it is computed natively and measured faster: on a CUDA
    device that supports bf16; on a CPU whose flags include AMX-BF16 or AVX512-BF16 *and* where a
    64×512×512 bf16 matmul beats float32 by ``BF16_MIN_SPEEDUP`` (best of 5 each). Everywhere else
    float32. On a CPU the measurement is made once per machine (CPU model and flags, torch
    version, threads) and stored under ``$TRAITLAB_CACHE/dtype``: a timing taken while other work
    loads the cores could otherwise pick float32 in one render and bfloat16 in the next, and with
    them different judge replies. Delete that folder to measure again. The decision is made once
    per process and device, and ``dtype_decisions()`` lists it for the run record.

    >>> resolve_dtype("float32")
    ('float32', 'asked for float32')
    >>> resolve_dtype("auto")[0] in ("float32", "bfloat16")
    True
    """
    check_dtype(name)
    if name != "auto":
        return name, f"asked for {name}"
    dev = device or "cpu"
    if dev in _RESOLVED:
        return _RESOLVED[dev]
    if dev.startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        out = ("bfloat16", f"auto: {dev} computes bf16 natively") if ok else \
              ("float32", f"auto: {dev} has no native bf16")
    else:
        native = sorted(_cpu_flags() & set(_BF16_FLAGS))
        if not native:
            cap = torch.backends.cpu.get_cpu_capability()
            out = ("float32", f"auto: the CPU has no native bf16 ({cap}; no {' or '.join(_BF16_FLAGS)} flag), "
                              "where bf16 is emulated and several times slower")
        else:
            out = _cpu_bf16_choice(native, dev)
    _RESOLVED[dev] = out
    return out


BF16_MIN_SPEEDUP = 1.5
"""How much faster than float32 a bf16 test matmul must run for ``auto`` to pick bfloat16 on a CPU."""

DTYPE_METHOD = "dtype-auto-v1"
"""Version of the CPU measurement behind ``auto``; part of each stored decision's key."""


def _cpu_bf16_choice(native: list[str], dev: str) -> tuple[str, str]:
    """bfloat16 or float32 on a CPU with native bf16, from the stored measurement of this machine
    (measured and stored atomically when there is none, or a stored one is damaged)."""
    cpu = runinfo.cpu()  # "AMD EPYC" names several machines: its ISA flags tell them apart
    key = {"method": DTYPE_METHOD, "cpu": cpu["model"], "isa": cpu["isa"], "flags": native,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": dev}
    path = paths.cache_dir("dtype") / f"{stable_hash(key)}.json"
    entry = None
    if path.exists():
        try:
            entry = read_json(path)
            ok = (entry["key"] == key and math.isfinite(entry["speed"]) and entry["speed"] > 0
                  and entry["dtype"] == ("bfloat16" if entry["speed"] >= BF16_MIN_SPEEDUP else "float32"))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            warnings.warn(f"dtype decision {path} is damaged or not this machine's; measuring again", stacklevel=3)
            entry = None
    if entry is None:
        f32, b16 = _matmul_seconds(torch.float32, dev), _matmul_seconds(torch.bfloat16, dev)
        speed = min(f32, _matmul_seconds(torch.float32, dev)) / b16
        entry = {"key": key, "speed": speed, "dtype": "bfloat16" if speed >= BF16_MIN_SPEEDUP else "float32",
                 "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")}
        try:
            write_json(path, entry)
        except OSError as err:  # a read-only cache: decide anyway, measured again next time
            warnings.warn(f"could not store the dtype decision at {path} ({err})", stacklevel=3)
    flags, speed = ", ".join(native), entry["speed"]
    when = f"measured {entry['date']}, stored in $TRAITLAB_CACHE/dtype"
    if entry["dtype"] == "bfloat16":
        return "bfloat16", f"auto: native bf16 ({flags}), {speed:.1f}× float32 in a test matmul ({when})"
    return "float32", (f"auto: native bf16 ({flags}) but only {speed:.1f}× float32 in a test matmul "
                       f"(< {BF16_MIN_SPEEDUP}×; {when})")


def dtype_decisions() -> dict[str, str]:
    """``{device: "dtype (why)"}`` for every ``auto`` resolved in this process."""
    return {dev: f"{d} ({why})" for dev, (d, why) in _RESOLVED.items()}


class ModelError(ValueError):
    """An unknown model spec, or one that cannot be reached from here."""


def check_dtype(name: Any, where: str = "dtype") -> torch.dtype:
    """The torch dtype called ``name``, or a one-line ``ModelError`` listing the valid names
    (``traitlab check`` calls this before any weights load; ``where`` names the key).

    >>> check_dtype("bfloat16")
    torch.bfloat16
    >>> check_dtype("bf16")
    Traceback (most recent call last):
    ...
    traitlab.models.ModelError: dtype 'bf16' is not supported; use one of auto, float32, bfloat16, float16
    """
    if not isinstance(name, str) or name not in DTYPE_NAMES:
        raise ModelError(f"{where} {name!r} is not supported; use one of {', '.join(DTYPE_NAMES)}")
    return _DTYPES.get(name, torch.float32)


def check_device(device: Any, where: str = "device") -> str | None:
    """``device`` as a torch device string if this machine has it (None passes through), else
    a one-line ``ModelError`` saying what is available.

    >>> check_device("cpu"), check_device(None)
    ('cpu', None)
    >>> check_device("cuda:7")                                  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    traitlab.models.ModelError: device 'cuda:7' is not available here (1 CUDA device(s)); ...
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"{where} {device!r} is not a torch device; use e.g. cpu, cuda, cuda:0 "
                         "or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ModelError(f"{where} {device!r} is not available here ({n} CUDA device(s)); "
                             "use cpu, or unset it (and $TRAITLAB_DEVICE)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelError(f"{where} {device!r} is not available here (no MPS); use cpu")
    elif dev.type != "cpu":
        raise ModelError(f"{where} {device!r}: only cpu, cuda[:N] and mps are supported")
    return str(dev)


@dataclass(frozen=True)
class ModelInfo:
    """What a model spec resolves to, known without loading weights."""

    spec: str
    kind: Literal["tiny", "zoo", "gguf", "dir", "hub"]
    arch: str
    n_layers: int
    d_model: int
    revision: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """An nnsight-wrapped model with what the rest of traitlab needs.

    ``lm`` is the nnsight ``TransformersModel``; ``hf`` the underlying transformers module;
    ``fingerprint`` identifies the exact weights and keys every cache: the zoo GGUF's sha256
    (once the dequantised files loaded have matched the digests recorded when they were built
    from that GGUF), a GGUF file's sha256, a hub commit, or the sha256 of a local folder's
    files. ``weights_sha256`` is the digest of the weight files actually loaded, where known.
    """

    spec: str
    kind: str
    arch: str
    n_layers: int
    d_model: int
    dtype: str
    fingerprint: str
    revision: str | None
    lm: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    chat: ChatFormat = field(repr=False)
    remote: bool | str = False
    device_map: str | None = None
    device: str | None = None
    weights_sha256: str | None = None

    @property
    def hf(self) -> torch.nn.Module:
        return self.lm._module

    def record(self) -> dict[str, Any]:
        """The provenance a report prints."""
        return {"model": self.spec, "kind": self.kind, "arch": self.arch, "n_layers": self.n_layers,
                "d_model": self.d_model, "dtype": self.dtype, "revision": self.revision,
                "fingerprint": self.fingerprint, "chat_format": self.chat.name,
                "remote": self.remote, "device_map": self.device_map, "device": self.device,
                "weights_sha256": self.weights_sha256}


def full_attention(config: Any) -> bool:
    """Whether every layer of a model with this transformers ``config`` attends to the whole
    sequence (no sliding window), so its KV cache holds every position: it can be cut back,
    extended, padded and joined along the batch. A model without a config counts as full.

    >>> from traitlab.tiny import build
    >>> full_attention(build("tiny-qwen2")[0].config), full_attention(build("tiny-gemma3")[0].config)
    (True, False)
    """
    types = getattr(config, "layer_types", None) or ()
    return all(t == "full_attention" for t in types) and not getattr(config, "sliding_window", None)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def _config_dims(cfg: dict[str, Any]) -> tuple[str, int, int]:
    cfg = cfg.get("text_config", cfg) if cfg.get("model_type") in ("gemma3",) else cfg
    arch = cfg["model_type"]
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    d_model = cfg.get("hidden_size", cfg.get("n_embd"))
    return arch, int(n_layers), int(d_model)


def describe(spec: str, revision: str | None = None) -> ModelInfo:
    """Resolve ``spec`` to a ``ModelInfo`` without loading weights (hub ids read only the config)."""
    if not isinstance(spec, str) or not spec:
        raise ModelError(f"model must be a non-empty string, got {spec!r}")
    if spec in tiny.TINY_ARCHS:
        cfg = tiny.tiny_config(spec)
        return ModelInfo(spec, "tiny", cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size)
    if spec in zoo.ZOO:
        e = zoo.ZOO[spec]
        return ModelInfo(spec, "zoo", e.arch, e.n_layers, e.d_model)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file {spec!r} does not exist")
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        n_layers = int(reader.fields[f"{arch}.block_count"].parts[-1][0])
        d_model = int(reader.fields[f"{arch}.embedding_length"].parts[-1][0])
        arch = {"gemma3": "gemma3_text"}.get(arch, arch)
        return ModelInfo(spec, "gguf", arch, n_layers, d_model)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ModelError(f"folder {spec!r} has no config.json; is it a transformers model folder?")
        return ModelInfo(spec, "dir", *_config_dims(json.loads(cfg_file.read_text())))
    if not _HUB_ID.match(spec):
        raise ModelError(
            f"unknown model {spec!r}: not a tiny model ({', '.join(tiny.TINY_ARCHS)}), not in the "
            f"offline zoo ({', '.join(sorted(zoo.ZOO))}), not an existing path, and not a hub id "
            "of the form 'org/name'."
        )
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(spec, revision=revision)
    except OSError as err:
        raise ModelError(
            f"cannot reach hub model {spec!r} (revision {revision!r}): {err}. Without network, use an "
            f"offline zoo model ({', '.join(sorted(zoo.ZOO))}) or a local folder."
        ) from None
    return ModelInfo(spec, "hub", *_config_dims(cfg.to_dict()), revision=revision)


_FOLDER_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".tiktoken")
"""Files of a local model folder that the fingerprint covers (weights, config, tokenizer)."""


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed once: a digest recorded under the cache (``digests/``) is
    reused while the file's size and mtime still match it, and recomputed when they differ."""
    from .atomic import sha256_file, write_json
    from .paths import cache_dir

    path = path.resolve()
    st = path.stat()
    rec_path = cache_dir("digests") / f"{stable_hash(str(path), 32)}.json"
    try:
        rec = json.loads(rec_path.read_text())
        if (isinstance(rec, dict) and rec.get("path") == str(path) and rec.get("size") == st.st_size
                and rec.get("mtime_ns") == st.st_mtime_ns and isinstance(rec.get("sha256"), str)):
            return rec["sha256"]
    except (OSError, ValueError):
        pass  # no record yet, or an unreadable one: hash again
    digest = sha256_file(path)
    write_json(rec_path, {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "sha256": digest})
    return digest


def _dir_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _FOLDER_SUFFIXES)


def _dir_digest(path: Path) -> str:
    """sha256 over the names and sha256 of every weight, config and tokenizer file in ``path``:
    different bytes never share it (file digests are reused while size and mtime hold)."""
    return stable_hash([(p.name, file_sha256(p)) for p in _dir_files(path)], 64)


def _dir_fingerprint(path: Path) -> str:
    """``dir:`` + the first 16 hex digits of ``_dir_digest``."""
    return "dir:" + _dir_digest(path)[:16]


@torch.no_grad()
def _all_finite(module: torch.nn.Module) -> bool:
    """True when no parameter holds a NaN or an infinity (a cheap guard on cached weights)."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


REMOTE_ENV, DEVICE_MAP_ENV, DEVICE_ENV = "TRAITLAB_REMOTE", "TRAITLAB_DEVICE_MAP", "TRAITLAB_DEVICE"
"""Environment defaults for ``remote`` / ``device_map`` / ``device`` (set by a profile's
``runtime:`` block)."""


def runtime_from_env() -> tuple[bool | str, str | None]:
    """(remote, device_map) defaults: ``$TRAITLAB_REMOTE`` (true / false / local) and
    ``$TRAITLAB_DEVICE_MAP`` (e.g. auto)."""
    raw = os.environ.get(REMOTE_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        remote: bool | str = False
    elif raw in ("1", "true", "yes"):
        remote = True
    elif raw == "local":
        remote = "local"
    else:
        raise ModelError(f"${REMOTE_ENV}={raw!r}: use true, false or local")
    return remote, os.environ.get(DEVICE_MAP_ENV) or None


def device_from_env() -> str | None:
    """The ``device`` default: ``$TRAITLAB_DEVICE`` (e.g. cuda:0), None when unset or empty."""
    return os.environ.get(DEVICE_ENV, "").strip() or None


def check_remote(spec: str, revision: str | None = None, timeout_s: float = 5.0) -> ModelInfo:
    """Everything remote execution needs, checked before any model work, cheapest first: an NDIF
    key in ``$NDIF_API_KEY``, a hub model, a reachable NDIF host. Returns the model's info."""
    if not os.environ.get("NDIF_API_KEY"):
        raise ModelError("remote: true runs the model on NDIF and needs an API key in $NDIF_API_KEY "
                         "(get one at https://login.ndif.us); or set remote: false to run locally")
    info = describe(spec, revision)
    if info.kind != "hub":
        raise ModelError(f"remote execution runs Hugging Face hub models hosted on NDIF; {spec!r} is a "
                         f"{info.kind} model: use its hub id or set remote: false")
    from nnsight import CONFIG

    host = os.environ.get("NDIF_HOST") or CONFIG.API.HOST
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(host, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # the server answered
    except (urllib.error.URLError, OSError) as err:
        raise ModelError(f"cannot reach NDIF at {host} ({getattr(err, 'reason', err)}); check the network, "
                         "$NDIF_HOST, or set remote: false to run locally") from None
    return info


def load_model(spec: str, *, revision: str | None = None, dtype: Dtype = "float32",
               device_map: str | None = None, remote: bool | str | None = None, seed: int = 0,
               quiet: bool = False, device: str | None = None) -> LoadedModel:
    """Load ``spec`` (see the module docstring) and wrap it for nnsight.

    ``device_map`` is passed to transformers (e.g. ``"auto"`` shards across GPUs); ``device``
    moves the whole model to one device (e.g. ``"cuda:0"``; None keeps it where transformers
    puts it, the CPU). ``remote``: ``True`` runs every trace on NDIF (hub models only, key in
    ``$NDIF_API_KEY``; no weights are loaded here), ``"local"`` runs nnsight's
    serialize-and-execute simulation of that path on a local model. They default to
    ``$TRAITLAB_REMOTE`` / ``$TRAITLAB_DEVICE_MAP`` / ``$TRAITLAB_DEVICE``. ``seed`` only
    matters for the tiny random models. Unknown dtypes and missing devices fail before any
    weights load, in one line.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env_remote, env_map = runtime_from_env()
    remote = env_remote if remote is None else remote
    device_map = device_map or env_map
    if remote not in (False, True, "local"):
        raise ModelError(f"remote must be true, false or 'local', got {remote!r}")
    if remote is True:
        info = check_remote(spec, revision)
        from nnsight import TransformersModel

        lm = TransformersModel(spec, revision=revision)  # meta weights: the server holds the real ones
        tok = lm.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return LoadedModel(spec=spec, kind=info.kind, arch=info.arch, n_layers=info.n_layers,
                           d_model=info.d_model, dtype=dtype, fingerprint=f"hub:{spec}@{revision or 'main'}",
                           revision=revision, lm=lm, tokenizer=tok, chat=ChatFormat.for_tokenizer(tok),
                           remote=True, device_map=None)

    check_dtype(dtype)
    device = check_device(device if device is not None else device_from_env(),
                          "device" if device is not None else f"${DEVICE_ENV}")
    dtype, _why = resolve_dtype(dtype, device)  # "auto" → what this machine computes fast
    torch_dtype = _DTYPES[dtype]
    if device is not None and device_map:
        raise ModelError(f"set either device ({device!r}) or device_map ({device_map!r}), not both: "
                         "device puts the whole model on one device, device_map spreads it")
    info = describe(spec, revision)
    weights_sha256: str | None = None
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map:
        kwargs["device_map"] = device_map
    with hf_bars(not quiet):  # transformers' own bars follow ours (none in a rendered report)
        if info.kind == "tiny":
            hf, tok = tiny.build(spec, seed=seed)
            hf = hf.to(torch_dtype)
            fingerprint = f"tiny:{spec}:seed{seed}"
        elif info.kind == "zoo":
            folder = zoo.dequantized_dir(spec, quiet=quiet)  # checked against its recorded digests
            hf = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            if not _all_finite(hf):  # bytes changed with the mtime kept: check every byte, rebuild
                folder = zoo.dequantized_dir(spec, quiet=quiet, full=True)
                hf = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
                if not _all_finite(hf):
                    raise ModelError(f"zoo model {spec!r} has non-finite weights even after a full check; "
                                     f"run `traitlab fetch {spec} --verify`")
            rec = zoo.dequantized_record(spec)
            tok = AutoTokenizer.from_pretrained(folder)
            # the files just loaded match digests recorded when they were built from this GGUF
            fingerprint = f"gguf:{rec['gguf_sha256']}"
            weights_sha256 = rec["weights_sha256"]
        elif info.kind == "gguf":
            path = Path(spec).expanduser()
            hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            weights_sha256 = file_sha256(path)  # hashed once, re-hashed when size or mtime move
            fingerprint = f"gguf:{weights_sha256}"
        elif info.kind == "dir":
            path = Path(spec).expanduser()
            hf = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            tok = AutoTokenizer.from_pretrained(path)
            weights_sha256 = _dir_digest(path)
            fingerprint = "dir:" + weights_sha256[:16]
        else:
            hf = AutoModelForCausalLM.from_pretrained(spec, revision=revision, **kwargs)
            tok = AutoTokenizer.from_pretrained(spec, revision=revision)
            fingerprint = f"hub:{spec}@{getattr(hf.config, '_commit_hash', None) or revision or 'unknown'}"
    if device is not None:
        hf = hf.to(device)
    hf.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from nnsight import TransformersModel

    lm = TransformersModel(hf, tokenizer=tok, task="text-generation")
    return LoadedModel(spec=spec, kind=info.kind, arch=info.arch, n_layers=info.n_layers,
                       d_model=info.d_model, dtype=dtype, fingerprint=fingerprint,
                       revision=revision, lm=lm, tokenizer=tok, chat=ChatFormat.for_tokenizer(tok),
                       remote=remote, device_map=device_map, device=device,
                       weights_sha256=weights_sha256)
