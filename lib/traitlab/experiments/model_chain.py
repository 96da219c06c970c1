"""Build (and cache) the offline base → SFT → DPO chain used by the transfer study.

Every stage is keyed by what it came from (model fingerprints, instruction ids, settings),
so a changed parameter rebuilds only the stages downstream of it, and a finished stage is
reused by every later run (``traitlab.chain`` writes each one atomically).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import chain
from ..atomic import stable_hash
from ..chat import ChatFormat
from ..data import DataError, read_project_jsonl
from ..models import LoadedModel, describe, load_model
from ..params import ParamError
from ..paths import cache_dir


@dataclass(frozen=True)
class Params:
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

    def __post_init__(self) -> None:
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

    def config(self) -> chain.ChainConfig:
        names = {f.name for f in fields(chain.ChainConfig)}
        return chain.ChainConfig(**{k: v for k, v in asdict(self).items() if k in names})


def load_instructions(split: str, n: int | None = None) -> pd.DataFrame:
    df = pd.DataFrame(read_project_jsonl("sft", "instructions.jsonl"))
    df = df[df.split == split].reset_index(drop=True)
    if df.empty:
        raise DataError(f"data/sft/instructions.jsonl has no {split!r} instructions")
    if n is not None:  # stratified: the first n in category round-robin order
        df = df.assign(_r=df.groupby("category").cumcount()).sort_values(["_r", "id"]).head(n)
        df = df.drop(columns="_r").sort_values("id").reset_index(drop=True)
    return df


def _answers_cached(model: LoadedModel, fmt: ChatFormat, df: pd.DataFrame, max_new_tokens: int,
                    tag: str, progress: bool) -> list[str]:
    key = {"tag": tag, "model": model.fingerprint, "format": fmt.name, "ids": list(df.id),
           "instructions": stable_hash(list(df.instruction)), "max_new_tokens": max_new_tokens}
    path = cache_dir("chain", "answers") / f"{tag}-{stable_hash(key, 16)}.jsonl"
    if path.exists():
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [r["answer"] for r in rows]
    out = chain.answers(model, list(df.instruction), max_new_tokens=max_new_tokens, fmt=fmt,
                        progress=progress)
    chain.write_jsonl(path, [{"id": i, "answer": a} for i, a in zip(df.id, out, strict=True)])
    return out


@dataclass
class Chain:
    """What the notebook shows: where each stage lives, its curve, how long it took."""

    paths: dict[str, str]
    curves: pd.DataFrame
    seconds: dict[str, float]
    train: pd.DataFrame
    records: dict[str, Any]


def build(P: Params, progress: bool = True) -> Chain:
    """Teacher answers → SFT → DPO, each stage reused from the cache when it exists."""
    cfg = P.config()
    train = load_instructions("train", P.n_train)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    teacher = load_model(P.teacher_model, quiet=True)
    train["teacher"] = _answers_cached(teacher, teacher.chat, train, P.teacher_max_new_tokens,
                                       "teacher", progress)
    teacher_fp = teacher.fingerprint
    del teacher
    seconds["teacher answers"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = load_model(P.base_model, quiet=True)
    plain = ChatFormat.plain(base.tokenizer)
    train["base"] = _answers_cached(base, plain, train, P.teacher_max_new_tokens, "base", progress)
    seconds["base answers"] = time.perf_counter() - t0

    sft_key = {"stage": "sft", "base": base.fingerprint, "teacher": teacher_fp,
               "ids": list(train.id), "teacher_max_new_tokens": P.teacher_max_new_tokens,
               "config": {k: v for k, v in asdict(cfg).items() if not k.startswith("dpo")}}
    sft_dir = chain.stage_dir(sft_key)
    t0 = time.perf_counter()
    done = chain.load_stage(sft_dir)
    if done is None:
        curve = chain.sft(base, list(zip(train.instruction, train.teacher, strict=True)), cfg,
                          progress=progress)
        chain.save_stage(base, sft_dir, sft_key, curve)
        done = chain.load_stage(sft_dir)
    seconds["sft"] = time.perf_counter() - t0
    sft_record, sft_curve = done
    del base

    dpo_key = {"stage": "dpo", "sft": sft_dir.name, "rejected": "base answers",
               "config": {k: v for k, v in asdict(cfg).items() if k.startswith("dpo")
                          or k in ("max_len", "batch_size", "warmup_frac", "seed", "train_embeddings")}}
    dpo_dir = chain.stage_dir(dpo_key)
    t0 = time.perf_counter()
    done = chain.load_stage(dpo_dir)
    if done is None:
        sft_model = load_model(str(sft_dir), quiet=True)
        triples = [(q, c, r) for q, c, r in zip(train.instruction, train.teacher, train.base, strict=True)
                   if c.strip() and c.strip() != r.strip()]
        curve = chain.dpo(sft_model, triples, cfg, progress=progress)
        chain.save_stage(sft_model, dpo_dir, dpo_key, curve)
        done = chain.load_stage(dpo_dir)
        del sft_model
    seconds["dpo"] = time.perf_counter() - t0
    dpo_record, dpo_curve = done
    paths = {"base": P.base_model, "sft": str(sft_dir), "dpo": str(dpo_dir)}
    return Chain(paths, pd.concat([sft_curve, dpo_curve], ignore_index=True), seconds, train,
                 {"sft": sft_record, "dpo": dpo_record})


def heldout_set(P: Params, progress: bool = True) -> pd.DataFrame:
    """Held-out instructions with the teacher's and the base model's answers (cached)."""
    df = load_instructions("eval", P.n_eval)
    teacher = load_model(P.teacher_model, quiet=True)
    df["teacher"] = _answers_cached(teacher, teacher.chat, df, P.teacher_max_new_tokens,
                                    "teacher", progress)
    del teacher
    base = load_model(P.base_model, quiet=True)
    df["base"] = _answers_cached(base, ChatFormat.plain(base.tokenizer), df,
                                 P.teacher_max_new_tokens, "base", progress)
    return df


@torch.no_grad()
def heldout(paths: dict[str, str], df: pd.DataFrame, cfg: chain.ChainConfig) -> pd.DataFrame:
    """Per model: mean NLL per token of the teacher's held-out answers, and the DPO-style
    preference ``log p(teacher) − log p(base answer)`` per token (higher = prefers teacher)."""
    rows = []
    for name, spec in paths.items():
        m = load_model(spec, quiet=True)
        fmt = ChatFormat.plain(m.tokenizer)
        nll, pref = [], []
        for q, t, b in zip(df.instruction, df.teacher, df.base, strict=True):
            et, eb = (chain.encode_pair(fmt, q, x, cfg.max_len) for x in (t, b))
            lt, nt = chain.answer_logprobs(m.hf, *chain._batch([et], m.tokenizer.pad_token_id))
            lb, nb = chain.answer_logprobs(m.hf, *chain._batch([eb], m.tokenizer.pad_token_id))
            nll.append(float(-lt[0] / nt[0]))
            pref.append(float(lt[0] / nt[0] - lb[0] / nb[0]))
        rows.append({"model": name, "teacher_nll_per_token": sum(nll) / len(nll),
                     "prefers_teacher_per_token": sum(pref) / len(pref),
                     "share_preferring_teacher": sum(p > 0 for p in pref) / len(pref)})
    return pd.DataFrame(rows).set_index("model").round(3)


def eval_answers(paths: dict[str, str], df: pd.DataFrame, max_new_tokens: int,
                 progress: bool = True) -> pd.DataFrame:
    """Each model's greedy answers to the held-out instructions (plain format)."""
    out = df[["id", "category", "instruction"]].copy()
    for name, spec in paths.items():
        m = load_model(spec, quiet=True)
        out[name] = _answers_cached(m, ChatFormat.plain(m.tokenizer), df, max_new_tokens,
                                    f"eval-{name}", progress)
    return out


def stage_sizes(paths: dict[str, str]) -> dict[str, float]:
    """Disk size (MB) of each cached stage folder."""
    return {k: round(sum(f.stat().st_size for f in Path(v).rglob("*") if f.is_file()) / 2**20, 1)
            for k, v in paths.items() if Path(v).is_dir()}


def conclusions(built: Chain, scores: pd.DataFrame) -> list[str]:
    """Plain-language findings, every number read from the run."""
    c = built.curves
    sft_c, dpo_c = c[c.stage == "sft"], c[c.stage == "dpo"]
    out = []
    out.append(f"SFT ({len(sft_c)} steps): training loss {sft_c.loss.iloc[:5].mean():.3f} (first 5) → "
               f"{sft_c.loss.iloc[-5:].mean():.3f} (last 5); "
               f"held-out teacher NLL/token base {scores.loc['base', 'teacher_nll_per_token']:.3f} → "
               f"SFT {scores.loc['sft', 'teacher_nll_per_token']:.3f} → DPO "
               f"{scores.loc['dpo', 'teacher_nll_per_token']:.3f}.")
    out.append(f"DPO ({len(dpo_c)} steps): loss {dpo_c.loss.iloc[0]:.3f} → {dpo_c.loss.iloc[-5:].mean():.3f}; held-out share "
               f"preferring the teacher's answer base {scores.loc['base', 'share_preferring_teacher']:.2f}, "
               f"SFT {scores.loc['sft', 'share_preferring_teacher']:.2f}, DPO "
               f"{scores.loc['dpo', 'share_preferring_teacher']:.2f}.")
    out.append(f"{built.paths['base']} → SFT → DPO is a small analogue of the seed's 7B chain "
               "(Mistral-7B → sft-beta → zephyr): it can test whether the transfer findings follow "
               "from SFT and DPO as procedures, not whether they hold at Mistral's scale.")
    return out
