"""Streaming without leaks: the client never receives text the policy would have replaced.

- ``buffered`` (default): generate, review, then stream the reviewed completion as chunks.
- ``incremental``: stream from the upstream while holding text back; every time a window of
  new text has accumulated, the whole answer so far is reviewed and the held text released
  only if it passes. The last chunk carries the ``conscience`` object, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from conscience.server.errors import ApiError
from conscience.server.pipeline import REFUSAL, Options, Pipeline
from conscience.server.protocol import ChatCompletionRequest, ConscienceResult

from conscience.errors import ConscienceError
from conscience.labels import Action, Policy, ReviewErrorMode, Verdict

__all__ = ["buffered_chunks", "incremental_chunks", "sse"]

_PIECE_CHARS = 24  # how much text one synthesized chunk carries


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


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
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            yield _chunk(
                base, [{"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}]
            )
        if message.get("content"):
            for piece in _pieces(message["content"]):
                yield _chunk(
                    base, [{"index": index, "delta": {"content": piece}, "finish_reason": None}]
                )
        yield _chunk(
            base, [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]
        )
    extra: dict[str, Any] = {"conscience": completion["conscience"]}
    if include_usage and completion.get("usage") is not None:
        extra["usage"] = completion["usage"]
    yield _chunk(base, [], **extra)
    yield b"data: [DONE]\n\n"


class _Incremental:
    """State of one incremental stream: what was generated, released and judged."""

    def __init__(
        self, pipeline: Pipeline, request: ChatCompletionRequest, options: Options, request_id: str
    ) -> None:
        self.pipeline, self.request, self.options = pipeline, request, options
        self.request_id = request_id
        self.messages = [m.model_dump(exclude_none=True) for m in request.messages]
        self.text = ""  # everything generated so far
        self.released = 0  # how many characters of it the client has
        self.base: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "model": request.model,
            "created": int(time.time()),
        }

    async def review(self) -> tuple[ConscienceResult, Any]:
        conscience = self.pipeline.conscience
        try:
            judgement = await conscience.review(
                self.messages,
                self.text,
                self.options.framework,
                model=self.base["model"],
                request_id=self.request_id,
            )
        except ConscienceError as exc:
            if self.pipeline.settings.on_review_error is ReviewErrorMode.CLOSED:
                raise ApiError(
                    503, f"the conscience review failed: {exc}", code="review_failed"
                ) from exc
            result = ConscienceResult(
                verdict=None, framework=self.options.framework, action=Action.UNREVIEWED
            )
            return result, None
        action = Action.PASSED
        if judgement.verdict is Verdict.UNETHICAL:
            action = await self._act(judgement)
        judgement.action = action
        return ConscienceResult.of(judgement), judgement

    async def _act(self, judgement: Any) -> Action:
        policy = self.options.policy
        if policy is Policy.FLAG:
            return Action.FLAGGED
        if policy is Policy.REWRITE and self.released == 0:
            # Nothing has reached the client yet, so the rewrite can still replace it all.
            try:
                judgement.rewrite = await self.pipeline.conscience.rewrite(
                    self.messages, judgement.answer, self.options.framework
                )
                return Action.REWRITTEN
            except ConscienceError:
                return Action.BLOCKED
        return Action.BLOCKED  # text already released cannot be taken back: stop here


async def incremental_chunks(
    pipeline: Pipeline, request: ChatCompletionRequest, options: Options, request_id: str
) -> AsyncIterator[bytes]:
    """Stream from the upstream, releasing text only after the answer so far passed review."""
    state = _Incremental(pipeline, request, options, request_id)
    window = pipeline.settings.stream_window_chars
    body = request.upstream_body(pipeline.upstream_model(request.model))
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield _chunk(state.base, [first])
    finish, result, judgement = "stop", None, None
    upstream = pipeline.client.chat_stream(body)
    async for chunk in upstream:
        for choice in chunk.get("choices") or []:
            state.text += (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
        if len(state.text) - state.released < window:
            continue
        result, judgement = await state.review()
        if result.action in (Action.BLOCKED, Action.REWRITTEN):
            await upstream.aclose()  # stop generating what will never be served
            break
        yield _release(state)
    else:
        if result is None or len(state.text) > state.released:
            result, judgement = await state.review()
    assert result is not None
    if result.action is Action.REWRITTEN:
        finish = "stop"
        for piece in _pieces(judgement.rewrite):
            yield _chunk(
                state.base, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
            )
    elif result.action is Action.BLOCKED:
        finish = "content_filter"
        if state.released == 0:
            yield _chunk(
                state.base, [{"index": 0, "delta": {"content": REFUSAL}, "finish_reason": None}]
            )
    elif len(state.text) > state.released:
        yield _release(state)
    if judgement is not None:
        await pipeline.store.add(judgement)  # committed before the client sees the verdict
    pipeline.metrics.actions.labels(result.action.value).inc()
    if result.verdict is not None:
        pipeline.metrics.verdicts.labels(result.verdict.value, result.framework).inc()
    yield _chunk(state.base, [{"index": 0, "delta": {}, "finish_reason": finish}])
    yield _chunk(state.base, [], conscience=result.wire())
    yield b"data: [DONE]\n\n"


def _release(state: _Incremental) -> bytes:
    piece, state.released = state.text[state.released :], len(state.text)
    return _chunk(state.base, [{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
