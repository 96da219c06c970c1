"""Peak memory while extracting every layer's activations for 1,000 prompts.

Each configuration runs in a fresh process (so its peak RSS is its own) and reports peak
RSS against the model's weight bytes. Target (issue 7): peak RSS <= 1.5x the weights, with
``extract(..., stream=True)`` writing each batch to disk. Also reported: the peak above the
process's RSS before the weights load (Python, torch, transformers, nnsight: ~0.25 GiB,
half the 135M model's weights on its own). ``last`` (one vector per prompt,
the trait-vector protocol) is also run in memory; ``all`` (every token) only streamed,
since it does not fit: 1,000 prompts x ~60 tokens x 24 layers x 896 floats is ~5 GB.

    python benchmarks/memory.py --models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_examples, current_rss_bytes, peak_rss_bytes, save, target, weight_bytes

CONFIGS = (("last", False), ("last", True), ("all", True))


def child(model_name: str, n: int, position: str, stream: bool, batch_size: int) -> dict:
    import nnsight  # noqa: F401  (imported before the baseline is read)
    import transformers  # noqa: F401

    from traitlab.activations import extract
    from traitlab.models import load_model
    from traitlab.sites import Site

    baseline = current_rss_bytes()  # interpreter + torch + transformers + nnsight, no weights yet
    m = load_model(model_name, quiet=True)
    ex = bench_examples(m, n)
    sites = [Site("resid_post", layer) for layer in range(m.n_layers)]
    folder = Path(tempfile.mkdtemp(prefix="traitlab-mem-"))
    try:
        after_load = peak_rss_bytes()
        t = time.perf_counter()
        acts = extract(m, ex, sites, position=position, batch_size=batch_size,  # type: ignore[arg-type]
                       cache=folder if stream else False, stream=stream, progress=False)
        seconds = time.perf_counter() - t
        first = acts[sites[0]]  # read one site back (streamed: from disk)
        rows, disk = first.shape[0], sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    w = weight_bytes(m)
    peak = peak_rss_bytes()
    return {"model": model_name, "position": position, "stream": stream, "n_prompts": n,
            "layers": m.n_layers, "tokens": sum(len(e.ids) for e in ex), "rows_per_site": rows,
            "seconds": round(seconds, 2), "weight_bytes": w, "peak_rss_bytes": peak,
            "rss_after_load_bytes": after_load, "baseline_rss_bytes": baseline, "disk_bytes": disk,
            "activation_bytes": rows * m.d_model * 4 * m.n_layers,
            "peak_over_weights": round(peak / w, 3),
            "peak_above_baseline_over_weights": round((peak - baseline) / w, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "POSITION", "STREAM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, position, stream = args.child
        print(json.dumps(child(name, args.n, position, stream == "1", args.batch_size)))
        return
    rows = []
    for name in args.models:
        for position, stream in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--batch-size",
                                  str(args.batch_size), "--child", name, position, "1" if stream else "0"],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r["target"] = target(r["peak_over_weights"], 1.5, "<=")
            rows.append(r)
            gib = 2 ** 30
            print(f"{name:30s} {position:4s} {'stream' if stream else 'memory':6s} "
                  f"{r['seconds']:7.1f}s  weights {r['weight_bytes'] / gib:5.2f} GiB  "
                  f"peak {r['peak_rss_bytes'] / gib:5.2f} GiB  ({r['peak_over_weights']:.2f}x; "
                  f"{r['peak_above_baseline_over_weights']:.2f}x above the {r['baseline_rss_bytes'] / gib:.2f} GiB "
                  f"interpreter)  "
                  f"activations {r['activation_bytes'] / gib:5.2f} GiB")
    save("memory", {"n_prompts": args.n, "batch_size": args.batch_size, "runs": rows})


if __name__ == "__main__":
    main()
