"""Chat formatting: the tokenizer's chat template, or an explicit plain format.

Prompts and responses are tokenised separately and concatenated, exactly as a model
sees them during generation, so ``prompt_len`` marks where the response starts with no
boundary merges. Chat text is tokenised with ``add_special_tokens=False`` (the template
already holds the special tokens).

Example:
    >>> from traitlab.tiny import build
    >>> _, tok = build("tiny-llama")
    >>> fmt = ChatFormat.for_tokenizer(tok)
    >>> fmt.name
    'chat_template'
    >>> ChatFormat.plain(tok).prompt("Hi")
    'User: Hi\\nAssistant:'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PLAIN_TEMPLATE = "User: {user}\nAssistant:"
"""The format for models without a chat template (base models); named in reports as 'plain'."""


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and where its response starts.

    ``ids[:prompt_len]`` is the formatted prompt, ``ids[prompt_len:]`` the response
    (possibly empty).
    """

    ids: tuple[int, ...]
    prompt_len: int

    def __post_init__(self) -> None:
        if not 0 < self.prompt_len <= len(self.ids):
            raise ValueError(f"prompt_len {self.prompt_len} outside 1..{len(self.ids)}")


@dataclass(frozen=True)
class ChatFormat:
    """How a user message (and optional system prompt) becomes model input."""

    name: Literal["chat_template", "plain"]
    tokenizer: Any = field(repr=False, compare=False)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> ChatFormat:
        """The tokenizer's chat template if it has one, else the plain format."""
        has = bool(getattr(tokenizer, "chat_template", None))
        return cls("chat_template" if has else "plain", tokenizer)

    @classmethod
    def plain(cls, tokenizer: Any) -> ChatFormat:
        return cls("plain", tokenizer)

    def prompt(self, user: str, system: str | None = None) -> str:
        """The formatted prompt text, ending where the assistant's reply begins."""
        if self.name == "plain":
            text = PLAIN_TEMPLATE.format(user=user)
            return f"{system}\n\n{text}" if system else text
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def response_text(self, response: str) -> str:
        """Response text as appended after the prompt (the plain format adds a space)."""
        return f" {response}" if self.name == "plain" and response else response

    def encode(self, user: str, response: str = "", system: str | None = None) -> Encoded:
        """Token ids of prompt + response, with ``prompt_len`` at the boundary."""
        tok = self.tokenizer
        prompt_text = self.prompt(user, system)
        add_special = self.name == "plain"  # e.g. a BOS token for base models
        p = tok(prompt_text, add_special_tokens=add_special)["input_ids"]
        r = tok(self.response_text(response), add_special_tokens=False)["input_ids"] if response else []
        return Encoded(tuple(p) + tuple(r), len(p))
