"""Streaming without leaks: the client never receives text the policy would have replaced.

- ``buffered`` (default): generate, review, then stream the reviewed completion as chunks.
- ``incremental``: stream from the upstream while holding text back; every time a window of
  new text has accumulated, the whole answer so far is reviewed and the held text released
  only if it passes. The last chunk carries the ``conscience`` object, then ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from conscience.labels import Action
from conscience.server.answer import merge_delta
from conscience.server.chat.protocol import ChatCompletionRequest
from conscience.server.pipeline import Decision, Options, Pipeline
from conscience.server.sse import sse
from conscience.server.usage import account

__all__ = ["buffered_chunks", "incremental_chunks"]

_PIECE_CHARS = 24  # how much text one synthesized chunk carries


def _chunk(base: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return sse({**base, "object": "chat.completion.chunk", "choices": choices, **extra})


def _pieces(text: str) -> list[str]:
    return [text[i : i + _PIECE_CHARS] for i in range(0, len(text), _PIECE_CHARS)] or [""]


async def buffered_chunks(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    """A reviewed, complete chat completion re-emitted as OpenAI stream chunks."""
    base = {k: completion.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    for choice in completion["choices"]:
        index, message = choice.get("index", 0), choice.get("message") or {}
        yield _chunk(
            base,
            [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                }
            ],
        )
        rest = _held(message)
        if rest:
            yield _chunk(base, [{"index": index, "delta": rest, "finish_reason": None}])
        content = message.get("content")
        if isinstance(content, str) and content:
            logprobs = choice.get("logprobs")  # whole, with the first piece: the SDK adds them up
            for piece in _pieces(content):
                delta = {"index": index, "delta": {"content": piece}, "finish_reason": None}
                if logprobs:
                    delta["logprobs"], logprobs = logprobs, None
                yield _chunk(base, [delta])
        yield _chunk(
            base, [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]
        )
    extra: dict[str, Any] = {"conscience": completion["conscience"]}
    if include_usage and completion.get("usage") is not None:
        extra["usage"] = completion["usage"]
    yield _chunk(base, [], **extra)
    yield b"data: [DONE]\n\n"


def _held(message: dict[str, Any]) -> dict[str, Any]:
    """Every field of a message but its role and content, as one delta (tool calls indexed),
    released whole: the refusal, the reasoning, tool and function calls, the audio."""
    rest = {k: v for k, v in message.items() if k not in ("role", "content") and v is not None}
    if rest.get("tool_calls"):
        rest["tool_calls"] = [{"index": i, **c} for i, c in enumerate(rest["tool_calls"])]
    return rest


class _Incremental:
    """One incremental stream: what was generated and how much of it the client has."""

    def __init__(self, request: ChatCompletionRequest) -> None:
        self.messages = [m.model_dump(exclude_none=True) for m in request.messages]
        # Everything generated so far, merged as the SDK merges deltas: the text, its reasoning
        # and its log-probs are released as they pass review; the rest (tool calls, refusal,
        # audio) whole, once the answer passed.
        self.message: dict[str, Any] = {"role": "assistant", "content": ""}
        self.unknown: dict[str, Any] = {}  # choice fields read_choice will judge
        self.model: str | None = None  # the generating model, as the upstream names it
        self.finish = "stop"
        self.released = 0  # how many characters of the text the client has
        self.reasoning_released = 0  # and of the reasoning
        self.logprobs: list[Any] = []  # the text's token log-probs, not yet released
        self.usage: dict[str, Any] | None = None  # the upstream's, from its last chunk
        self.base: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "model": request.model,
            "created": int(time.time()),
        }

    def add(self, chunk: dict[str, Any]) -> None:
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            merge_delta(self.message, choice.get("delta") or {})
            self.finish = choice.get("finish_reason") or self.finish
            logprobs = (choice.get("logprobs") or {}).get("content")
            if isinstance(logprobs, list):
                self.logprobs.extend(logprobs)
            known = ("index", "delta", "finish_reason", "logprobs", "stop_reason")
            self.unknown.update((k, v) for k, v in choice.items() if k not in known)

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""

    def choice(self) -> dict[str, Any]:
        """The answer so far as a completion's choice, for the pipeline to review."""
        message = dict(self.message)
        return {"index": 0, "message": message, "finish_reason": self.finish, **self.unknown}

    def held(self) -> bytes | None:
        """The answer's fields but its text and reasoning (released with the text), once it
        passed review: tool and function calls, the refusal, the audio."""
        rest = _held(self.message)
        for name in ("reasoning_content", "reasoning"):
            rest.pop(name, None)
        if not rest:
            return None
        return _chunk(self.base, [{"index": 0, "delta": rest, "finish_reason": None}])

    @property
    def reasoning(self) -> str:
        for name in ("reasoning_content", "reasoning"):
            value = self.message.get(name)
            if isinstance(value, str):
                return value
        return ""

    def release(self) -> bytes:
        """The text generated since the last release, with the reasoning and the token
        log-probs that came with it: all of it passed the review that released it."""
        piece, self.released = self.text[self.released :], len(self.text)
        delta: dict[str, Any] = {"content": piece}
        thought = self.reasoning[self.reasoning_released :]
        if thought:
            name = "reasoning_content" if "reasoning_content" in self.message else "reasoning"
            delta[name], self.reasoning_released = thought, len(self.reasoning)
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if self.logprobs:
            choice["logprobs"], self.logprobs = {"content": self.logprobs}, []
        return _chunk(self.base, [choice])


def _content(base: dict[str, Any], piece: str) -> bytes:
    return _chunk(base, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}])


async def incremental_chunks(
    pipeline: Pipeline, request: ChatCompletionRequest, options: Options, request_id: str
) -> AsyncIterator[bytes]:
    """Stream from the upstream, releasing text only after the answer so far passed review."""
    state = _Incremental(request)
    window = pipeline.settings.stream_window_chars
    # The probe's completed windows are read once, as they complete, not at every review.
    follower = pipeline.follower(state.messages, options)
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield _chunk(state.base, [first])

    async def review() -> tuple[Decision, dict[str, Any]]:
        # Once text is out, a rewrite cannot take it back: the pipeline blocks instead.
        choice = state.choice()
        decision = await pipeline.review(
            choice,
            state.messages,
            options,
            request_id,
            model=state.model,
            can_rewrite=state.released == 0,
            ahead=follower.ahead(0) if follower is not None else None,
            response_format=request.response_format,
        )
        return decision, choice

    decision: Decision | None = None
    choice: dict[str, Any] = {}  # the reviewed answer, replaced by the policy where it acted
    upstream = pipeline.generate_stream(request)  # with its usage (ChatCompletionRequest)
    try:
        async for chunk in upstream:
            state.add(chunk)
            if follower is not None:
                follower.see(chunk)
            if len(state.text) - state.released < window:
                continue
            decision, choice = await review()
            if decision.result.action in (Action.BLOCKED, Action.REWRITTEN):
                await upstream.aclose()  # stop generating what will never be served
                break
            yield state.release()
        else:
            if decision is None or len(state.text) > state.released:
                decision, choice = await review()
    finally:
        if follower is not None:
            await follower.close()
    assert decision is not None
    finish = state.finish
    if decision.result.action in (Action.BLOCKED, Action.REWRITTEN):
        finish = choice["finish_reason"]
        # The replacement (rewrite or refusal) is served only where nothing was released.
        if state.released == 0:
            refusal = _held(choice["message"])  # a block's refusal, said as refusal too
            if refusal:
                yield _chunk(state.base, [{"index": 0, "delta": refusal, "finish_reason": None}])
            for piece in _pieces(choice["message"]["content"]):
                yield _content(state.base, piece)
    else:
        if len(state.text) > state.released:
            yield state.release()
        held = state.held()
        if held is not None:
            yield held
    result = await pipeline.record([decision])  # committed before the client sees the verdict
    yield _chunk(state.base, [{"index": 0, "delta": {}, "finish_reason": finish}])
    served = {"usage": state.usage, "conscience": result.wire()}
    account(served, [decision])  # a rewrite served: its tokens, not the generation's
    extra = {"conscience": served["conscience"]}
    if (request.stream_options or {}).get("include_usage") and served["usage"] is not None:
        extra["usage"] = served["usage"]
    yield _chunk(state.base, [], **extra)
    yield b"data: [DONE]\n\n"
