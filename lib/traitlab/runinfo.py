"""The run record a report prints: parameters, model provenance, versions, commit, date, and the
data files read (with their sha256).

Example:
    >>> rec = run_record({"seed": 0})
    >>> sorted(rec)[:4]
    ['cpu', 'data', 'date', 'dtype_auto']
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .paths import IS_CHECKOUT, PROJECT_ROOT

PACKAGES = ("traitlab", "torch", "transformers", "nnsight", "numpy", "pandas", "scikit-learn",
            "papermill", "jupytext", "nbval")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def git_commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes); in a normal (non-editable)
    install there is no checkout, so the installed version is named instead of whatever git
    repository happens to hold site-packages."""
    if not IS_CHECKOUT:
        return f"installed traitlab {package_versions(('traitlab',))['traitlab']} (no checkout)"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty_files() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


OUTPUTS = ("reports", "tests/golden")
"""Folders of rendered outputs: rendering writes them, nothing computed reads them, so their
changes do not make a run's code differ from its commit (rendering report after report from
one commit would otherwise call every report after the first ``+dirty``)."""


def dirty_files() -> list[str]:
    """Tracked files with uncommitted changes outside ``OUTPUTS`` (empty outside a checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                              *(f":(exclude){d}" for d in OUTPUTS)],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


VECTOR_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
"""The CPU features that change which BLAS and ATen kernels run (and so a float's last bits)."""


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    line = next((x for x in _cpuinfo().splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu() -> dict[str, Any]:
    """The CPU a report ran on: model name, kernel-relevant ISA flags, torch's ATen capability."""
    name = next((x.partition(":")[2].strip() for x in _cpuinfo().splitlines() if x.startswith("model name")),
                platform.processor() or "?")
    try:
        import torch

        aten = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 — provenance only; never fail a report over it
        aten = "?"
    return {"model": name, "isa": [f for f in VECTOR_ISA if f in cpu_flags()], "aten": aten}


def run_record(params: Any, model: Any = None) -> dict[str, Any]:
    """Everything needed to know how a report was made, including every data file read so far
    (``data``: label → sha256; call it after the work, as the notebooks' publishing cell does)."""
    p = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)
    return {
        "params": p,
        "model": model.record() if model is not None else None,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu(),
        "git_commit": git_commit(),
        "dtype_auto": _dtype_decisions(),
        "data": _files_read(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _files_read() -> dict[str, str]:
    from .data import files_read

    return files_read()


def _dtype_decisions() -> dict[str, str]:
    from .models import dtype_decisions

    return dtype_decisions()


def show(record: dict[str, Any]) -> None:
    """Print a run record as aligned ``key: value`` lines."""
    for section in ("params", "model"):
        if record.get(section):
            print(f"[{section}]")
            for k, v in record[section].items():
                print(f"  {k:<22} {v}")
    print("[environment]")
    for k, v in record["packages"].items():
        print(f"  {k:<22} {v}")
    for k in ("python", "platform", "git_commit", "date"):
        print(f"  {k:<22} {record[k]}")
    if record.get("cpu"):
        c = record["cpu"]
        print(f"  {'cpu':<22} {c['model']} ({', '.join(c['isa']) or 'no vector ISA flags'}; ATen {c['aten']})")
    for dev, what in (record.get("dtype_auto") or {}).items():
        print(f"  {'dtype auto (' + dev + ')':<22} {what}")
    if str(record.get("git_commit", "")).endswith("+dirty"):  # red in a notebook or a terminal
        print("\x1b[31m  rendered from a working tree with uncommitted changes: this report does not "
              "match any commit\x1b[0m")
