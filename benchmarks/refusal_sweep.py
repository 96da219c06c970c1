"""Refusal-dial sweep: naive batched full forwards vs prefix + lower-layer reuse.

Both sides score the same prompts under the same conditions (alpha × direction added to
``resid_pre@L`` at the last token). The naive side is fair: one batched full forward per
condition with ``logits_to_keep=1``. Prints both times, the speed ratio (target ≥ 20×) and
the largest difference in the scores (target ≤ 1e-4).

    python benchmarks/refusal_sweep.py --model qwen2.5-coder-0.5b-instruct --prompts 16 --conditions 64
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import save, target

from traitlab.data import harmful_prompts
from traitlab.models import load_model
from traitlab.refusal import log_odds, opening_token_ids
from traitlab.sweep import last_token_sweep, naive_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--conditions", type=int, default=64)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("TRAITLAB_DATA_ROOT", os.path.join(os.path.dirname(__file__), "..", "..",
                                                             "shared", "datasets"))
    m = load_model(args.model, quiet=True)
    layer = m.n_layers // 2 if args.layer is None else args.layer
    ex = [m.chat.encode(p.text) for p in harmful_prompts(["advbench"], args.prompts, 0)]
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(args.conditions, m.d_model, generator=g)
    deltas = deltas / deltas.norm(dim=1, keepdim=True) * torch.linspace(-20, 20, args.conditions)[:, None]
    ids = opening_token_ids(m.chat, ["I", "As", "Sorry", "Unfortunately"])

    def reduce(lg):
        return log_odds(lg, ids)

    tokens = sum(len(e.ids) for e in ex)
    print(f"model {m.spec}, layer {layer}, {len(ex)} prompts ({tokens} tokens), {len(deltas)} conditions, "
          f"threads {torch.get_num_threads()}")
    last_token_sweep(m, ex[:2], layer, deltas[:2], reduce)  # warm-up
    t = time.perf_counter()
    fast = last_token_sweep(m, ex, layer, deltas, reduce, batch_size=args.batch_size)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = naive_sweep(m, ex, layer, deltas, reduce, batch_size=args.batch_size)
    t_slow = time.perf_counter() - t
    diff = float((fast - slow).abs().max())
    print(f"naive (full forward per condition): {t_slow:8.1f} s")
    print(f"reuse (prefix + layers >= {layer}):   {t_fast:8.1f} s")
    print(f"speed ratio: {t_slow / t_fast:.1f}x (target >= 20x); max |score diff| {diff:.2e} (target <= 1e-4)")
    save("refusal_sweep", {"model": m.spec, "layer": layer, "n_prompts": len(ex), "tokens": tokens,
                           "conditions": len(deltas), "batch_size": args.batch_size,
                           "naive_seconds": round(t_slow, 2), "reuse_seconds": round(t_fast, 2),
                           "speedup": target(t_slow / t_fast, 20, ">="),
                           "max_abs_score_diff": target(diff, 1e-4, "<=")})


if __name__ == "__main__":
    main()
