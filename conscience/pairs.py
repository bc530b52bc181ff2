"""Preference pairs in the shape TRL reads: conversational ``prompt``/``chosen``/``rejected``.

Every judgement the store calls a pair (effective verdict unethical, rewrite not blank) becomes
one JSONL line: the conversation as ``prompt``, the rewrite as ``chosen``, the original answer
as ``rejected``, plus ``id`` and ``framework`` so a training run can mark what it consumed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from conscience.judgement import Judgement
from conscience.store.base import BLANK, JudgementStore, is_pair

__all__ = ["PairError", "export_pairs", "to_trl_line", "to_trl_pair"]


class PairError(ValueError):
    """A judgement that cannot be a TRL pair; ``reason`` names why, in the trainer's words:
    ``not_a_pair``, ``malformed`` (a message without a role), ``non_string_content`` or
    ``invalid_text`` (a lone surrogate from a JSON escape, which UTF-8 cannot encode)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _is_blank(text: str) -> bool:
    return text.strip(BLANK) == ""


log = logging.getLogger(__name__)


def _text(content: Any) -> str:
    """A message's content as text: a string as is, OpenAI text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"a {kind!r} content part is not text")
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    if content is None:
        return ""
    raise ValueError(f"message content of type {type(content).__name__} is not text")


def to_trl_pair(j: Judgement) -> dict[str, Any]:
    """One TRL preference example; ``PairError`` (a ValueError) if it cannot be one.

    The prompt keeps only ``role`` and ``content`` of each message (what chat templates read);
    content given as OpenAI text parts is joined, and any other part (an image) is refused.
    """
    if not is_pair(j):
        rewrite = "missing" if j.rewrite is None else "blank" if _is_blank(j.rewrite) else "given"
        raise PairError(
            f"judgement {j.id} is not a preference pair"
            f" (effective verdict {j.effective_verdict.value}, rewrite {rewrite})",
            "not_a_pair",
        )
    assert j.rewrite is not None  # is_pair checked it
    if any(not isinstance(m, dict) or "role" not in m for m in j.messages):
        raise PairError(f"judgement {j.id}: a message has no role", "malformed")
    try:
        prompt = [{"role": str(m["role"]), "content": _text(m.get("content"))} for m in j.messages]
    except ValueError as exc:
        raise PairError(
            f"judgement {j.id}: the conversation is not plain chat: {exc}", "non_string_content"
        ) from exc
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": j.rewrite}],
        "rejected": [{"role": "assistant", "content": j.answer}],
        "id": j.id,
        "framework": j.framework,
    }


def to_trl_line(judgement: Judgement) -> str:
    """The pair as one JSONL line that UTF-8 can encode; ``PairError`` otherwise."""
    line = json.dumps(to_trl_pair(judgement), ensure_ascii=False) + "\n"
    try:
        line.encode("utf-8")  # a lone surrogate would fail the write of a whole file or stream
    except UnicodeEncodeError:
        raise PairError(
            f"judgement {judgement.id}: its text is not valid Unicode", "invalid_text"
        ) from None
    return line


async def export_pairs(store: JudgementStore, path: Path, *, include_consumed: bool = False) -> int:
    """Write the store's pairs to ``path`` as JSONL, oldest first; how many were written.

    Unconsumed pairs only, unless ``include_consumed``. The file appears whole or not at all: it
    is written beside its destination, fsync'd, then renamed over it. A row the store cannot
    read, a conversation that is not plain text (an image part) and text that is not valid
    Unicode (a lone surrogate from a JSON escape) are skipped with a warning each.
    """
    found = await store.read_pairs(include_consumed=include_consumed)
    for row in found.unreadable:
        log.warning("export_pairs: skipped %s", row)
    lines = []
    for j in found.judgements:
        try:
            lines.append(to_trl_line(j))
        except PairError as exc:
            log.warning("export_pairs: skipped %s", exc)
    # File I/O off the event loop.
    await asyncio.to_thread(_write_atomically, Path(path), lines)
    return len(lines)


def _write_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
