"""Extraction throughput: traitlab (nnsight, every layer's resid_post) vs a bare transformers
forward with ``output_hidden_states=True`` on the same prompts and batches.

Runs alternate (bare, traitlab, bare, traitlab, ...) so machine noise hits both; the
figure that matters is the ratio of median throughputs (target in issue 7: >= 0.95).

    python benchmarks/extraction_throughput.py --model smollm2-135m-instruct --n 64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save, target

from traitlab.activations import _pad_batch, extract
from traitlab.data import load_trait
from traitlab.models import load_model
from traitlab.sites import Site


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64, help="number of prompts")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--position", default="last", choices=["last", "mean", "all"])
    args = ap.parse_args()

    torch.manual_seed(0)
    m = load_model(args.model, quiet=True)
    ds = load_trait("optimism")
    pos, neg = ds.encode(m.chat)
    examples = (pos + neg)[: args.n]
    n_tokens = sum(len(e.ids) for e in examples)
    sites = [Site("resid_post", layer) for layer in range(m.n_layers)]
    print(f"model {m.spec}: {m.n_layers} layers, {len(examples)} prompts, {n_tokens} tokens, "
          f"threads {torch.get_num_threads()}, position {args.position}")

    def bare(bs: int) -> float:
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i].ids))
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(order), bs):
                inputs = _pad_batch([examples[j] for j in order[i:i + bs]], "left", m.tokenizer.pad_token_id)
                out = m.hf(**inputs, output_hidden_states=True, logits_to_keep=1)
                _ = [h[:, -1].clone() for h in out.hidden_states[1:]]
        return time.perf_counter() - t

    def ours(bs: int) -> float:
        t = time.perf_counter()
        extract(m, examples, sites, position=args.position, batch_size=bs, cache=False, progress=False)
        return time.perf_counter() - t

    print(f"{'batch':>5} {'bare tok/s':>11} {'traitlab tok/s':>15} {'ratio':>7}")
    rows = []
    for bs in args.batch_sizes:
        bare(bs), ours(bs)  # warm-up
        tb, to = [], []
        for _ in range(args.repeats):
            tb.append(bare(bs))
            to.append(ours(bs))
        rb, ro = n_tokens / statistics.median(tb), n_tokens / statistics.median(to)
        print(f"{bs:>5} {rb:>11.0f} {ro:>15.0f} {ro / rb:>7.2f}")
        rows.append({"batch_size": bs, "bare_tokens_per_s": round(rb, 1), "traitlab_tokens_per_s": round(ro, 1),
                     "bare_seconds": [round(x, 3) for x in tb], "traitlab_seconds": [round(x, 3) for x in to],
                     "ratio": target(ro / rb, 0.95, ">=")})
    save("extraction_throughput", {"model": m.spec, "layers": m.n_layers, "site": "resid_post, every layer",
                                   "position": args.position, "n_prompts": len(examples), "tokens": n_tokens,
                                   "repeats": args.repeats, "runs": rows})


if __name__ == "__main__":
    main()
