"""Shared by the benchmark scripts: where results go and the record each result carries.

Every benchmark writes one JSON file under ``reports/benchmarks/`` (atomically), holding its
figures, each ratio next to its target, and a run record (machine, threads, package
versions, git commit, date). ``notebooks/performance.py`` renders them as
``reports/performance.html``.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

from traitlab.atomic import write_json
from traitlab.runinfo import git_commit, package_versions

RESULTS = Path(__file__).resolve().parent.parent / "reports" / "benchmarks"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}


def save(name: str, figures: dict[str, Any], *, out: Path | None = None) -> Path:
    """Write ``reports/benchmarks/<name>.json`` with the figures and a run record."""
    path = (out or RESULTS) / f"{name}.json"
    write_json(path, {"benchmark": name, "figures": figures, "machine": machine(),
                      "versions": package_versions(), "git_commit": git_commit(),
                      "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    print(f"wrote {path}")
    return path


def target(value: float, goal: float, direction: str) -> dict[str, Any]:
    """A measured ratio next to its target; ``direction`` is '>=' or '<='."""
    ok = value >= goal if direction == ">=" else value <= goal
    return {"value": round(float(value), 4), "target": f"{direction} {goal}", "met": bool(ok)}


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
