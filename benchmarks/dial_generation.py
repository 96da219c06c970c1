"""The refusal dial's generation, full prefill per condition vs one shared prefix, alternating A/B rounds.

The dial adds a delta at the prompt's last token in the prefill only, so every condition sees the
same prompt up to that token. Old: each (prompt, condition) row runs its whole prompt
(``steering._generate_full``). New: ``steering.generate`` runs each prompt's prefix once and forks
its KV cache across conditions. Same inputs (the dial's HARMFUL prompts, its 24 new tokens, its
batch of 48 rows, deltas at the dial's scale); identical greedy texts expected (target: all).

Each side runs ``--rounds`` times in A/B/A/B order; the ratio is of the medians.

    TRAITLAB_DATA_ROOT=... python benchmarks/dial_generation.py --prompts 16 --conditions 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save, target

from traitlab.experiments import refusal_dial as rd
from traitlab.models import load_model
from traitlab.steering import Sampling, _generate_full, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--conditions", type=int, default=9)
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    P = rd.Params(model=args.model)
    m = load_model(args.model, dtype="float32", quiet=True)
    ex = rd.encode(m, rd.load_sets(P).harmful[:args.prompts])
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    alphas = torch.linspace(-2, 2, args.conditions)
    deltas = alphas[:, None] * 8.0 * v / v.norm()  # the dial's learned direction has a norm of this order
    kw = {"max_new_tokens": args.new_tokens, "layer": args.layer, "deltas": deltas, "batch_size": args.batch_size}
    old_s, new_s = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        old = _generate_full(m, ex, progress=False, sampling=Sampling.parse(None), **kw)
        old_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        new = generate(m, ex, **kw)
        new_s.append(time.perf_counter() - t)
    rows = len(ex) * args.conditions
    same = sum(a == b for x, y in zip(old, new, strict=True) for a, b in zip(x, y, strict=True))
    ratio = statistics.median(old_s) / statistics.median(new_s)
    print(f"dial generation {args.model}: {args.conditions} conditions x {len(ex)} prompts x {args.new_tokens} "
          f"tokens: full {statistics.median(old_s):.1f} s, shared prefix {statistics.median(new_s):.1f} s, "
          f"{ratio:.2f}x; identical {same}/{rows}")
    save("dial_generation", {
        "model": args.model, "prompts": len(ex), "conditions": args.conditions, "new_tokens": args.new_tokens,
        "batch_size": args.batch_size, "mean_prompt_tokens": sum(len(e.ids) for e in ex) / len(ex),
        "seconds": {"full": old_s, "shared_prefix": new_s},
        "rows_per_second": {"full": rows / statistics.median(old_s), "shared_prefix": rows / statistics.median(new_s)},
        "speedup": target(ratio, 1.3, ">="), "identical_share": target(same / rows, 1.0, ">="),
        "threads": torch.get_num_threads(), "rounds": args.rounds})


if __name__ == "__main__":
    main()
