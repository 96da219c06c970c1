"""Atomic file writes and content hashing.

Every artifact is written to a temporary file in the destination folder, flushed to disk
(``fsync``), and then renamed over the target; the folder is synced after the rename where
the platform allows. An interrupted run or a power cut leaves either the old file or the
new one, never half of one.

Example:
    >>> from pathlib import Path
    >>> p = Path("/tmp/traitlab_atomic_demo.json")
    >>> write_json(p, {"a": 1}); read_json(p)
    {'a': 1}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's bytes to the disk (not just the page cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows cannot open a folder
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; fsync it and rename it onto ``target`` on
    success (then fsync the folder). On an exception the temporary file is removed and
    ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        fsync_file(tmp_path)
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def exclusive(lock: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``lock`` (created if missing) for the block, so
    processes that would compute the same cache entry take turns: the second finds it done.

    >>> import tempfile
    >>> with exclusive(Path(tempfile.mkdtemp()) / ".lock"):
    ...     pass
    """
    import fcntl

    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_entry(path: Path, payload: dict[str, Any]) -> None:
    """Write one cache entry atomically, naming its key (``path``'s stem) inside it, so a file
    copied over another entry's is told apart when read (``read_entry``)."""
    write_json(path, {**payload, "key": path.stem})


def read_entry(path: Path, valid: Callable[[dict[str, Any]], bool], what: str, mismatch: str,
               redo: str, *, stacklevel: int = 3) -> dict[str, Any] | None:
    """The cache entry at ``path`` (a dict naming its own key, for which ``valid`` holds), or None:
    missing, or unreadable, then with a warning (``"<what> cache entry <path> is unreadable
    (<why>); <redo>"``, ``mismatch`` as the why when it parses but is not the entry asked for);
    a damaged entry is never served.

    >>> import tempfile; f = Path(tempfile.mkdtemp()) / "ab12.json"
    >>> write_entry(f, {"n": 3}); read_entry(f, lambda d: d.get("n") == 3, "test", "not 3", "again")["n"]
    3
    """
    if not path.exists():
        return None
    try:
        d = read_json(path)
        if isinstance(d, dict) and d.get("key") == path.stem and valid(d):
            return d
        problem = mismatch
    except (OSError, ValueError) as err:
        problem = f"{type(err).__name__}: {err}"
    warnings.warn(f"{what} cache entry {path} is unreadable ({problem}); {redo}", stacklevel=stacklevel)
    return None


def save_tensors(target: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20,
                progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in chunks (``progress`` gets the byte count of each)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Short sha256 of a JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
