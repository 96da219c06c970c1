"""Model load time: first load (GGUF fetched, dequantised and cached) vs later loads.

    python benchmarks/load_time.py --model smollm2-135m-instruct
Target (issue 2): the second load of the 135M model under 3 s.
"""

from __future__ import annotations

import argparse
import time

from traitlab.models import load_model
from traitlab.zoo import ZOO, cache_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(ZOO))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cached = (cache_dir("zoo", args.model) / "hf" / "traitlab.json").exists()
    t = time.perf_counter()
    load_model(args.model, quiet=True)
    first = time.perf_counter() - t
    print(f"first load ({'cache warm' if cached else 'fetch + dequantise'}): {first:.2f} s")
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        load_model(args.model, quiet=True)
        times.append(time.perf_counter() - t)
    print(f"later loads: {', '.join(f'{x:.2f}' for x in times)} s (target < 3 s): "
          f"{'PASS' if max(times) < 3 else 'MISS'}")


if __name__ == "__main__":
    main()
