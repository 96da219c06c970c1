"""A prompt batch's prefill, padded whole vs in length groups (``traitlab.prefill``), alternating A/B rounds.

The refusal dial's HARMFUL prompts are mostly ~50 tokens with a few long HarmBench ones (the
longest 213), so one left-padded batch is mostly padding. Old: the batch's prefix (all but the
last token) run whole. New: ``prefill`` runs each group of similar length at its own width and
joins the caches. Then the dial's unsteered generation of those prompts end to end (one delta of
zeros, its 24 new tokens and 288 rows a step), old prefill against new: identical greedy texts
expected.

Each side runs ``--rounds`` times in A/B/A/B order; ratios are of the medians.

    TRAITLAB_DATA_ROOT=... python benchmarks/prefill_groups.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save, target

from traitlab import prefill as prefill_mod
from traitlab import steering
from traitlab.activations import _pad_batch
from traitlab.experiments import refusal_dial as rd
from traitlab.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=288)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    P = rd.Params(model=args.model, n_harmful=args.prompts)
    m = load_model(args.model, dtype="float32", quiet=True)
    ex = rd.encode(m, rd.load_sets(P).harmful)
    batch = _pad_batch(ex, "left", m.tokenizer.pad_token_id)
    prefix = {k: v[:, :-1] for k, v in batch.items()}
    lengths = prefix["attention_mask"].sum(1).tolist()
    groups = prefill_mod.length_groups(lengths)
    grouped_tokens = sum(len(g) * lengths[g[0]] for g in groups)

    def whole(hf, inputs, keep=None):
        return hf(**inputs, use_cache=True, logits_to_keep=1).past_key_values

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    with torch.no_grad():
        whole(m.hf, {k: v[:2] for k, v in prefix.items()})  # warm-up
        old_s, new_s = [], []
        for _ in range(args.rounds):
            dt, a = timed(lambda: whole(m.hf, prefix))
            old_s.append(dt)
            dt, b = timed(lambda: prefill_mod.prefill(m.hf, prefix))
            new_s.append(dt)
    real = prefix["attention_mask"].bool()
    diff = max(float((getattr(x, n)[r][:, real[r]] - getattr(y, n)[r][:, real[r]]).abs().max())
               for x, y in zip(a.layers, b.layers, strict=True) for n in ("keys", "values") for r in range(len(ex)))

    zeros = torch.zeros(1, m.d_model)
    kw = {"max_new_tokens": args.new_tokens, "layer": m.n_layers // 2, "deltas": zeros, "batch_size": args.batch_size}
    gen_old, gen_new = [], []
    for _ in range(args.rounds):
        steering.prefill = whole  # the old path: the prefix batch run whole
        try:
            dt, texts_old = timed(lambda: steering.generate(m, ex, **kw))
        finally:
            steering.prefill = prefill_mod.prefill
        gen_old.append(dt)
        dt, texts_new = timed(lambda: steering.generate(m, ex, **kw))
        gen_new.append(dt)
    same = sum(x == y for x, y in zip(texts_old, texts_new, strict=True))

    speed = statistics.median(old_s) / statistics.median(new_s)
    gen_speed = statistics.median(gen_old) / statistics.median(gen_new)
    print(f"{len(ex)} prompts: {sum(lengths)} prefix tokens, {real.numel()} padded whole, "
          f"{grouped_tokens} in {len(groups)} groups")
    print(f"prefill: whole {statistics.median(old_s):.2f} s, grouped {statistics.median(new_s):.2f} s: "
          f"{speed:.2f}x; max |key/value diff| {diff:.1e}")
    print(f"generation: {statistics.median(gen_old):.1f} s vs {statistics.median(gen_new):.1f} s: {gen_speed:.2f}x; "
          f"{same}/{len(ex)} texts identical")
    save("prefill_groups", {
        "model": args.model, "n_prompts": len(ex), "prefix_tokens": int(sum(lengths)),
        "padded_tokens_whole": int(real.numel()),
        "padded_tokens_grouped": int(grouped_tokens), "groups": len(groups),
        "rounds": args.rounds, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
        "prefill": {"seconds": {"old": old_s, "new": new_s}, "speedup": target(speed, 2.0, ">="),
                    "max_abs_kv_diff": target(diff, 1e-4, "<=")},
        "generation": {"seconds": {"old": gen_old, "new": gen_new}, "speedup": target(gen_speed, 1.5, ">="),
                       "identical_share": target(same / len(ex), 1.0, ">=")},
    })


if __name__ == "__main__":
    main()
