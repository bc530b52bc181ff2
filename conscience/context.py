"""What the judge reads of a conversation: a bounded window of it, so that the review and the
rewrite fit the judge's context whatever the generator accepted.

A conversation the generator fits can still overflow the judge, whose prompt adds the framework,
the answer (in windows of ``CONSCIENCE_REVIEW_WINDOW_CHARS``) and, for a rewrite, room for the
rewrite. The judge reads at most ``budget`` characters of the conversation::

    kept  = the system messages (each at most budget / 4)
          + the newest turns, newest first, while they fit what is left
    the last message is always kept; where it alone is over what is left, its beginning and
    its end are kept (half each) with "[… N characters left out …]" between
    dropped turns are said where they were: "[… N earlier turns left out …]" opens the first
    turn kept after them

so the judge still reads who it is talking to (the system prompt: a jailbreak often lives
there), what was asked last, and the answer in full (its own windows). The stored judgement
keeps the whole conversation; only the judge's prompt is bounded. Where the judge still
refuses a prompt as too long (its context is smaller than the budget assumed), the review asks
again with half the budget, down to ``MIN_BUDGET`` (``Conscience.review``).
"""

from __future__ import annotations

import re
from typing import Any

from conscience.prompts import message_text

__all__ = ["MIN_BUDGET", "conversation_window", "cut_middle", "is_context_overflow"]

Message = dict[str, Any]
MIN_BUDGET = 800  # characters: below this the last question itself is no longer read
# How engines say a prompt is over their context: OpenAI and vLLM ("maximum context length",
# code context_length_exceeded), llama.cpp ("exceeds the available context size",
# exceed_context_size_error), TGI and others ("too long", "input is too large").
_OVERFLOW = re.compile(
    r"context[_ ]length|context size|maximum context|too long|too large|exceed",
    re.IGNORECASE,
)


def cut_middle(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its beginning and its end, the middle said."""
    if len(text) <= limit:
        return text
    marker = "\n[… {n} characters left out …]\n"
    keep = max(0, limit - len(marker.format(n=len(text))))
    head, tail = keep // 2, keep - keep // 2
    left_out = len(text) - head - tail
    return text[:head] + marker.format(n=left_out) + (text[len(text) - tail :] if tail else "")


def _plain(message: Message, text: str) -> Message:
    """``message`` as the judge reads it: its role and ``text`` (parts and calls as text)."""
    return {"role": message.get("role", "user"), "content": text}


def conversation_window(messages: list[Message], budget: int) -> list[Message]:
    """The conversation the judge reads (the module's rule); ``messages`` itself where it fits
    ``budget`` characters already (the same list, so a prompt that fits is unchanged)."""
    texts = [message_text(m) for m in messages]
    if sum(len(t) for t in texts) <= budget or not messages:
        return messages
    system = [i for i, m in enumerate(messages) if m.get("role") in ("system", "developer")]
    kept: dict[int, str] = {i: cut_middle(texts[i], budget // 4) for i in system}
    left = budget - sum(len(t) for t in kept.values())
    turns = [i for i in range(len(messages)) if i not in kept]
    if turns:
        last = turns[-1]
        kept[last] = cut_middle(texts[last], max(left, MIN_BUDGET // 2))
        left -= len(kept[last])
        for i in reversed(turns[:-1]):
            if len(texts[i]) > left:
                break
            kept[i] = texts[i]
            left -= len(texts[i])
    window: list[Message] = []
    dropped = 0
    for i, message in enumerate(messages):
        if i not in kept:
            dropped += 1
            continue
        text = kept[i]
        if dropped:
            text = f"[… {dropped} earlier turn{'s' if dropped > 1 else ''} left out …]\n\n{text}"
            dropped = 0
        window.append(_plain(message, text))
    return window


def is_context_overflow(status: int, message: str) -> bool:
    """Whether an engine's error says the prompt is over its context."""
    return status in (400, 413, 422) and _OVERFLOW.search(message) is not None
