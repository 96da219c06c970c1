"""The public datasets the reports read: where each file was published, its sha256, and a
fetcher that downloads them into the data root, verified.

    traitlab datasets fetch [--dest DIR] [--mirror URL]   # download, verify, write atomically
    traitlab datasets verify [--dest DIR]                 # check every file's sha256

Each file is pinned by the sha256 of the copy the committed reports were made from; a download
whose bytes differ is refused (one line naming the file and both digests) and nothing is
written. ``--mirror URL`` fetches ``URL/<path>`` instead of the published source (a local copy,
an internal mirror, or the tests' loopback server).

Example:
    >>> sorted(MANIFEST)[:3]
    ['advbench', 'alpaca_seed', 'harmbench_test']
    >>> MANIFEST["xstest"].path
    'xstest/xstest_prompts.csv'
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_path, sha256_file
from .paths import data_root

_RD = "https://github.com/andyrdt/refusal_direction/raw/9d852fa/dataset/raw"


@dataclass(frozen=True)
class DataFile:
    """One public file: its name in ``traitlab.data.PUBLIC_FILES``, its path under the data
    root, where it was published (``None``: no byte-identical published copy), and its sha256."""

    name: str
    path: str
    url: str | None
    sha256: str
    note: str = ""


MANIFEST: dict[str, DataFile] = {f.name: f for f in (
    DataFile("xstest", "xstest/xstest_prompts.csv",
             "https://github.com/paul-rottger/exaggerated-safety/raw/d7bb5bd/xstest_prompts.csv",
             "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a",
             "XSTest (CC-BY-4.0), 450 prompts"),
    DataFile("advbench", "refusal_direction/dataset/raw/advbench.csv", f"{_RD}/advbench.csv",
             "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
             "AdvBench harmful behaviors (MIT), as kept by refusal_direction"),
    DataFile("harmbench_test", "harmbench/harmbench_behaviors_text_test.csv", f"{_RD}/harmbench_test.csv",
             "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
             "HarmBench text behaviors, test (MIT); byte-identical to refusal_direction's copy"),
    DataFile("harmbench_val", "harmbench/harmbench_behaviors_text_val.csv", f"{_RD}/harmbench_val.csv",
             "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
             "HarmBench text behaviors, val (MIT)"),
    DataFile("jailbreakbench", "jbb/harmful-behaviors.refusal_direction-raw.csv",
             f"{_RD}/jailbreakbench.csv",
             "45e9a8923b28f547bb372fbaa9af7df8b38c818a80ae50c3bab97704197ff516",
             "JailbreakBench harmful behaviors (MIT), refusal_direction's copy"),
    DataFile("jbb_benign", "jbb/benign-behaviors.csv", None,
             "c0958ac974fb6629527aeff6c81c88154a877190d07313ac377d36951fde5d3e",
             "JailbreakBench benign behaviors: our copy differs from HF JailbreakBench/JBB-Behaviors "
             "in its header case only; no report reads it"),
    DataFile("strongreject", "strongreject/strongreject_dataset.csv", f"{_RD}/strongreject.csv",
             "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381",
             "StrongREJECT (MIT); byte-identical to refusal_direction's copy"),
    DataFile("alpaca_seed", "alpaca/seed_tasks.jsonl",
             "https://github.com/tatsu-lab/stanford_alpaca/raw/761dc5b/seed_tasks.jsonl",
             "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48",
             "the 175 Self-Instruct seed tasks (Apache-2.0)"),
)}
"""Every public file ``traitlab.data.PUBLIC_FILES`` names, pinned."""

NOTEBOOK_NEEDS: dict[str, tuple[str, ...]] = {
    "refusal_dial": ("xstest", "alpaca_seed"),
    "jailbreak_blocking": ("alpaca_seed",),
    "token_dynamics": ("alpaca_seed",),
    "base_to_instruct": ("alpaca_seed",),
}
"""Public files a notebook reads besides its ``harmful_sources`` parameter."""


class DatasetError(ValueError):
    """A download that failed, or a file whose bytes are not the pinned ones."""


def needed(notebook: str, values: dict[str, Any]) -> list[str]:
    """The public files a notebook run with ``values`` reads (its ``harmful_sources`` + fixed needs).

    Example:
        >>> needed("token_dynamics", {"harmful_sources": ["advbench"]})
        ['advbench', 'alpaca_seed']
        >>> needed("method_comparison", {})
        []
    """
    names = list(values.get("harmful_sources") or []) if notebook in NOTEBOOK_NEEDS else []
    return list(dict.fromkeys(names + list(NOTEBOOK_NEEDS.get(notebook, ()))))


def missing(names: list[str], root: Path | None = None) -> list[str]:
    """The names among ``names`` whose file is absent from the data root."""
    root = root or data_root()
    return [n for n in names if n in MANIFEST and not (root / MANIFEST[n].path).is_file()]


def how_to_get(root: Path | None = None) -> str:
    """One sentence: how to obtain the public datasets."""
    root = root or data_root()
    return (f"fetch them with `traitlab datasets fetch --dest {root}`, or set TRAITLAB_DATA_ROOT "
            "to a folder that holds them")


def verify(root: Path | None = None, names: list[str] | None = None) -> dict[str, str]:
    """``{name: "ok" | "missing" | "bad sha256 <digest>"}`` for each file under ``root``.

    Example:
        >>> import tempfile; verify(Path(tempfile.mkdtemp()), ["xstest"])
        {'xstest': 'missing'}
    """
    root = root or data_root()
    out = {}
    for name in names or list(MANIFEST):
        f = MANIFEST[name]
        path = root / f.path
        if not path.is_file():
            out[name] = "missing"
            continue
        digest = sha256_file(path)
        out[name] = "ok" if digest == f.sha256 else f"bad sha256 {digest[:16]}…"
    return out


def download(f: DataFile, dest: Path, *, mirror: str | None = None, timeout_s: float = 60.0) -> Path:
    """Download one file to ``dest/<path>``, verified against its pin; atomic (an interrupted or
    refused download leaves no file)."""
    url = f"{mirror.rstrip('/')}/{f.path}" if mirror else f.url
    if url is None:
        raise DatasetError(f"{f.name}: no published byte-identical copy ({f.note}); copy "
                           f"{f.path} into {dest} by hand, or pass --mirror")
    target = dest / f.path
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, atomic_path(target) as tmp:  # noqa: S310
            expected = resp.headers.get("Content-Length")
            n = 0
            with open(tmp, "wb") as out:
                while block := resp.read(1 << 16):
                    h.update(block)
                    out.write(block)
                    n += len(block)
                out.flush()
                os.fsync(out.fileno())
            if expected is not None and n != int(expected):
                raise DatasetError(f"{f.name}: download from {url} stopped after {n} of {expected} "
                                   "bytes; nothing written, run the fetch again")
            if h.hexdigest() != f.sha256:
                raise DatasetError(f"{f.name}: {url} has sha256 {h.hexdigest()}, pinned {f.sha256}; "
                                   "refused, nothing written (a changed or tampered upstream file)")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DatasetError(f"{f.name}: cannot download {url} ({reason}); nothing written. Check the "
                           "network, or pass --mirror URL") from None
    return target


def fetch(dest: Path | None = None, names: list[str] | None = None, *, mirror: str | None = None,
          log=print) -> dict[str, str]:
    """Download every file not already present and valid; ``{name: status}``. Files without a
    published copy are reported, not failed, unless a ``mirror`` is given."""
    dest = Path(dest) if dest is not None else data_root()
    status = verify(dest, names)
    for name, st in status.items():
        f = MANIFEST[name]
        if st == "ok":
            log(f"[traitlab] {name}: ok ({f.path})")
            continue
        if f.url is None and mirror is None:
            status[name] = "skipped"
            log(f"[traitlab] {name}: skipped: {f.note}; copy {f.path} by hand if you need it")
            continue
        download(f, dest, mirror=mirror)
        status[name] = "ok"
        log(f"[traitlab] {name}: fetched → {dest / f.path}")
    return status


def main(args: Any) -> int:
    """``traitlab datasets fetch|verify``."""
    dest = Path(args.dest).expanduser() if args.dest else data_root()
    if args.action == "fetch":
        fetch(dest, args.names or None, mirror=args.mirror)
        print(f"[traitlab] data root ready: export TRAITLAB_DATA_ROOT={dest}")
        return 0
    bad = 0
    for name, st in verify(dest, args.names or None).items():
        print(f"{name:<16} {st:<28} {dest / MANIFEST[name].path}")
        bad += st != "ok" and MANIFEST[name].url is not None
    if bad:
        print(f"traitlab: error: {bad} file(s) missing or wrong under {dest}; {how_to_get(dest)}",
              file=sys.stderr)
    return 1 if bad else 0
