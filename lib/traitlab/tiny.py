"""Tiny randomly initialised models, built in-process, for unit tests.

Three architectures share one character-level tokenizer that carries a ChatML chat
template, so chat formatting, padding and every site can be tested without downloads.

Example:
    >>> model, tok = build("tiny-gemma3", seed=0)
    >>> model.config.num_hidden_layers, tok("ab")["input_ids"]
    (2, [16, 17])
"""

from __future__ import annotations

import string
from typing import Any

import torch

TINY_ARCHS: tuple[str, ...] = ("tiny-llama", "tiny-qwen2", "tiny-gemma3")

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def tokenizer() -> Any:
    """A character-level fast tokenizer over printable ASCII, with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(_SPECIALS + ["<unk>"] + [c for c in chars if c != " "] + [" "])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = _CHATML
    return tok


def tiny_config(name: str) -> Any:
    """The transformers config of tiny model ``name`` (2 layers, width 64)."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if name == "tiny-llama":
        return LlamaConfig(**common)
    if name == "tiny-qwen2":
        return Qwen2Config(**common)
    if name == "tiny-gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=8,
                                layer_types=["sliding_attention", "full_attention"])
    raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_ARCHS)}")


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A seeded random model of architecture ``name`` and the shared tokenizer."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(name)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval(), tokenizer()
