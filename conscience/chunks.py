"""A streamed completion assembled into the unary one the engine would have answered.

The embedded llama.cpp engine stops a request when its stream's connection closes, but goes on
generating a non-streamed one to the end after its client left (measured on xllamacpp
2026.10: 20 s and more after the close, until ``max_tokens``). So the client
(``EngineClient(stream_unary=True)``) asks that engine for every completion as a stream, and
makes the answer of the stream here: a cancelled caller closes the stream, and the engine's
slot is free at once.

``assemble(chunks)`` takes the parsed chunks of ``/v1/chat/completions`` or
``/v1/completions`` and returns what the same request without ``stream`` returns: text,
reasoning, refusal, tool calls and log-probs concatenated per choice, the last finish reason,
and the usage (and llama.cpp's ``timings``) of the chunk that carried them. One difference
remains on llama.cpp: a unary answer's log-probs end with the end-of-generation token's (no
text), a stream's do not; the judge reads its label at the first token with text
(``verdict.label_probs_from_logprobs``), so its verdict is the same.

``assemble_native(chunks)`` does the same for llama.cpp's native ``/completion``, whose stream
has no ``[DONE]``: each chunk carries its tokens' text and probabilities, and the last one
(``"stop": true``) the rest of the unary answer (timings, tokens evaluated and cached).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["assemble", "assemble_native"]

_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")  # a delta's strings
_TRAILERS = ("usage", "timings", "system_fingerprint")  # top-level keys a late chunk may carry


class _Choice:
    """One choice as its chunks arrive."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.texts: dict[str, list[str]] = {}  # field -> pieces (chat deltas, or "text")
        self.calls: dict[int, dict[str, Any]] = {}  # tool calls by their index
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            self.role = delta.get("role") or self.role
            for name in _TEXT_FIELDS:
                if isinstance(delta.get(name), str):
                    self.texts.setdefault(name, []).append(delta[name])
            for call in delta.get("tool_calls") or []:
                self._add_call(call)
        if isinstance(choice.get("text"), str):  # a legacy completion's chunk
            self.texts.setdefault("text", []).append(choice["text"])
        if isinstance(choice.get("logprobs"), dict):
            self._add_logprobs(choice["logprobs"])
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def _add_call(self, call: dict[str, Any]) -> None:
        merged = self.calls.setdefault(call.get("index", len(self.calls)), {"function": {}})
        for key in ("id", "type"):
            if call.get(key):
                merged[key] = call[key]
        function = call.get("function") or {}
        for key in ("name", "arguments"):  # sent whole or in pieces: the pieces concatenate
            if isinstance(function.get(key), str):
                merged["function"][key] = merged["function"].get(key, "") + function[key]

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        """Per-token lists concatenate (chat's ``content``/``refusal``, legacy ``tokens``...)."""
        if self.logprobs is None:
            self.logprobs = {}
        for key, value in logprobs.items():
            if isinstance(value, list):
                self.logprobs.setdefault(key, []).extend(value)
            elif value is not None:
                self.logprobs[key] = value

    def joined(self, name: str) -> str | None:
        pieces = self.texts.get(name)
        return "".join(pieces) if pieces is not None else None

    def chat(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.joined("content")}
        for name in _TEXT_FIELDS[1:]:
            if name in self.texts:
                message[name] = self.joined(name)
        if self.calls:
            message["tool_calls"] = [
                {"type": "function", **call} for _, call in sorted(self.calls.items())
            ]
        return {
            "index": self.index,
            "message": message,
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }

    def text(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.joined("text") or "",
            "logprobs": self.logprobs,
            "finish_reason": self.finish_reason,
        }


def assemble(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The unary completion made of a stream's parsed chunks (see the module)."""
    head: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    legacy = False
    for chunk in chunks:
        for key in ("id", "created", "model"):
            if key not in head and chunk.get(key) is not None:
                head[key] = chunk[key]
        for key in _TRAILERS:
            if chunk.get(key) is not None:
                head[key] = chunk[key]
        legacy = legacy or chunk.get("object") == "text_completion"
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            choices.setdefault(index, _Choice(index)).add(choice)
    ordered = [choices[i] for i in sorted(choices)]
    if legacy:
        return {**head, "object": "text_completion", "choices": [c.text() for c in ordered]}
    return {**head, "object": "chat.completion", "choices": [c.chat() for c in ordered]}


def assemble_native(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """llama.cpp's unary ``/completion`` answer made of its stream's parsed chunks: the last
    chunk's fields, with every chunk's ``content`` and ``completion_probabilities`` joined."""
    answer: dict[str, Any] = {}
    texts: list[str] = []
    probabilities: list[dict[str, Any]] = []
    for chunk in chunks:
        texts.append(chunk.get("content") or "")
        probabilities.extend(chunk.get("completion_probabilities") or [])
        answer = chunk
    answer = {**answer, "content": "".join(texts)}
    if probabilities:
        answer["completion_probabilities"] = probabilities
    return answer
