"""Where steered generation's time goes: traitlab's decoding against the bare model, and the
arithmetic floor it sits on.

Steered generation (``steering.generate``: the prompt's prefix prefilled once and shared, the
steer added at its last token through nnsight, then greedy decoding) against the same work done
by bare ``transformers``: the same prefix prefilled once, the last token and the decoding run by
``model.generate`` on a copy of that cache, no nnsight. Same rows (the dial's HARMFUL prompts ×
conditions, zero deltas so both sides must give the same tokens), alternating rounds. Two
traitlab timings: with every row decoded to the longest answer, as ``transformers``' ``generate``
does (``steering._decodes_itself`` off): the ratio of medians to bare is nnsight's and traitlab's
overhead (target ≤ 1.05×); and as the reports run it, each row leaving the batch at its end token
(``steering._decode``): the ratio of the two is what dropping finished rows saves (target ≥ 1.05×
on these prompts, which the 0.5B mostly refuses in a dozen tokens), beside the ideal ratio
rows × tokens / generated tokens. Also the achieved throughput
(generated tokens per second and GFLOP/s at 2 × parameters FLOPs per token) and the share of a
decode step spent in the unembedding (``lm_head``): what a report's generated-token count costs
at best on this machine, at this many rows.

Then rows per decode step (``--rows-prompts`` of the dial's HARMFUL prompts × ``--rows-conditions``
deltas at the dial's scale, ``steering.generate`` as the dial runs it): ``--small-rows`` (the
dial's old batch) against ``--large-rows`` (its batch now) per decode batch, alternating. A decode
step's matmuls take [rows, d] activations: at a few dozen rows they run well below the machine's
matrix throughput, at a few hundred close to it (target ≥ 1.2× faster; identical tokens).

    TRAITLAB_DATA_ROOT=... python benchmarks/decode_floor.py --prompts 6 --conditions 8
    TRAITLAB_DATA_ROOT=... python benchmarks/decode_floor.py --only rows   # keeps the first part's figures
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from common import RESULTS, rows_speedup, save, target

from traitlab import steering
from traitlab.experiments import refusal_dial as rd
from traitlab.models import load_model
from traitlab.steering import _pad_batch, generate, to_model


def full_rows(m, ex, **kw) -> list[list[str]]:
    """``generate`` with every row decoded to the longest answer (transformers' ``generate``)."""
    keep = steering._decodes_itself
    steering._decodes_itself = lambda model: False
    try:
        return generate(m, ex, **kw)
    finally:
        steering._decodes_itself = keep


@torch.no_grad()
def bare(m, ex, n_cond: int, new_tokens: int) -> list[list[str]]:
    """The same rows by bare transformers: prefix prefilled once, copied per condition."""
    full = to_model(_pad_batch(ex, "left", m.tokenizer.pad_token_id), m)
    out = m.hf(input_ids=full["input_ids"][:, :-1], attention_mask=full["attention_mask"][:, :-1],
               position_ids=full["position_ids"][:, :-1], use_cache=True, logits_to_keep=1)
    cache = copy.deepcopy(out.past_key_values)
    cache.batch_repeat_interleave(n_cond)
    ids = m.hf.generate(input_ids=full["input_ids"].repeat_interleave(n_cond, 0),
                        attention_mask=full["attention_mask"].repeat_interleave(n_cond, 0), past_key_values=cache,
                        max_new_tokens=new_tokens, do_sample=False, pad_token_id=m.tokenizer.pad_token_id)
    new = m.tokenizer.batch_decode(ids[:, full["input_ids"].shape[1]:], skip_special_tokens=True)
    return [new[i * n_cond:(i + 1) * n_cond] for i in range(len(ex))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--conditions", type=int, default=8)
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows-prompts", type=int, default=32, help="rows part: HARMFUL prompts")
    ap.add_argument("--rows-conditions", type=int, default=9, help="rows part: conditions (the dial's chunk)")
    ap.add_argument("--small-rows", type=int, default=48)
    ap.add_argument("--large-rows", type=int, default=288)
    ap.add_argument("--rows-rounds", type=int, default=2)
    ap.add_argument("--only", choices=("floor", "rows"), default=None,
                    help="rerun one part; the other keeps its figures from the last saved result")
    args = ap.parse_args()
    m = load_model(args.model, dtype="float32", quiet=True)
    figures = {}
    if args.only is not None:
        last = json.loads((RESULTS / "decode_floor.json").read_text())["figures"]
        figures = {k: v for k, v in last.items() if (k == "batch_rows") != (args.only == "rows")}
    if args.only in (None, "floor"):
        figures |= floor(m, args)
    if args.only in (None, "rows"):
        figures["batch_rows"] = rows_bench(m, args)
    save("decode_floor", figures)


def rows_bench(m, args) -> dict:
    """The dial's generation at two row counts per decode batch, alternating rounds."""
    ex = rd.encode(m, rd.load_sets(rd.Params(model=args.model)).harmful[:args.rows_prompts])
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    deltas = torch.linspace(-2, 2, args.rows_conditions)[:, None] * 8.0 * v / v.norm()  # the dial's scale

    def generated(texts: list[list[str]]) -> int:
        return sum(min(args.new_tokens, len(m.tokenizer(t, add_special_tokens=False).input_ids) + 1)
                   for row in texts for t in row)

    return {"prompts": len(ex), "conditions": args.rows_conditions, "new_tokens": args.new_tokens,
            **rows_speedup(lambda rows: generate(m, ex, max_new_tokens=args.new_tokens, layer=args.layer,
                                                 deltas=deltas, batch_size=rows),
                           args.small_rows, args.large_rows, args.rows_rounds, generated)}


def floor(m, args) -> dict:
    """traitlab's decoding against bare transformers, and with finished rows dropped."""
    ex = rd.encode(m, rd.load_sets(rd.Params(model=args.model)).harmful[:args.prompts])
    ex = sorted(ex, key=lambda e: -len(e.ids))  # steering.generate's own order: one batch, the same padding
    rows = len(ex) * args.conditions
    deltas = torch.zeros(args.conditions, m.d_model)
    kw = {"max_new_tokens": args.new_tokens, "layer": args.layer, "deltas": deltas, "batch_size": rows}
    bare(m, ex[:1], 1, 2)  # warm-up
    old_s, new_s, drop_s = [], [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        old = bare(m, ex, args.conditions, args.new_tokens)
        old_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        new = full_rows(m, ex, **kw)
        new_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        dropped = generate(m, ex, **kw)
        drop_s.append(time.perf_counter() - t)

    def same_as_bare(out):
        return sum(a == b for x, y in zip(old, out, strict=True) for a, b in zip(x, y, strict=True))

    same, same_drop = same_as_bare(new), same_as_bare(dropped)
    t_old, t_new, t_drop = (statistics.median(x) for x in (old_s, new_s, drop_s))
    overhead, saving = t_new / t_old, t_new / t_drop
    eos = set(steering._eos_ids(m).tolist())
    generated = sum(min(args.new_tokens, len(m.tokenizer(t, add_special_tokens=False).input_ids) + 1)
                    for row in dropped for t in row) if eos else rows * args.new_tokens
    ideal = rows * args.new_tokens / generated
    # the unembedding's share of one decode step at this batch
    h = torch.randn(rows, m.d_model)
    w = m.hf.get_output_embeddings().weight
    t = time.perf_counter()
    for _ in range(10):
        h @ w.T
    head_s = (time.perf_counter() - t) / 10
    params = sum(p.numel() for p in m.hf.parameters())
    tok_s = rows * args.new_tokens / t_new
    step_s = t_new / args.new_tokens
    gflops = tok_s * 2 * params / 1e9
    print(f"{args.model}: {len(ex)} prompts x {args.conditions} conditions x {args.new_tokens} tokens: bare "
          f"{t_old:.1f} s, traitlab {t_new:.1f} s, overhead {overhead:.3f}x "
          f"(target <= 1.05x); identical {same}/{rows}; {tok_s:.1f} generated tokens/s = "
          f"{gflops:.0f} GFLOP/s; lm_head {head_s:.3f} s of a {step_s:.3f} s step "
          f"({head_s / step_s:.0%}); 100k generated tokens take >= {1e5 / tok_s / 60:.0f} min here; "
          f"dropping finished rows: {t_drop:.1f} s, {saving:.2f}x faster (ideal {ideal:.2f}x: {generated} of "
          f"{rows * args.new_tokens} row-steps generate a token), identical {same_drop}/{rows}")
    return {
        "model": args.model, "prompts": len(ex), "conditions": args.conditions, "new_tokens": args.new_tokens,
        "rows": rows, "parameters": params, "seconds": {"bare": old_s, "traitlab": new_s, "row_dropping": drop_s},
        "overhead": target(overhead, 1.05, "<="), "identical_share": target(same / rows, 1.0, ">="),
        "row_dropping_speedup": target(saving, 1.05, ">="),
        "row_dropping_identical_share": target(same_drop / rows, 1.0, ">="),
        "row_dropping_ideal": ideal, "generated_tokens": generated,
        "generated_tokens_per_second": tok_s, "gflops": gflops,
        "lm_head_seconds": head_s, "step_seconds": step_s, "lm_head_share": head_s / step_s,
        "minutes_per_100k_tokens": 1e5 / tok_s / 60, "threads": torch.get_num_threads(), "rounds": args.rounds}


if __name__ == "__main__":
    main()
