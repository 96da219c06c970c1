"""The peers' side of ``benchmarks/peers.py``; runs inside the peer environment.

Never imports traitlab (that environment has transformers 4 and numpy 1). Reads a job
file written by ``peers.py``, runs one round of each measurement, writes timings as JSON
and vectors / logits / generated ids as safetensors next to it.

    build/peer-venv/bin/python benchmarks/peer_worker.py JOB.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from repeng import ControlModel, ControlVector, DatasetEntry
from safetensors.torch import load_file, save_file
from steering_vectors import SteeringVector, train_steering_vector
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    # transformers 5 saved the tokenizer as "TokenizersBackend", a class 4.x lacks; the fast
    # tokenizer reads the same tokenizer.json and special tokens.
    tok = PreTrainedTokenizerFast.from_pretrained(job["model_dir"])
    tok.model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids for a decoder
    # transformers 5 writes rope settings as `rope_parameters`; 4.x reads `rope_theta` and would
    # silently fall back to 10000 (different logits from the same weights).
    cfg = AutoConfig.from_pretrained(job["model_dir"])
    rope = json.loads((Path(job["model_dir"]) / "config.json").read_text()).get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg.rope_theta = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg.rope_scaling = dict(rope)
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], config=cfg, dtype=torch.float32).eval()
    layer, coef, bs = job["layer"], job["coef"], job["batch_size"]
    ours = load_file(job["vector_path"])["vector"]
    pairs = [tuple(p) for p in job["pairs"]]
    times: dict[str, float] = {}

    # ---- vector training on the same pairs and layer ------------------------------------
    t = time.perf_counter()
    sv = train_steering_vector(model, tok, pairs, layers=[layer], layer_type="decoder_block",
                               read_token_index=-1, batch_size=bs, show_progress=False)
    times["train_steering_vectors"] = time.perf_counter() - t
    t = time.perf_counter()
    cv = ControlVector.train(model, tok, [DatasetEntry(p, n) for p, n in pairs], hidden_layers=[layer],
                             batch_size=bs, method="pca_diff")
    times["train_repeng"] = time.perf_counter() - t

    # ---- steered logits with *our* vector (parity), one prompt at a time: no padding ------
    def last_logits() -> torch.Tensor:
        rows = []
        with torch.no_grad():
            for p in job["parity_prompts"]:
                enc = tok(p, return_tensors="pt")
                rows.append(model(**enc).logits[0, -1].float())
        return torch.stack(rows)

    plain_logits = last_logits()
    with SteeringVector({layer: ours}, "decoder_block").apply(model, multiplier=coef, min_token_index=0):
        sv_logits = last_logits()
    cmodel = ControlModel(model, [layer])
    cmodel.set_raw_control({layer: coef * ours})
    model_ref = model
    model = cmodel  # repeng wraps the layers in place; the ControlModel forwards to them
    rp_logits = last_logits()
    cmodel.reset()
    model = model_ref

    # ---- generation: 32 prompts × N tokens, greedy, one left-padded batch ---------------
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(job["gen_prompts"], return_tensors="pt", padding=True)
    gen = dict(max_new_tokens=job["max_new_tokens"], do_sample=False, pad_token_id=tok.pad_token_id)

    def timed(name: str, fn) -> torch.Tensor:
        t = time.perf_counter()
        with torch.no_grad():
            out = fn()
        times[name] = time.perf_counter() - t
        return out[:, enc["input_ids"].shape[1]:]

    timed("warmup", lambda: model.generate(**{k: v[:2] for k, v in enc.items()}, max_new_tokens=2,
                                            do_sample=False, pad_token_id=tok.pad_token_id))
    plain_ids = timed("generate_plain", lambda: model.generate(**enc, **gen))
    with SteeringVector({layer: ours}, "decoder_block").apply(model, multiplier=coef, min_token_index=0):
        sv_ids = timed("generate_steering_vectors", lambda: model.generate(**enc, **gen))
    cmodel.set_raw_control({layer: coef * ours})
    rp_ids = timed("generate_repeng", lambda: cmodel.generate(**enc, **gen))
    cmodel.reset()
    times.pop("warmup")

    out = Path(job["out_dir"])
    save_file({"sv_vector": sv.layer_activations[layer].float().contiguous(),
               "repeng_vector": torch.from_numpy(cv.directions[layer]).float().contiguous(),
               "plain_logits": plain_logits, "sv_logits": sv_logits, "repeng_logits": rp_logits,
               "plain_ids": plain_ids.contiguous(), "sv_ids": sv_ids.contiguous(), "repeng_ids": rp_ids.contiguous()},
              str(out / "peer_tensors.safetensors"))
    parity_ids = [tok(p)["input_ids"] for p in job["parity_prompts"]]
    (out / "peer_result.json").write_text(json.dumps({"times": times, "parity_ids": parity_ids,
                                                      "gen_input_ids": enc["input_ids"].tolist()}))


if __name__ == "__main__":
    main(sys.argv[1])
