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
import statistics
import time
from collections.abc import Callable
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
    return {"value": float(value), "target": f"{direction} {goal}", "met": bool(ok)}


def rows_speedup(generate: Callable[[int], list[list[str]]], small: int, large: int, rounds: int,
                 count_tokens: Callable[[list[list[str]]], int]) -> dict[str, Any]:
    """One generation timed at ``small`` and at ``large`` rows per decode step, alternating rounds:
    ``generate(rows)`` returns texts [prompt][condition]; ``count_tokens(texts)`` the tokens they
    took. Seconds and throughput under ``old`` (small) and ``new`` (large), the ratio of medians
    against a 1.2× target, and the share of identical texts."""
    secs: dict[int, list[float]] = {small: [], large: []}
    outs: dict[int, list[list[str]]] = {}
    for _ in range(rounds):
        for rows in secs:
            t = time.perf_counter()
            outs[rows] = generate(rows)
            secs[rows].append(time.perf_counter() - t)
    pairs = [(a, b) for x, y in zip(outs[small], outs[large], strict=True) for a, b in zip(x, y, strict=True)]
    same = sum(a == b for a, b in pairs)
    tokens = count_tokens(outs[large])
    t_old, t_new = statistics.median(secs[small]), statistics.median(secs[large])
    print(f"rows per decode step: {small} {t_old:.1f} s, {large} {t_new:.1f} s, {t_old / t_new:.2f}x; "
          f"identical {same}/{len(pairs)}; {tokens / t_old:.1f} -> {tokens / t_new:.1f} tokens/s")
    return {"small_rows": small, "large_rows": large, "tokens": tokens,
            "seconds": {"old": secs[small], "new": secs[large]},
            "tokens_per_second": {"old": tokens / t_old, "new": tokens / t_new},
            "speedup": target(t_old / t_new, 1.2, ">="), "identical_share": target(same / len(pairs), 1.0, ">="),
            "rounds": rounds}


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_examples(model: Any, n: int) -> list:
    """``n`` chat-formatted prompt + response examples from the project's trait sets.

    The trait sets hold about 2,500 distinct examples; beyond that, prompts repeat with a
    numbered suffix so every example has its own token ids (and its own cache key)."""
    from traitlab.data import available_traits, load_trait

    pool = [(pr, rs) for t in available_traits() for p in load_trait(t).pairs
            for pr, rs in ((p.pos_prompt, p.pos_response), (p.neg_prompt, p.neg_response))]
    out = []
    for i in range(n):
        prompt, response = pool[i % len(pool)]
        if i >= len(pool):
            prompt = f"{prompt} (variant {i // len(pool)})"
        out.append(model.chat.encode(prompt, response))
    return out


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.hf.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def matmul_gflops(dtype: torch.dtype, d: int = 896, ffn: int = 4864, rows: tuple[int, ...] = (256, 1024, 4096),
                  seconds: float = 1.0) -> float:
    """This machine's best throughput, GFLOP/s, on the product a transformer layer spends most of
    its time in: [rows, d] activations through a [ffn, d] linear weight (Qwen2.5-0.5B's MLP shape),
    in ``dtype``, the best of ``rows``, each repeated for about ``seconds`` after a warm-up. About
    what a model forward can reach at best here (torch's kernels, these cores)."""
    best = 0.0
    for r in rows:
        x, w = torch.randn(r, d, dtype=dtype), torch.randn(ffn, d, dtype=dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.nn.functional.linear(x, w)
            n += 1
        best = max(best, 2 * r * d * ffn * n / (time.perf_counter() - t0) / 1e9)
    return best


class ForwardCount:
    """Counts the tokens a Hugging Face causal LM runs (every input position, padding included)
    and the positions its unembedding (``lm_head``) runs on, by forward hooks, so a timed run's
    work can be put in FLOPs: 2 × (parameters less the embedding and the head) per token plus
    2 × head parameters per head position; attention scores, small at these lengths, are left out.

        with ForwardCount(hf) as c:
            hf(input_ids=ids)
        c.gflop
    """

    def __init__(self, hf: Any) -> None:
        self.hf, self.tokens, self.head_rows, self._hooks = hf, 0, 0, []
        emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
        self._emb, self._head = emb, head
        skip = {p.data_ptr() for p in (*emb.parameters(), *head.parameters())}
        self.body_params = sum(p.numel() for p in {p.data_ptr(): p for p in hf.parameters()}.values()
                               if p.data_ptr() not in skip)
        self.head_params = sum(p.numel() for p in head.parameters())

    def __enter__(self) -> ForwardCount:
        def on_emb(_m, args, _out):
            self.tokens += args[0].numel()

        def on_head(_m, args, _out):
            self.head_rows += args[0].numel() // args[0].shape[-1]

        self._hooks = [self._emb.register_forward_hook(on_emb), self._head.register_forward_hook(on_head)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()

    @property
    def gflop(self) -> float:
        return (2 * self.body_params * self.tokens + 2 * self.head_params * self.head_rows) / 1e9
