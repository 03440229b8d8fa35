"""Prompts as tokens without a tokenizer download: nothing can be fetched on the GPU machine.

A ChatML-like template over the messages, UTF-8 encoded, token id = byte + BYTE_OFFSET; ids
outside the byte range decode to a short placeholder.
"""

from __future__ import annotations

from typing import Any

BYTE_OFFSET = 3
"""Token id of byte b is b + BYTE_OFFSET (ids 0-2 stay free, as in byte-level vocabularies)."""
QWEN_EOS = 151645
"""`<|im_end|>` in Qwen2.5's vocabulary: the end-of-sequence token when the vocabulary has it."""


def eos_token(vocab: int) -> int:
    """Qwen's `<|im_end|>` when the vocabulary reaches it, else the last id."""
    return QWEN_EOS if vocab > QWEN_EOS else vocab - 1


def chat_tokens(messages: list[dict[str, Any]]) -> list[int]:
    """A ChatML-like template, UTF-8 bytes shifted by BYTE_OFFSET: no tokenizer needed."""
    text = "".join(f"<|im_start|>{m.get('role')}\n{m.get('content')}<|im_end|>\n" for m in messages)
    return [b + BYTE_OFFSET for b in (text + "<|im_start|>assistant\n").encode()]


def token_text(token: int) -> str:
    byte = token - BYTE_OFFSET
    return chr(byte) if 0 <= byte < 256 else f"<{token}>"
