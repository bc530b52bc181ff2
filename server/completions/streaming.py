"""A reviewed legacy completion as OpenAI text-completion stream chunks (always buffered)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["text_chunks"]


async def text_chunks(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """A reviewed completion as OpenAI text-completion stream chunks."""
    base = {k: completion.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {**base, "choices": choices, **extra}
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

    for choice in completion["choices"]:
        index = choice.get("index", 0)
        piece = {"index": index, "text": choice["text"], "logprobs": choice.get("logprobs")}
        yield chunk([{**piece, "finish_reason": None}])
        end = {"index": index, "text": "", "logprobs": None}
        yield chunk([{**end, "finish_reason": choice.get("finish_reason")}])
    extra: dict[str, Any] = {"conscience": completion["conscience"]}
    if include_usage and completion.get("usage") is not None:
        extra["usage"] = completion["usage"]
    yield chunk([], **extra)
    yield b"data: [DONE]\n\n"
