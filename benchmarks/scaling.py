"""Extraction time and memory against prompt count and model size.

Each cell (model, n prompts) runs in a fresh process: every layer's ``resid_post`` at the
last prompt token (the trait-vector protocol), in memory, batch 16. Prompts are the
project's trait prompts, formatted with the model's chat template, without responses.
The report fits log-log slopes: time ∝ n^a per model (expect a ≈ 1: no per-prompt
overhead growth) and time ∝ params^b across models at ``--size-n`` prompts.

The first model runs every count in ``--counts``; the larger ones ``--counts-large`` (10,000
prompts through the 1.5B model would take about 1.5 hours on 2 cores).

    python benchmarks/scaling.py --models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct \\
        qwen2.5-coder-1.5b-instruct --counts 100 1000 10000 --counts-large 100 1000 --size-n 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import current_rss_bytes, peak_rss_bytes, save, weight_bytes


def child(model_name: str, n: int, batch_size: int) -> dict:
    from traitlab.activations import extract
    from traitlab.data import available_traits, load_trait
    from traitlab.models import load_model
    from traitlab.sites import Site

    baseline = current_rss_bytes()
    m = load_model(model_name, quiet=True)
    pool = [q for t in available_traits() for p in load_trait(t).pairs for q in (p.pos_prompt, p.neg_prompt)]
    ex = [m.chat.encode(pool[i % len(pool)] + (f" ({i // len(pool)})" if i >= len(pool) else ""))
          for i in range(n)]
    sites = [Site("resid_post", layer) for layer in range(m.n_layers)]
    extract(m, ex[:batch_size], sites, batch_size=batch_size, cache=False, progress=False)  # warm-up
    t = time.perf_counter()
    extract(m, ex, sites, batch_size=batch_size, cache=False, progress=False)
    seconds = time.perf_counter() - t
    tokens = sum(len(e.ids) for e in ex)
    return {"model": model_name, "n_prompts": n, "tokens": tokens, "layers": m.n_layers,
            "params": sum(p.numel() for p in m.hf.parameters()), "weight_bytes": weight_bytes(m),
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline,
            "activation_bytes": n * m.n_layers * m.d_model * 4}


def run(model_name: str, n: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", model_name, str(n), "--batch-size", str(batch_size)],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"{model_name:30s} n={n:6d} {r['seconds']:8.1f}s {r['tokens_per_s']:8.0f} tok/s "
          f"peak {r['peak_rss_bytes'] / 2**30:5.2f} GiB", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                                                    "qwen2.5-coder-1.5b-instruct"])
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 10000], help="for the first model")
    ap.add_argument("--counts-large", type=int, nargs="+", default=[100, 1000], help="for the other models")
    ap.add_argument("--size-n", type=int, default=1000, help="prompt count of the model-size axis "
                    "(must be in both count lists)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch_size)))
        return
    if args.size_n not in args.counts or (len(args.models) > 1 and args.size_n not in args.counts_large):
        ap.error(f"--size-n {args.size_n} must be one of the counts every model runs")
    by_count = [run(name, n, args.batch_size) for i, name in enumerate(args.models)
                for n in (args.counts if i == 0 else args.counts_large)]
    by_size = [r for r in by_count if r["n_prompts"] == args.size_n]
    save("scaling", {"batch_size": args.batch_size, "site": "resid_post, every layer", "position": "last",
                     "by_count": by_count, "by_size": by_size, "size_n": args.size_n})


if __name__ == "__main__":
    main()
