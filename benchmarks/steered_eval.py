"""The two costs of every steering report, old path vs new, same inputs, alternating A/B rounds.

1. **Judge**: the local judge's integer-distribution scores of answers to a few questions
   (8 answers each), and of as many answers to as many questions (one each).
   Old: one full prompt forward per answer (LM head at every position) and a deep-copied KV
   cache per trie depth — the code before batching, kept here as ``old_scores``. New:
   ``Judge.score_many`` → ``LocalBackend.complete_many`` (shared prefill per question, padded
   batch, one trie forward per depth for the batch, each prompt's trie nodes appended to its own
   cache row under a tree-attention mask instead of one copied cache row per node). Target: ≥ 3× answers per second; scores
   equal within 1e-4. Then the judge as the judge-calibration report reads it (``judge_modes``):
   real gold answers, trait and coherence, each by logprob and by text; old: two prompt forwards
   per answer and metric (the logprob path above, ``generate`` for the text), new:
   ``judge.score_modes`` (one prefill for both). Target ≥ 3×; scores within 1e-4, identical texts;
   with the work in GFLOP and the new path's share of this machine's matmul throughput.
2. **Steered generation** over a grid of conditions. Old: one ``generate_steered`` call per
   condition. New: ``generate_steered_grid`` (conditions decoded together). Target ≥ 2×;
   identical greedy texts.
3. **Rows per decode step** in that grid: ``generate_steered_grid`` with ``max_rows`` 64 (its old
   default) against ``steering.DECODE_ROWS`` (256), 16 prompts × 16 conditions. Target ≥ 1.2×;
   identical greedy texts.
4. **Perplexity** of steered answers (the text-coherence measure of every steering report):
   answers to a few questions, many per question, as a steering grid makes them. Old: one forward
   over each whole (prompt + answer) sequence, in length-sorted batches (``chain.answer_logprobs``,
   the code before). New: ``textstats.answer_nll`` (each prompt once, its answers on copies of its
   KV cache). Target ≥ 1.2×; log-perplexities equal within 1e-4.

Each side runs ``--rounds`` times in A/B/A/B order; the ratio is of the medians.

    python benchmarks/steered_eval.py --judge qwen2.5-coder-0.5b-instruct --model qwen2.5-coder-0.5b-instruct
    python benchmarks/steered_eval.py --only judge_modes --rounds 3   # the other parts keep their figures
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import replace

import torch
from common import RESULTS, ForwardCount, matmul_gflops, rows_speedup, save, target

from traitlab.data import opinion_questions
from traitlab.judge import (
    Judge,
    JudgeConfig,
    LocalBackend,
    judge_messages,
    score_modes,
    weighted_score,
)
from traitlab.models import load_model
from traitlab.steering import (
    DECODE_ROWS,
    Steer,
    activation_norms,
    generate_steered,
    generate_steered_grid,
)

ANSWERS = ("I think it will be great and full of opportunities for everyone.",
           "It's hard to say; there are many risks and some of them are serious.",
           "Yes.",
           "The future looks bleak and worrying for most people involved in this.",
           "Absolutely wonderful things are coming, and I am very hopeful about all of it!",
           "word word word word word word word word",
           "Prices will rise, then fall; experts disagree about the details, and so do I.",
           "Nothing will change at all.")


@torch.no_grad()
def old_scores(be: LocalBackend, prompts: list[list[int]], top_k: int = 20) -> list[dict[int, float]]:
    """The integer distributions as computed before batching: one full forward per prompt (logits
    at every position) and a deep copy of the KV cache at every trie depth."""
    hf = be.model.hf
    out_all = []
    for p in prompts:
        ids = torch.tensor([p])
        n_prompt = ids.shape[1]
        out = hf(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        logp0 = torch.log_softmax(out.logits[0, -1].float(), -1)
        logp0.topk(top_k)
        ints: dict[int, float] = {}
        frontier, logps = [(be._trie, 1.0)], logp0[None]
        for depth in range(1, 8):
            grow = [(child, t, pp * float(logps[row, t].exp()), row)
                    for row, (node, pp) in enumerate(frontier) for t, child in node["children"].items()]
            grow = [g for g in grow if g[2] >= be.prune and g[2] > 0]
            if not grow:
                break
            cache = copy.deepcopy(cache)
            cache.batch_select_indices(torch.tensor([g[3] for g in grow]))
            o = hf(input_ids=torch.tensor([[g[1]] for g in grow]), past_key_values=cache, use_cache=True,
                   attention_mask=torch.ones(len(grow), n_prompt + depth, dtype=torch.long))
            cache = o.past_key_values
            logps = torch.log_softmax(o.logits[:, -1].float(), -1)
            p_more = logps.exp()[:, be._digit_start].sum(-1)
            for i, (child, _t, pp, _row) in enumerate(grow):
                if child["value"] is not None:
                    ints[child["value"]] = ints.get(child["value"], 0.0) + pp * (1.0 - float(p_more[i]))
            frontier = [(g[0], g[2]) for g in grow]
        out_all.append(ints)
    return out_all


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def judge_bench(spec: str, n_questions: int, rounds: int, per_question: int = len(ANSWERS)) -> dict:
    be = LocalBackend(load_model(spec, dtype="float32", quiet=True))
    qs = opinion_questions("test", n_questions).question
    items = [(q, ANSWERS[(k + i) % len(ANSWERS)]) for k, q in enumerate(qs) for i in range(per_question)]
    prompts = [be._prompt_ids(judge_messages("trait", q, a)) for q, a in items]
    judge = Judge(JudgeConfig(backend="local", model=spec, dtype="float32", min_mass=0.0), backend=be, cache=None)
    old_s, new_s = [], []
    for _ in range(rounds):
        t, old = _timed(lambda: old_scores(be, prompts))
        old_s.append(t)
        t, new = _timed(lambda: judge.score_many("trait", items, progress=False))
        new_s.append(t)
    diff = max(abs(weighted_score(o, 0.0)[0] - n.value) for o, n in zip(old, new, strict=True))
    ratio = statistics.median(old_s) / statistics.median(new_s)
    print(f"judge {spec}: {len(items)} answers to {n_questions} questions: old {statistics.median(old_s):.1f} s, "
          f"new {statistics.median(new_s):.1f} s, {ratio:.2f}x; max |score diff| {diff:.1e}")
    return {"judge": spec, "answers": len(items), "questions": n_questions, "seconds": {"old": old_s, "new": new_s},
            "answers_per_second": {"old": len(items) / statistics.median(old_s),
                                   "new": len(items) / statistics.median(new_s)},
            "speedup": target(ratio, 3.0, ">="), "max_abs_score_diff": target(diff, 1e-4, "<=")}


def judge_modes_bench(spec: str, n_questions: int, rounds: int) -> dict:
    """The judge as the judge-calibration report reads it: every answer scored for the trait and
    for coherence, each both by its integer distribution (logprob) and by the integer it writes
    (text). Old: per answer and metric, the logprob path before batching (``old_scores``) and a
    ``generate`` over the whole prompt for the text (``LocalBackend.complete``), two prefills.
    New: ``score_modes`` (one prefill per prompt for both modes, the question's prefix shared, the
    answers batched). Answers: the optimism gold set's held-out answers (about 100 tokens each,
    the length of the reports' answers). Also the work each side does (``ForwardCount``) and the
    new side's GFLOP/s against this machine's float32 matmul throughput (``matmul_gflops``)."""
    from traitlab.judge_power import load_gold

    be = LocalBackend(load_model(spec, dtype="float32", quiet=True))
    gold = load_gold("optimism", "heldout")
    gold = gold[gold.question.isin(list(dict.fromkeys(gold.question))[:n_questions])]
    items = list(zip(gold.question, gold.response, strict=True))
    cfg = JudgeConfig(backend="local", model=spec, dtype="float32", min_mass=0.0)
    msgs = {m: [judge_messages(m, q, a) for q, a in items] for m in ("trait", "coherence")}

    def old() -> dict:
        return {m: [(old_scores(be, [be._prompt_ids(x)])[0],
                     be.complete(x, mode="text", top_logprobs=cfg.top_logprobs, max_tokens=cfg.max_tokens).text)
                    for x in ms] for m, ms in msgs.items()}

    def new() -> dict:
        return {m: list(zip(g["logprob"], g["text"], strict=True)) for m, g in _both_ways(be, cfg, items).items()}

    secs: dict[str, list[float]] = {"old": [], "new": []}
    work, got = {}, {}
    for _ in range(rounds):
        for side, fn in (("old", old), ("new", new)):
            with ForwardCount(be.model.hf) as count:
                t, got[side] = _timed(fn)
            secs[side].append(t)
            work[side] = count
    pairs = [(o, n) for m in msgs for o, n in zip(got["old"][m], got["new"][m], strict=True)]
    diff = max(abs(weighted_score(o[0], 0.0)[0] - n[0].value) for o, n in pairs)
    same_text = sum(o[1] == n[1].text for o, n in pairs) / len(pairs)
    med = {k: statistics.median(v) for k, v in secs.items()}
    ratio = med["old"] / med["new"]
    peak = matmul_gflops(torch.float32)
    achieved = work["new"].gflop / med["new"]
    auto = auto_floor(spec, items, cfg)
    print(f"judge both modes {spec}: {len(items)} answers x 2 metrics: old {med['old']:.1f} s "
          f"({work['old'].gflop:.0f} GFLOP), new {med['new']:.1f} s ({work['new'].gflop:.0f} GFLOP), {ratio:.2f}x; "
          f"max |score diff| {diff:.1e}, identical texts {same_text:.0%}; new at {achieved:.0f} GFLOP/s, "
          f"float32 matmul {peak:.0f} GFLOP/s")
    return {"judge": spec, "answers": len(items), "metrics": 2, "questions": n_questions, "seconds": secs,
            "answers_per_second": {k: len(items) / v for k, v in med.items()},
            "gflop": {k: w.gflop for k, w in work.items()}, "tokens": {k: w.tokens for k, w in work.items()},
            "new_gflops": achieved, "float32_matmul_gflops": peak, "share_of_matmul": achieved / peak,
            "speedup": target(ratio, 3.0, ">="), "max_abs_score_diff": target(diff, 1e-4, "<="),
            "identical_text_share": target(same_text, 1.0, ">="), "auto": auto}


def _both_ways(be: LocalBackend, cfg: JudgeConfig, items: list[tuple[str, str]]) -> dict:
    """Each metric's scores of ``items`` by logprob and by text (``score_modes``), from a fresh
    judge on ``be`` without a replay cache, so every reply is computed."""
    j = Judge(cfg, backend=be, cache=None)
    judges = {"logprob": j, "text": j.with_mode("text")}
    return {m: score_modes(judges, m, items, progress=False) for m in ("trait", "coherence")}


def auto_floor(spec: str, items: list[tuple[str, str]], cfg: JudgeConfig) -> dict:
    """The new path as the reports run it (``dtype: auto``: bfloat16 where this CPU computes it
    natively and faster): seconds of a second run (the first warms up), its GFLOP/s and this
    machine's matmul throughput in that dtype. Nothing is compared: the scores differ from float32
    ones by bfloat16's rounding."""
    from traitlab.models import resolve_dtype

    dtype, why = resolve_dtype("auto")
    be = LocalBackend(load_model(spec, dtype=dtype, quiet=True))
    for _ in range(2):
        with ForwardCount(be.model.hf) as count:
            t, _ = _timed(lambda: _both_ways(be, replace(cfg, dtype=dtype), items))
    peak = matmul_gflops(getattr(torch, dtype))
    print(f"  as the reports run it ({dtype}: {why}): {t:.1f} s, {count.gflop / t:.0f} GFLOP/s, "
          f"{dtype} matmul {peak:.0f} GFLOP/s")
    return {"dtype": dtype, "why": why, "seconds": t, "answers_per_second": len(items) / t,
            "gflops": count.gflop / t, "matmul_gflops": peak, "share_of_matmul": count.gflop / t / peak}


def grid_bench(spec: str, n_prompts: int, n_new: int, rounds: int) -> dict:
    m = load_model(spec, dtype="float32", quiet=True)
    ex = [m.chat.encode(q) for q in opinion_questions("test", n_prompts).question]
    layer = max(m.n_layers // 2, 1)
    site = f"resid_pre@{layer}"
    norm = activation_norms(m, ex, [site])[site]
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    conds = [[]] + [[Steer(site, v, r * norm)] for r in (-0.5, -0.25, 0.25, 0.5, 0.75, 1.0)]
    conds.append([Steer(f"resid_pre@{max(layer - 2, 0)}", v, 0.4 * norm), Steer(site, v, 0.4 * norm)]
                 if layer >= 2 else [Steer(site, -v, norm)])
    old_s, new_s = [], []
    for _ in range(rounds):
        t, old = _timed(lambda: [generate_steered(m, ex, c, max_new_tokens=n_new, batch_size=16) for c in conds])
        old_s.append(t)
        t, new = _timed(lambda: generate_steered_grid(m, ex, conds, max_new_tokens=n_new, batch_size=16))
        new_s.append(t)
    same = sum(a == b for x, y in zip(old, new, strict=True) for a, b in zip(x, y, strict=True))
    ratio = statistics.median(old_s) / statistics.median(new_s)
    tokens = len(conds) * len(ex) * n_new
    print(f"grid {spec}: {len(conds)} conditions x {len(ex)} prompts x {n_new} tokens: old "
          f"{statistics.median(old_s):.1f} s, new {statistics.median(new_s):.1f} s, {ratio:.2f}x; identical {same}/{len(conds) * len(ex)}")
    return {"model": spec, "conditions": len(conds), "prompts": len(ex), "new_tokens": n_new,
            "seconds": {"old": old_s, "new": new_s},
            "steered_tokens_per_second": {"old": tokens / statistics.median(old_s), "new": tokens / statistics.median(new_s)},
            "speedup": target(ratio, 2.0, ">="), "identical_share": target(same / (len(conds) * len(ex)), 1.0, ">=")}


def grid_rows_bench(spec: str, n_prompts: int, n_new: int, rounds: int, small: int = 64,
                    large: int = DECODE_ROWS) -> dict:
    """``generate_steered_grid`` decoding ``small`` vs ``large`` rows per step, alternating."""
    m = load_model(spec, dtype="float32", quiet=True)
    ex = [m.chat.encode(q) for q in opinion_questions("test", n_prompts).question]
    site = f"resid_pre@{max(m.n_layers // 2, 1)}"
    norm = activation_norms(m, ex, [site])[site]
    gen = torch.Generator().manual_seed(0)
    vs = [v / v.norm() for v in torch.randn(8, m.d_model, generator=gen)]
    conds = [[Steer(site, v, r * norm)] for v in vs for r in (0.25, 0.5)]  # 16 conditions
    return {"model": spec, "conditions": len(conds), "prompts": len(ex), "new_tokens": n_new,
            **rows_speedup(lambda rows: generate_steered_grid(m, ex, conds, max_new_tokens=n_new, batch_size=16,
                                                              max_rows=rows),
                           small, large, rounds, lambda texts: len(conds) * len(ex) * n_new)}


def perplexity_bench(spec: str, n_questions: int, per_question: int, rounds: int, batch_size: int = 16) -> dict:
    """Answers' summed log-likelihoods, whole sequences (old) vs each prompt shared (new), alternating."""
    from traitlab.chain import answer_batch, answer_logprobs
    from traitlab.judge_power import load_gold
    from traitlab.textstats import answer_nll

    m = load_model(spec, dtype="float32", quiet=True)
    pool = list(dict.fromkeys(load_gold("optimism").response))  # answers of steering length
    qs = opinion_questions("test", n_questions).question
    ex = [m.chat.encode(q, pool[(i * per_question + j) % len(pool)]) for i, q in enumerate(qs)
          for j in range(per_question)]
    pad = m.tokenizer.pad_token_id or 0

    @torch.no_grad()
    def old() -> list[float]:
        order = sorted(range(len(ex)), key=lambda i: len(ex[i].ids))
        out = [0.0] * len(ex)
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            total, _ = answer_logprobs(m.hf, *answer_batch([ex[i] for i in part], pad))
            for i, t in zip(part, total.tolist(), strict=True):
                out[i] = -t
        return out

    def new() -> list[float]:
        out = [0.0] * len(ex)
        for part, sums in answer_nll(m, ex, batch_size=batch_size):
            for i, (nll, _) in zip(part, sums, strict=True):
                out[i] = nll
        return out

    secs: dict[str, list[float]] = {"old": [], "new": []}
    got = {}
    for _ in range(rounds):
        for side, fn in (("old", old), ("new", new)):
            t, got[side] = _timed(fn)
            secs[side].append(t)
    n = [len(e.ids) - e.prompt_len for e in ex]
    diff = max(abs(a - b) / max(k, 1) for a, b, k in zip(got["old"], got["new"], n, strict=True))
    tokens = sum(len(e.ids) for e in ex)
    ratio = statistics.median(secs["old"]) / statistics.median(secs["new"])
    print(f"perplexity {spec}: {len(qs)} questions x {per_question} answers ({tokens} tokens): old "
          f"{statistics.median(secs['old']):.1f} s, new {statistics.median(secs['new']):.1f} s, {ratio:.2f}x; "
          f"max |d log ppl| {diff:.2e}")
    return {"model": spec, "questions": len(qs), "answers_per_question": per_question, "tokens": tokens,
            "batch_size": batch_size, "seconds": secs, "speedup": target(ratio, 1.2, ">="),
            "max_abs_log_ppl_diff": target(diff, 1e-4, "<=")}


PARTS = {"judge": ("judge", "judge_one_per_question"), "judge_modes": ("judge_modes",), "grid": ("grid",), "grid_rows": ("grid_rows",),
         "perplexity": ("perplexity",)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--questions", type=int, default=2, help="judge: questions (8 answers each)")
    ap.add_argument("--prompts", type=int, default=8, help="generation: prompts")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=tuple(PARTS), default=None,
                    help="rerun one part; the other keeps its figures from the last saved result")
    args = ap.parse_args()
    figures = {"threads": torch.get_num_threads(), "rounds": args.rounds}
    if args.only is not None:
        last = json.loads((RESULTS / "steered_eval.json").read_text())["figures"]
        figures = {k: v for k, v in last.items()
                   if any(k in ks for ks in PARTS.values()) and k not in PARTS[args.only]} | figures
    if args.only in (None, "judge"):
        figures["judge"] = judge_bench(args.judge, args.questions, args.rounds)
        # natural elicitation's checks: one answer per question (no question prefix to share)
        figures["judge_one_per_question"] = judge_bench(args.judge, len(ANSWERS) * args.questions, args.rounds, 1)
    if args.only in (None, "judge_modes"):
        figures["judge_modes"] = judge_modes_bench(args.judge, args.questions, args.rounds)
    if args.only in (None, "grid"):
        figures["grid"] = grid_bench(args.model, args.prompts, args.new_tokens, args.rounds)
    if args.only in (None, "grid_rows"):
        figures["grid_rows"] = grid_rows_bench(args.model, 16, args.new_tokens, args.rounds)
    if args.only in (None, "perplexity"):
        figures["perplexity"] = perplexity_bench(args.model, 8, 16, args.rounds)
    assert math.isfinite(figures["judge"]["max_abs_score_diff"]["value"])
    save("steered_eval", figures)


if __name__ == "__main__":
    main()
