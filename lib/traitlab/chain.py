"""A base → SFT → DPO model chain built offline: a small analogue of the seed's
Mistral-7B → mistral-7b-sft-beta → zephyr-7b-beta.

1. **Teacher answers**: an instruct model (default the offline Qwen2.5-Coder-1.5B-Instruct)
   answers our instruction set greedily (``distill``).
2. **SFT**: the base model is fine-tuned on (instruction, teacher answer) in the plain
   ``User: …\\nAssistant:`` format, loss on answer tokens only (``sft``).
3. **DPO**: from the SFT model, preference pairs chosen = teacher answer, rejected = the
   base model's own answer to the same instruction; the SFT model is the frozen reference
   (``dpo``; Rafailov et al. 2023, sigmoid loss with ``beta``).

Each stage is cached in ``$TRAITLAB_CACHE/chain/<key>/`` (key: every setting and the
fingerprints of the models and data it came from) as a transformers folder written to a
temporary name and renamed when complete, so an interrupted build never leaves a
half-written model, and a finished one loads with ``traitlab.models.load_model(path)``.

Example (tiny random models; real runs use the offline zoo):
    >>> from traitlab.models import load_model
    >>> m = load_model("tiny-llama")
    >>> ex = [("Say hi", "Hi!"), ("Count to two", "One, two.")]
    >>> curve = sft(m, ex, ChainConfig(sft_epochs=1, batch_size=2), progress=False)
    >>> list(curve.columns)
    ['stage', 'step', 'epoch', 'loss', 'lr']
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import cachelog
from .atomic import exclusive, stable_hash, write_json, write_text
from .chat import ChatFormat, Encoded
from .data import HARMFUL_SOURCES, DataError, harmful_prompts, read_project_jsonl
from .models import LoadedModel, describe, load_model
from .params import ParamError
from .paths import cache_dir
from .progress import tqdm
from .refusal import is_refusal


@dataclass(frozen=True)
class ChainConfig:
    """Every training knob of the chain (the report prints it)."""

    max_len: int = 256
    batch_size: int = 8
    sft_epochs: int = 2
    sft_lr: float = 5e-5
    dpo_epochs: int = 1
    dpo_lr: float = 5e-6
    dpo_beta: float = 0.1
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    train_embeddings: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_len < 8 or self.batch_size < 1:
            raise ValueError("max_len must be >= 8 and batch_size >= 1")
        if min(self.sft_epochs, self.dpo_epochs) < 0:
            raise ValueError("epochs must be >= 0")
        if min(self.sft_lr, self.dpo_lr, self.dpo_beta) <= 0:
            raise ValueError("learning rates and dpo_beta must be > 0")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")


def encode_pair(fmt: ChatFormat, instruction: str, response: str, max_len: int) -> Encoded:
    """Plain-format prompt + response + EOS, truncated to ``max_len`` tokens (response side)."""
    e = fmt.encode(instruction, response)
    ids = list(e.ids) + [fmt.tokenizer.eos_token_id]
    if e.prompt_len >= max_len:
        raise ValueError(f"instruction {instruction[:60]!r} alone is {e.prompt_len} tokens "
                         f"(max_len {max_len}); shorten it or raise max_len")
    return Encoded(tuple(ids[:max_len]), e.prompt_len)


def input_device(hf: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: its input embeddings' device."""
    return hf.get_input_embeddings().weight.device


def answer_batch(examples: Sequence[Encoded], pad_id: int,
           device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask, and the answer-token mask of the *targets*, on ``device``."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        attn[i, :len(e.ids)] = 1
        answer[i, e.prompt_len:len(e.ids)] = True
    return ids.to(device), attn.to(device), answer.to(device)


def answer_logprobs(hf: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor,
                    answer: torch.Tensor, past: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of answer-token log-probs per row, answer-token count per row).

    Only answer positions go through the LM head: for a 262k-token vocabulary (Gemma) that
    head is most of the model's compute. ``past``: the KV cache of a prefix every row continues
    (one row per row of ``ids``; ``attn`` covers only ``ids``), so each row's tokens sit after
    it. The inputs are moved to the model's device; the results stay there.
    """
    dev = input_device(hf)
    ids, attn, answer = ids.to(dev), attn.to(dev), answer.to(dev)
    kw: dict[str, Any] = {}
    if past is not None:
        k = past.get_seq_length()
        attn = torch.cat([torch.ones(len(ids), k, dtype=attn.dtype, device=dev), attn], 1)
        kw = {"past_key_values": past, "use_cache": True,
              "position_ids": torch.arange(k, k + ids.shape[1], device=dev).expand(len(ids), -1)}
    hidden = decoder(hf)(input_ids=ids, attention_mask=attn, **kw).last_hidden_state
    pos = answer[:, 1:]                                   # position t predicts token t + 1
    rows, cols = pos.nonzero(as_tuple=True)
    logits = hf.get_output_embeddings()(hidden[rows, cols])
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[rows, cols + 1][:, None])[:, 0]
    total = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    return total, pos.sum(1)


def decoder(hf: torch.nn.Module) -> torch.nn.Module:
    """The model without its LM head (hidden states out)."""
    return hf.get_decoder() if hasattr(hf, "get_decoder") else hf.model


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _optimizer(hf: torch.nn.Module, lr: float, cfg: ChainConfig) -> torch.optim.Optimizer:
    emb = {id(p) for p in hf.get_input_embeddings().parameters()}
    emb |= {id(p) for p in hf.get_output_embeddings().parameters()}
    params = []
    for p in hf.parameters():
        train = cfg.train_embeddings or id(p) not in emb
        p.requires_grad_(train)
        if train:
            params.append(p)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _update(hf: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step with gradient-norm clipping at 1; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in hf.parameters() if p.requires_grad], 1.0)
    opt.step()
    return float(loss.detach())


def _freeze(hf: torch.nn.Module, bar: tqdm) -> None:
    """Back to inference: eval mode, no parameter requires grad, progress bar closed."""
    bar.close()
    hf.eval()
    for p in hf.parameters():
        p.requires_grad_(False)


def sft(model: LoadedModel, pairs: Sequence[tuple[str, str]], cfg: ChainConfig, *,
        progress: bool = True) -> pd.DataFrame:
    """Fine-tune ``model`` in place on (instruction, response) pairs; returns the loss curve.

    Mean token cross-entropy over answer tokens; AdamW with warmup then cosine decay;
    embeddings (and a tied LM head) frozen unless ``train_embeddings``.
    """
    if not pairs:
        raise ValueError("no SFT pairs")
    fmt = ChatFormat.plain(model.tokenizer)
    data = [encode_pair(fmt, q, a, cfg.max_len) for q, a in pairs]
    hf = model.hf
    opt = _optimizer(hf, cfg.sft_lr, cfg)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.sft_epochs
    warmup = max(1, int(cfg.warmup_frac * total))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    rows, step = [], 0
    hf.train()
    bar = tqdm(total=total, desc="sft", disable=not progress)
    try:
        for epoch in range(cfg.sft_epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            for b in range(0, len(order), cfg.batch_size):
                ids, attn, ans = answer_batch([data[i] for i in order[b:b + cfg.batch_size]],
                                        model.tokenizer.pad_token_id, input_device(hf))
                for g in opt.param_groups:
                    g["lr"] = cfg.sft_lr * _schedule(step, total, warmup)
                lp, n = answer_logprobs(hf, ids, attn, ans)
                value = _update(hf, opt, -lp.sum() / n.sum())
                rows.append({"stage": "sft", "step": step, "epoch": epoch, "loss": value,
                             "lr": opt.param_groups[0]["lr"]})
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
    finally:
        _freeze(hf, bar)
    return pd.DataFrame(rows)


def dpo(model: LoadedModel, triples: Sequence[tuple[str, str, str]], cfg: ChainConfig, *,
        progress: bool = True) -> pd.DataFrame:
    """DPO in place on (instruction, chosen, rejected); the model's starting weights are the
    frozen reference (their log-probs are computed once, before any update).

    Returns the curve: loss, reward margin ``beta × (Δchosen − Δrejected)`` and accuracy
    (the share of pairs whose margin is positive).
    """
    if not triples:
        raise ValueError("no DPO pairs")
    fmt = ChatFormat.plain(model.tokenizer)
    chosen = [encode_pair(fmt, q, c, cfg.max_len) for q, c, _ in triples]
    rejected = [encode_pair(fmt, q, r, cfg.max_len) for q, _, r in triples]
    hf, pad = model.hf, model.tokenizer.pad_token_id
    dev = input_device(hf)
    with torch.no_grad():
        ref = []
        for b in range(0, len(triples), cfg.batch_size):
            sl = slice(b, b + cfg.batch_size)
            ref.append((answer_logprobs(hf, *answer_batch(chosen[sl], pad, dev))[0],
                        answer_logprobs(hf, *answer_batch(rejected[sl], pad, dev))[0]))
        ref_c = torch.cat([r[0] for r in ref])
        ref_r = torch.cat([r[1] for r in ref])
    opt = _optimizer(hf, cfg.dpo_lr, cfg)
    steps_per_epoch = math.ceil(len(triples) / cfg.batch_size)
    total = steps_per_epoch * cfg.dpo_epochs
    warmup = max(1, int(cfg.warmup_frac * total))
    rng = random.Random(cfg.seed + 1)
    rows, step = [], 0
    hf.train()
    bar = tqdm(total=total, desc="dpo", disable=not progress)
    try:
        for epoch in range(cfg.dpo_epochs):
            order = list(range(len(triples)))
            rng.shuffle(order)
            for b in range(0, len(order), cfg.batch_size):
                idx = order[b:b + cfg.batch_size]
                for g in opt.param_groups:
                    g["lr"] = cfg.dpo_lr * _schedule(step, total, warmup)
                pc, _ = answer_logprobs(hf, *answer_batch([chosen[i] for i in idx], pad, dev))
                pr, _ = answer_logprobs(hf, *answer_batch([rejected[i] for i in idx], pad, dev))
                margin = cfg.dpo_beta * ((pc - ref_c[idx]) - (pr - ref_r[idx]))
                value = _update(hf, opt, -torch.nn.functional.logsigmoid(margin).mean())
                rows.append({"stage": "dpo", "step": step, "epoch": epoch, "loss": value,
                             "lr": opt.param_groups[0]["lr"],
                             "reward_margin": float(margin.detach().mean()),
                             "reward_accuracy": float((margin > 0).float().mean())})
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
    finally:
        _freeze(hf, bar)
    return pd.DataFrame(rows)


@torch.no_grad()
def answers(model: LoadedModel, instructions: Sequence[str], *, max_new_tokens: int,
            fmt: ChatFormat | None = None, batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy answers, cut at the first line that starts a new ``User:`` turn."""
    from .steering import generate_steered

    fmt = fmt or model.chat
    examples = [fmt.encode(q) for q in instructions]
    texts = generate_steered(model, examples, [], max_new_tokens=max_new_tokens,
                             batch_size=batch_size, progress=progress)
    return [t.split("\nUser:")[0].strip() for t in texts]


def stage_dir(key: dict[str, Any]) -> Path:
    """``$TRAITLAB_CACHE/chain/<hash of key>``."""
    return cache_dir("chain") / stable_hash(key, 16)


def stage_lock(folder: Path) -> Path:
    """The lock file beside a stage's folder (``atomic.exclusive``): one process trains it."""
    return folder.parent / f".{folder.name}.lock"


def save_stage(model: LoadedModel, folder: Path, record: dict[str, Any], curve: pd.DataFrame) -> Path:
    """Write the model, tokenizer, record and curve to a temp folder, then rename it in place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.hf.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        curve.to_csv(tmp / "curve.csv", index=False)
        write_json(tmp / "traitlab_chain.json", record)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_stage(folder: Path) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """(record, curve) of a finished stage, or None if it was never completed."""
    rec = folder / "traitlab_chain.json"
    if not rec.exists():
        return None
    return json.loads(rec.read_text()), pd.read_csv(folder / "curve.csv")


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def config_record(cfg: ChainConfig) -> dict[str, Any]:
    return asdict(cfg)


# ---- the chain a profile names: teacher answers → SFT → DPO, each stage cached ---------------

@dataclass(frozen=True)
class ChainParams:
    base_model: str = "gemma-3-270m"
    teacher_model: str = "qwen2.5-coder-1.5b-instruct"
    n_train: int | None = None
    n_eval: int | None = None
    teacher_max_new_tokens: int = 96
    eval_max_new_tokens: int = 64
    max_len: int = 256
    batch_size: int = 8
    sft_epochs: int = 2
    sft_lr: float = 5e-5
    dpo_epochs: int = 1
    dpo_lr: float = 5e-6
    dpo_beta: float = 0.1
    warmup_frac: float = 0.1
    train_embeddings: bool = False
    seed: int = 0
    refusal_sources: list[str] = field(default_factory=list)
    """Public harmful-request sets (in the data root) whose requests join SFT with the teacher's
    refusals; empty: none, and the chain never learns to refuse (our instructions are all benign)."""
    n_refusal: int = 0
    """Harmful requests the teacher answers (seeded sample of ``refusal_sources``); only answers the
    refusal phrase rule calls refusals are kept, for SFT and as DPO's chosen answers."""

    def __post_init__(self) -> None:
        if self.n_refusal < 0 or (self.n_refusal and not self.refusal_sources):
            raise ParamError(f"n_refusal must be >= 0 and needs refusal_sources (got {self.n_refusal}, "
                             f"{self.refusal_sources}); choose sources from {', '.join(HARMFUL_SOURCES)}")
        bad = [x for x in self.refusal_sources if x not in HARMFUL_SOURCES]
        if bad:
            raise ParamError(f"unknown refusal_sources {bad}; choose from {', '.join(HARMFUL_SOURCES)}")
        for name in ("n_train", "n_eval"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ParamError(f"{name} must be >= 2 or null, got {v}")
        if self.teacher_max_new_tokens < 1 or self.eval_max_new_tokens < 1:
            raise ParamError("teacher_max_new_tokens and eval_max_new_tokens must be >= 1")
        try:
            self.config()
        except ValueError as err:
            raise ParamError(str(err)) from None

    def check(self) -> None:
        describe(self.base_model)
        describe(self.teacher_model)
        if self.n_refusal:
            refusal_requests(self)  # the data root holds them, and enough of them

    def config(self) -> ChainConfig:
        names = {f.name for f in fields(ChainConfig)}
        return ChainConfig(**{k: v for k, v in asdict(self).items() if k in names})


def load_instructions(split: str, n: int | None = None) -> pd.DataFrame:
    df = pd.DataFrame(read_project_jsonl("sft", "instructions.jsonl"))
    df = df[df.split == split].reset_index(drop=True)
    if df.empty:
        raise DataError(f"data/sft/instructions.jsonl has no {split!r} instructions")
    if n is not None:  # stratified: the first n in category round-robin order
        df = df.assign(_r=df.groupby("category").cumcount()).sort_values(["_r", "id"]).head(n)
        df = df.drop(columns="_r").sort_values("id").reset_index(drop=True)
    return df


def cached_answers(model: LoadedModel, fmt: ChatFormat, df: pd.DataFrame, max_new_tokens: int,
                    tag: str, progress: bool) -> list[str]:
    key = {"tag": tag, "model": model.fingerprint, "format": fmt.name, "ids": list(df.id),
           "instructions": stable_hash(list(df.instruction)), "max_new_tokens": max_new_tokens}
    path = cache_dir("chain", "answers") / f"{tag}-{stable_hash(key, 16)}.jsonl"
    if path.exists():
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        cachelog.note("chain answers", read=len(rows), computed=0)
        return [r["answer"] for r in rows]
    cachelog.note("chain answers", read=0, computed=len(df))
    out = answers(model, list(df.instruction), max_new_tokens=max_new_tokens, fmt=fmt,
                        progress=progress)
    write_jsonl(path, [{"id": i, "answer": a} for i, a in zip(df.id, out, strict=True)])
    return out


def refusal_requests(P: ChainParams) -> pd.DataFrame:
    """The harmful requests the chain learns to refuse: ``id``, ``instruction``, ``category``
    ("refusal"), ``split`` ("train"); a seeded sample of ``P.refusal_sources``."""
    rows = harmful_prompts(P.refusal_sources, P.n_refusal, P.seed)
    return pd.DataFrame([{"id": f"refusal-{p.source}-{i:03d}", "instruction": p.text, "category": "refusal",
                          "split": "train"} for i, p in enumerate(rows)])


@dataclass
class BuiltChain:
    """What the notebook shows: where each stage lives, its curve, how long it took."""

    paths: dict[str, str]
    curves: pd.DataFrame
    seconds: dict[str, float]
    train: pd.DataFrame
    records: dict[str, Any]


def build(P: ChainParams, progress: bool = True) -> BuiltChain:
    """Teacher answers → SFT → DPO, each stage reused from the cache when it exists."""
    cfg = P.config()
    train = load_instructions("train", P.n_train)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    teacher = load_model(P.teacher_model, quiet=True)
    train["teacher"] = cached_answers(teacher, teacher.chat, train, P.teacher_max_new_tokens,
                                       "teacher", progress)
    harm = refusal_requests(P) if P.n_refusal else train.iloc[:0]
    if len(harm):  # answered apart, so the instructions' cached answers stay valid
        harm["teacher"] = cached_answers(teacher, teacher.chat, harm, P.teacher_max_new_tokens, "teacher", progress)
        harm = harm[harm.teacher.map(is_refusal)].reset_index(drop=True)
    teacher_fp = teacher.fingerprint
    del teacher
    seconds["teacher answers"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = load_model(P.base_model, quiet=True)
    plain = ChatFormat.plain(base.tokenizer)
    train["base"] = cached_answers(base, plain, train, P.teacher_max_new_tokens, "base", progress)
    if len(harm):
        harm["base"] = cached_answers(base, plain, harm, P.teacher_max_new_tokens, "base", progress)
        train = pd.concat([train, harm], ignore_index=True)
    seconds["base answers"] = time.perf_counter() - t0

    sft_key = {"stage": "sft", "base": base.fingerprint, "teacher": teacher_fp,
               "ids": list(train.id), "teacher_max_new_tokens": P.teacher_max_new_tokens,
               "config": {k: v for k, v in asdict(cfg).items() if not k.startswith("dpo")}}
    sft_dir = stage_dir(sft_key)
    t0 = time.perf_counter()
    with exclusive(stage_lock(sft_dir)):  # a second render building the same chain waits, then loads it
        done = load_stage(sft_dir)
        cachelog.note("chain stages", read=done is not None, computed=done is None)
        if done is None:
            curve = sft(base, list(zip(train.instruction, train.teacher, strict=True)), cfg,
                        progress=progress)
            save_stage(base, sft_dir, sft_key, curve)
            done = load_stage(sft_dir)
    seconds["sft"] = time.perf_counter() - t0
    sft_record, sft_curve = done
    del base

    dpo_key = {"stage": "dpo", "sft": sft_dir.name, "rejected": "base answers",
               "config": {k: v for k, v in asdict(cfg).items() if k.startswith("dpo")
                          or k in ("max_len", "batch_size", "warmup_frac", "seed", "train_embeddings")}}
    dpo_dir = stage_dir(dpo_key)
    t0 = time.perf_counter()
    with exclusive(stage_lock(dpo_dir)):
        done = load_stage(dpo_dir)
        cachelog.note("chain stages", read=done is not None, computed=done is None)
        if done is None:
            sft_model = load_model(str(sft_dir), quiet=True)
            triples = [(q, c, r) for q, c, r in zip(train.instruction, train.teacher, train.base, strict=True)
                       if c.strip() and c.strip() != r.strip()]
            curve = dpo(sft_model, triples, cfg, progress=progress)
            save_stage(sft_model, dpo_dir, dpo_key, curve)
            done = load_stage(dpo_dir)
            del sft_model
    seconds["dpo"] = time.perf_counter() - t0
    dpo_record, dpo_curve = done
    paths = {"base": P.base_model, "sft": str(sft_dir), "dpo": str(dpo_dir)}
    return BuiltChain(paths, pd.concat([sft_curve, dpo_curve], ignore_index=True), seconds, train,
                 {"sft": sft_record, "dpo": dpo_record})


def profile_params(profile: str) -> ChainParams:
    """The chain of ``params/model_chain/<profile>.yaml`` (reports that steer the chain's models
    name it by profile)."""
    from .params import load_profile, validate

    return validate(ChainParams, load_profile("model_chain", profile),
                    where=f"params/model_chain/{profile}.yaml")
