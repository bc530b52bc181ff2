"""Preference pairs: from TRL-style rows to token ids, masks and padded batches.

A row is ``{"prompt", "chosen", "rejected"}`` (plus an optional ``"id"``), either conversational
(``prompt`` a list of messages, ``chosen``/``rejected`` a one-message assistant list) as TRL reads
them and ``conscience pairs export`` writes them, or plain strings (a string prompt becomes one
user message). The prompt is rendered with the model's chat template and
``add_generation_prompt=True``; the answer's tokens are whatever the full conversation adds after
it, and only those carry loss.

A bad row is never a crash: it is skipped and counted under its reason in the report.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SKIP_REASONS",
    "Batch",
    "EncodedPair",
    "collate",
    "encode_pairs",
    "read_jsonl",
]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

SKIP_REASONS = (
    "malformed",  # not a dict, a key missing, a wrong type, a line that is not JSON
    "unknown_role",  # a message whose role is not system/developer/user/assistant/tool
    "non_string_content",  # content that is not a string (parts lists, None with tool calls)
    "empty_answer",  # chosen or rejected is empty or whitespace
    "identical",  # chosen == rejected: nothing to prefer
    "too_long",  # prompt + answer over max_length tokens (skipped, never truncated)
    "template_mismatch",  # the chat template does not render the prompt as a prefix
)


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EncodedPair:
    """One pair as token ids; the answer starts at ``prompt_len`` in both sequences."""

    id: str | None
    prompt_len: int
    chosen_ids: tuple[int, ...]  # prompt + chosen answer
    rejected_ids: tuple[int, ...]  # prompt + rejected answer


@dataclass
class Batch:
    """Chosen sequences first, then rejected ones: one forward pass for both halves."""

    input_ids: torch.Tensor  # (2B, T)
    attention_mask: torch.Tensor  # (2B, T)
    loss_mask: torch.Tensor  # (2B, T): 1 on answer tokens
    n_pairs: int
    answer_start: int  # the first position of an answer token in any row (the shortest prompt)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            self.n_pairs,
            self.answer_start,
        )


def read_jsonl(path: str | Path) -> list[Any]:
    """Rows of a JSONL file; a line that is not JSON becomes ``None`` (counted as malformed)."""
    rows: list[Any] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)
    return rows


def _messages(value: Any, *, answer: bool) -> list[dict[str, str]]:
    """Validate a message list (or a plain string) into ``[{"role", "content"}]``."""
    if isinstance(value, str):
        return [{"role": "assistant" if answer else "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _Skip("malformed")
    out = []
    for message in value:
        if not isinstance(message, dict) or "role" not in message:
            raise _Skip("malformed")
        if message["role"] not in _ROLES:
            raise _Skip("unknown_role")
        if not isinstance(message.get("content"), str):
            raise _Skip("non_string_content")
        out.append({"role": message["role"], "content": message["content"]})
    if answer and (len(out) != 1 or out[0]["role"] != "assistant"):
        raise _Skip("malformed")  # an answer is exactly one assistant message
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The template already wrote any BOS into the text; don't let the tokenizer add another.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_row(row: Any, tokenizer: Any, max_length: int) -> EncodedPair:
    if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= row.keys():
        raise _Skip("malformed")
    prompt = _messages(row["prompt"], answer=False)
    chosen = _messages(row["chosen"], answer=True)
    rejected = _messages(row["rejected"], answer=True)
    if not chosen[0]["content"].strip() or not rejected[0]["content"].strip():
        raise _Skip("empty_answer")
    if chosen[0]["content"] == rejected[0]["content"]:
        raise _Skip("identical")

    if getattr(tokenizer, "chat_template", None):
        prompt_text = _render(tokenizer, prompt, generation_prompt=True)
        answers = []
        for answer in (chosen, rejected):
            full = _render(tokenizer, prompt + answer, generation_prompt=False)
            if not full.startswith(prompt_text):
                raise _Skip("template_mismatch")
            answers.append(full[len(prompt_text) :])
    else:
        # A base model without a template: plain concatenation, the answer closed by EOS.
        if len(prompt) != 1:
            raise _Skip("template_mismatch")
        prompt_text = prompt[0]["content"]
        eos = tokenizer.eos_token or ""
        answers = [chosen[0]["content"] + eos, rejected[0]["content"] + eos]

    prompt_ids = _ids(tokenizer, prompt_text)
    chosen_ids, rejected_ids = (prompt_ids + _ids(tokenizer, text) for text in answers)
    if max(len(chosen_ids), len(rejected_ids)) > max_length:
        raise _Skip("too_long")
    if min(len(chosen_ids), len(rejected_ids)) <= len(prompt_ids):
        raise _Skip("empty_answer")  # the answer rendered to no tokens at all
    row_id = row.get("id")
    return EncodedPair(
        id=None if row_id is None else str(row_id),
        prompt_len=len(prompt_ids),
        chosen_ids=tuple(chosen_ids),
        rejected_ids=tuple(rejected_ids),
    )


def encode_pairs(
    rows: Iterable[Any], tokenizer: Any, max_length: int
) -> tuple[list[EncodedPair], dict[str, Any]]:
    """Tokenize every usable row; return the pairs and ``{"rows", "kept", "skipped"}``.

    ``skipped`` maps each reason of :data:`SKIP_REASONS` that occurred to its count, and
    ``skipped_ids`` lists the ids of skipped rows that had one.
    """
    pairs: list[EncodedPair] = []
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []
    n = 0
    for row in rows:
        n += 1
        try:
            pairs.append(_encode_row(row, tokenizer, max_length))
        except _Skip as skip:
            skipped[skip.reason] += 1
            if isinstance(row, dict) and row.get("id") is not None:
                skipped_ids.append(str(row["id"]))
    report = {
        "rows": n,
        "kept": len(pairs),
        "skipped": dict(skipped),
        "skipped_ids": skipped_ids,
    }
    return pairs, report


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> Batch:
    """Right-pad chosen then rejected sequences into one (2B, T) batch."""
    sequences = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    prompt_lens = [p.prompt_len for p in pairs] * 2
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
        loss_mask[i, prompt_len : len(seq)] = 1
    return Batch(
        input_ids, attention_mask, loss_mask, n_pairs=len(pairs), answer_start=min(prompt_lens)
    )
