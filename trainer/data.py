"""Preference pairs: from TRL-style rows to token ids, masks and padded batches.

A row is ``{"prompt", "chosen", "rejected"}`` (plus an optional ``"id"``), either conversational
(``prompt`` a list of messages, ``chosen``/``rejected`` a one-message assistant list) as TRL reads
them and ``conscience pairs export`` writes them, or plain strings (a string prompt becomes one
user message). The prompt is rendered with the model's chat template and
``add_generation_prompt=True``; the answer's tokens are whatever the full conversation adds after
it, and only those carry loss.

A task row for SFT (the online run's task set, TRL/OpenAI chat JSONL) is ``{"messages": [...]}``
whose last message is the assistant's answer; it is rendered the same way (``encode_chats``).

A bad row is never a crash: it is skipped and counted under its reason in the report.
``drop_duplicates`` keeps the first of pairs that differ only in whitespace (the nightly job's
store rows; a duplicate is consumed with the pair it repeats).
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
    "EncodedChat",
    "EncodedPair",
    "check_pair",
    "collate",
    "collate_chats",
    "drop_duplicates",
    "encode_chats",
    "encode_pairs",
    "read_jsonl",
]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# A text over max_length x this many characters is too long without tokenizing it: no token of
# a real vocabulary averages more over such a text, and a 5 MB answer would otherwise cost
# seconds of tokenizer time (and its memory) every night only to be skipped.
_MAX_CHARS_PER_TOKEN = 64

SKIP_REASONS = (
    "malformed",  # not a dict, a key missing, a wrong type, a line that is not JSON
    "unknown_role",  # a message whose role is not system/developer/user/assistant/tool
    "non_string_content",  # content that is not a string (parts lists, None with tool calls)
    "invalid_text",  # a NUL or a lone surrogate (from a JSON escape): not text a model reads
    "empty_prompt",  # every prompt message is empty or whitespace
    "empty_answer",  # chosen or rejected is empty or whitespace
    "identical",  # chosen == rejected (whitespace aside): nothing to prefer
    "too_long",  # prompt + answer over max_length tokens (skipped, never truncated)
    "template_mismatch",  # the chat template does not render the prompt as a prefix
    "duplicate",  # the same pair as an earlier row, whitespace aside (drop_duplicates)
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


@dataclass(frozen=True)
class EncodedChat:
    """One task conversation for SFT: its last (assistant) turn starts at ``prompt_len``."""

    id: str | None
    prompt_len: int
    ids: tuple[int, ...]  # prompt + answer
    prompt: list[dict[str, str]]  # the validated messages before the answer (to sample from)


@dataclass
class Batch:
    """Chosen sequences first, then rejected ones: one forward pass for both halves.

    A batch of single conversations (``collate_chats``, SFT) has ``n_pairs == 0`` and one row
    per conversation.
    """

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


def _is_text(value: str) -> bool:
    """No NUL, no lone surrogate: what a tokenizer can read and a UTF-8 file can hold."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same_words(a: str, b: str) -> bool:
    return a.split() == b.split()


def _messages(value: Any, *, answer: bool) -> list[dict[str, str]]:
    """Validate a message list (or a plain string) into ``[{"role", "content"}]``."""
    if isinstance(value, str):
        value = [{"role": "assistant" if answer else "user", "content": value}]
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
        if not _is_text(message["content"]):
            raise _Skip("invalid_text")
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


def _prompt_text(tokenizer: Any, prompt: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return _render(tokenizer, prompt, generation_prompt=True)
    # A base model without a template: the prompt is the one user message's text.
    if len(prompt) != 1:
        raise _Skip("template_mismatch")
    return prompt[0]["content"]


def _tokenize(
    tokenizer: Any, prompt: list[dict[str, str]], answers: list[list[dict[str, str]]]
) -> tuple[list[int], list[list[int]]]:
    """``(prompt ids, [prompt + answer ids for each answer])``; answers start at len(prompt)."""
    prompt_text = _prompt_text(tokenizer, prompt)
    texts = []
    if getattr(tokenizer, "chat_template", None):
        for answer in answers:
            full = _render(tokenizer, prompt + answer, generation_prompt=False)
            if not full.startswith(prompt_text):
                raise _Skip("template_mismatch")
            texts.append(full[len(prompt_text) :])
    else:
        # Plain concatenation, the answer closed by EOS.
        eos = tokenizer.eos_token or ""
        texts = [answer[0]["content"] + eos for answer in answers]
    ids = _ids(tokenizer, prompt_text)
    return ids, [ids + _ids(tokenizer, text) for text in texts]


_Messages = list[dict[str, str]]


def _valid_pair(row: Any) -> tuple[_Messages, _Messages, _Messages]:
    """``(prompt, chosen, rejected)`` of a row, every check but the tokenizer's passed."""
    if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= row.keys():
        raise _Skip("malformed")
    prompt = _messages(row["prompt"], answer=False)
    chosen = _messages(row["chosen"], answer=True)
    rejected = _messages(row["rejected"], answer=True)
    if not any(m["content"].strip() for m in prompt):
        raise _Skip("empty_prompt")
    if not chosen[0]["content"].strip() or not rejected[0]["content"].strip():
        raise _Skip("empty_answer")
    if _same_words(chosen[0]["content"], rejected[0]["content"]):
        raise _Skip("identical")
    return prompt, chosen, rejected


def _chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def _checked_pair(row: Any, max_length: int) -> tuple[_Messages, _Messages, _Messages]:
    """``_valid_pair``, and not so many characters that no tokenizer could fit them."""
    prompt, chosen, rejected = _valid_pair(row)
    if _chars(prompt) + max(_chars(chosen), _chars(rejected)) > max_length * _MAX_CHARS_PER_TOKEN:
        raise _Skip("too_long")
    return prompt, chosen, rejected


def check_pair(row: Any, max_length: int) -> str | None:
    """Why ``encode_pairs`` would skip this row before tokenizing it, or None: it may be used."""
    try:
        _checked_pair(row, max_length)
    except _Skip as skip:
        return skip.reason
    return None


def _encode_row(row: Any, tokenizer: Any, max_length: int) -> EncodedPair:
    prompt, chosen, rejected = _checked_pair(row, max_length)
    prompt_ids, (chosen_ids, rejected_ids) = _tokenize(tokenizer, prompt, [chosen, rejected])
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


def _encode_chat(row: Any, tokenizer: Any, max_length: int) -> EncodedChat:
    """A ``{"messages": [..., assistant]}`` row (TRL/OpenAI chat JSONL): SFT on its last turn."""
    if not isinstance(row, dict) or "messages" not in row:
        raise _Skip("malformed")
    messages = _messages(row["messages"], answer=False)
    prompt, answer = messages[:-1], messages[-1:]
    if not prompt or answer[0]["role"] != "assistant":
        raise _Skip("malformed")
    if not answer[0]["content"].strip():
        raise _Skip("empty_answer")
    if _chars(messages) > max_length * _MAX_CHARS_PER_TOKEN:
        raise _Skip("too_long")
    ids_prompt, (ids,) = _tokenize(tokenizer, prompt, [answer])
    if len(ids) > max_length:
        raise _Skip("too_long")
    if len(ids) <= len(ids_prompt):
        raise _Skip("empty_answer")
    row_id = row.get("id")
    return EncodedChat(
        id=None if row_id is None else str(row_id),
        prompt_len=len(ids_prompt),
        ids=tuple(ids),
        prompt=prompt,
    )


def _encode_all(rows: Iterable[Any], encode: Any) -> tuple[list[Any], dict[str, Any]]:
    kept: list[Any] = []
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []
    n = 0
    for row in rows:
        n += 1
        try:
            kept.append(encode(row))
        except _Skip as skip:
            skipped[skip.reason] += 1
            if isinstance(row, dict) and row.get("id") is not None:
                skipped_ids.append(str(row["id"]))
    report = {
        "rows": n,
        "kept": len(kept),
        "skipped": dict(skipped),
        "skipped_ids": skipped_ids,
    }
    return kept, report


def _pair_key(row: Any) -> str | None:
    """The pair with runs of whitespace made one space; None for a row skipped anyway."""
    try:
        parts = _valid_pair(row)
    except _Skip:
        return None  # counted under its own reason, each copy
    normal = [[(m["role"], " ".join(m["content"].split())) for m in part] for part in parts]
    return json.dumps(normal)


def drop_duplicates(rows: Iterable[Any]) -> tuple[list[Any], list[Any]]:
    """``(kept, dropped)``: each row whose pair (whitespace aside) an earlier row already has
    is dropped, and its ``id`` is added to that row's ``"duplicates"`` list (a new dict)."""
    kept: list[Any] = []
    first: dict[str, int] = {}
    dropped: list[Any] = []
    for row in rows:
        key = _pair_key(row)
        if key is None or key not in first:
            if key is not None:
                first[key] = len(kept)
            kept.append(row)
            continue
        dropped.append(row)
        original = kept[first[key]]
        if row.get("id") is not None:
            kept[first[key]] = original | {
                "duplicates": [*original.get("duplicates", []), str(row["id"])]
            }
    return kept, dropped


def encode_pairs(
    rows: Iterable[Any], tokenizer: Any, max_length: int
) -> tuple[list[EncodedPair], dict[str, Any]]:
    """Tokenize every usable row; return the pairs and ``{"rows", "kept", "skipped"}``.

    ``skipped`` maps each reason of :data:`SKIP_REASONS` that occurred to its count, and
    ``skipped_ids`` lists the ids of skipped rows that had one.
    """
    return _encode_all(rows, lambda row: _encode_row(row, tokenizer, max_length))


def encode_chats(
    rows: Iterable[Any], tokenizer: Any, max_length: int
) -> tuple[list[EncodedChat], dict[str, Any]]:
    """Tokenize task rows ``{"messages": [...]}`` for SFT on their last (assistant) turn.

    Same rules and the same report as :func:`encode_pairs`: the prompt is every message but the
    last, rendered with the chat template and the generation prompt; bad rows are counted.
    """
    return _encode_all(rows, lambda row: _encode_chat(row, tokenizer, max_length))


def collate(pairs: Sequence[EncodedPair], pad_id: int) -> Batch:
    """Right-pad chosen then rejected sequences into one (2B, T) batch."""
    sequences = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return _pad(sequences, [p.prompt_len for p in pairs] * 2, pad_id, n_pairs=len(pairs))


def collate_chats(chats: Sequence[EncodedChat], pad_id: int) -> Batch:
    """Right-pad conversations into one (B, T) batch (``n_pairs == 0``), answers masked in."""
    return _pad([c.ids for c in chats], [c.prompt_len for c in chats], pad_id, n_pairs=0)


def _pad(
    sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int, n_pairs: int
) -> Batch:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens, strict=True)):
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, : len(seq)] = 1
        loss_mask[i, prompt_len : len(seq)] = 1
    return Batch(
        input_ids, attention_mask, loss_mask, n_pairs=n_pairs, answer_start=min(prompt_lens)
    )
