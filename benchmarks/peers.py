"""traitlab against the peers: steering-vectors and repeng, same model, pairs, layer and vector.

Per round (rounds alternate traitlab / peers so machine noise hits both):

- **training**: a mean-difference vector at ``resid_post@L`` from the same contrast pairs
  (traitlab: encode + ``extract`` + ``fit_direction('mean_diff')``; steering-vectors:
  ``train_steering_vector`` with its mean aggregator; repeng: ``ControlVector.train``,
  whose only linear method is ``pca_diff``). Same batch size everywhere.
- **generation**: 32 prompts × 24 new tokens, greedy, one left-padded batch, unsteered and
  steered with traitlab's vector at ``coef`` (every position, as the peers' hooks do).
- **parity**: next-token logits of the parity prompts with that vector and coefficient in
  each library, and the greedy tokens of the steered generations.

The peers run in ``build/peer-venv`` (see ``peer_env.py``) on the same safetensors weights;
vectors and logits cross over through files. Targets (issue 7): training >= 1.5x faster
than each peer, steered generation <= 1.05x unsteered, logits equal to the peers'.

    python benchmarks/peers.py --model smollm2-135m-instruct --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from common import save, target
from peer_env import peer_python
from safetensors.torch import load_file, save_file

from traitlab.activations import extract
from traitlab.chat import Encoded
from traitlab.data import load_trait
from traitlab.directions import fit_direction
from traitlab.models import load_model
from traitlab.sites import Site
from traitlab.steering import Steer, generate_steered, steered_logits
from traitlab.zoo import dequantized_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--trait", default="optimism")
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--coef", type=float, default=2.0, help="multiplier on the raw mean-difference vector")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gen-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--parity-prompts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    m = load_model(args.model, quiet=True)
    tok = m.tokenizer
    layer = m.n_layers // 2 if args.layer is None else args.layer
    site = Site("resid_post", layer)
    ds = load_trait(args.trait)
    pairs = [(m.chat.prompt(p.pos_prompt) + p.pos_response, m.chat.prompt(p.neg_prompt) + p.neg_response)
             for p in ds.pairs]
    questions = [p.pos_prompt for p in ds.pairs]
    gen_texts = [m.chat.prompt(q) for q in questions[: args.gen_prompts]]
    parity_texts = [m.chat.prompt(q) for q in questions[-args.parity_prompts:]]

    def encode(text: str) -> Encoded:  # what the peers' tokenizer call produces
        ids = tok(text)["input_ids"]
        return Encoded(tuple(ids), len(ids))

    def train() -> torch.Tensor:
        pos = [encode(p) for p, _ in pairs]
        neg = [encode(n) for _, n in pairs]
        acts = extract(m, pos + neg, [site], position="last", batch_size=args.batch_size, cache=False,
                       progress=False)[site]
        d = fit_direction("mean_diff", acts[: len(pos)], acts[len(pos):])
        return d.vector * d.raw_norm  # the raw mean difference, as the peers return it

    print(f"model {m.spec}, {site}, {len(pairs)} pairs, batch {args.batch_size}, "
          f"{len(gen_texts)} x {args.max_new_tokens} tokens, threads {torch.get_num_threads()}")
    vector = train()  # also the warm-up
    steer = [Steer(site, vector, args.coef)]
    gen_ex = [encode(t) for t in gen_texts]
    parity_ex = [encode(t) for t in parity_texts]
    generate_steered(m, gen_ex[:2], steer, max_new_tokens=2)

    py = peer_python()
    work = Path(tempfile.mkdtemp(prefix="traitlab-peers-"))
    save_file({"vector": vector.float().contiguous()}, str(work / "vector.safetensors"))
    job = {"model_dir": str(dequantized_dir(m.spec, quiet=True)), "layer": layer, "coef": args.coef,
           "batch_size": args.batch_size, "pairs": pairs, "gen_prompts": gen_texts,
           "parity_prompts": parity_texts, "max_new_tokens": args.max_new_tokens,
           "vector_path": str(work / "vector.safetensors"), "out_dir": str(work),
           "threads": torch.get_num_threads()}
    (work / "job.json").write_text(json.dumps(job))

    times: dict[str, list[float]] = {}

    def clock(name: str, fn):
        t = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for r in range(args.rounds):
        clock("train_traitlab", train)
        plain_ids = clock("generate_plain_traitlab", lambda: generate_steered(
            m, gen_ex, [], max_new_tokens=args.max_new_tokens, batch_size=len(gen_ex)))
        steered_txt = clock("generate_traitlab", lambda: generate_steered(
            m, gen_ex, steer, max_new_tokens=args.max_new_tokens, positions="all", batch_size=len(gen_ex)))
        subprocess.run([str(py), str(Path(__file__).with_name("peer_worker.py")), str(work / "job.json")],
                       check=True)
        peer = json.loads((work / "peer_result.json").read_text())
        for k, v in peer["times"].items():
            times.setdefault(k, []).append(v)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    med = {k: statistics.median(v) for k, v in times.items()}
    pt = load_file(str(work / "peer_tensors.safetensors"))
    ours_logits = steered_logits(m, parity_ex, steer, positions="all", batch_size=1)
    plain_logits = steered_logits(m, parity_ex, [], batch_size=1)
    same_tokens = peer["parity_ids"] == [list(e.ids) for e in parity_ex]

    def tokens_of(texts: list[str]) -> list[list[int]]:
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def agree(a: list[list[int]], b: torch.Tensor) -> float:
        eos = {tok.eos_token_id, tok.pad_token_id}
        hits = total = 0
        for x, y in zip(a, b.tolist(), strict=True):
            y = [t for t in y if t not in eos]
            n = min(len(x), len(y))
            hits += sum(int(i == j) for i, j in zip(x[:n], y[:n], strict=True))
            total += max(len(x), len(y))
        return hits / max(total, 1)

    ours_ids = tokens_of(steered_txt)
    cos = torch.nn.functional.cosine_similarity
    fig = {
        "model": m.spec, "site": str(site), "n_pairs": len(pairs), "batch_size": args.batch_size,
        "coef": args.coef, "gen": f"{len(gen_ex)} prompts x {args.max_new_tokens} tokens",
        "rounds": args.rounds, "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "train_speedup_vs_steering_vectors": target(med["train_steering_vectors"] / med["train_traitlab"], 1.5, ">="),
        "train_speedup_vs_repeng": target(med["train_repeng"] / med["train_traitlab"], 1.5, ">="),
        "steered_over_unsteered_traitlab": target(med["generate_traitlab"] / med["generate_plain_traitlab"], 1.05, "<="),
        "steered_over_unsteered_steering_vectors": round(med["generate_steering_vectors"] / med["generate_plain"], 4),
        "steered_over_unsteered_repeng": round(med["generate_repeng"] / med["generate_plain"], 4),
        "traitlab_steered_vs_peer_plain": round(med["generate_traitlab"] / med["generate_plain"], 4),
        "same_token_ids": bool(same_tokens),
        "vector_cosine_vs_steering_vectors": round(float(cos(vector, pt["sv_vector"], dim=0)), 6),
        "vector_rel_diff_vs_steering_vectors": float((vector - pt["sv_vector"]).norm() / vector.norm()),
        "vector_abs_cosine_vs_repeng_pca": round(abs(float(cos(vector, pt["repeng_vector"], dim=0))), 4),
        "logit_max_abs_diff_vs_steering_vectors": float((ours_logits - pt["sv_logits"]).abs().max()),
        "logit_max_abs_diff_vs_repeng": float((ours_logits - pt["repeng_logits"]).abs().max()),
        "logit_max_abs_diff_unsteered": float((plain_logits - pt["plain_logits"]).abs().max()),
        "logit_steering_effect": float((ours_logits - plain_logits).abs().max()),
        "greedy_token_agreement_vs_steering_vectors": round(agree(ours_ids, pt["sv_ids"]), 4),
        "greedy_token_agreement_vs_repeng": round(agree(ours_ids, pt["repeng_ids"]), 4),
        "greedy_token_agreement_unsteered": round(agree(tokens_of(plain_ids), pt["plain_ids"]), 4),
    }
    fig["logit_parity"] = target(max(fig["logit_max_abs_diff_vs_steering_vectors"],
                                     fig["logit_max_abs_diff_vs_repeng"]), 1e-3, "<=")
    for k, v in fig.items():
        print(f"{k}: {v}")
    save("peers", fig)


if __name__ == "__main__":
    main()
