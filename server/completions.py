"""Legacy completions, ``POST /v1/completions``, reviewed like chat completions.

The prompt is the question: each choice is reviewed as the answer to
``[{"role": "user", "content": prompt}]`` by the same ``Pipeline.review`` (policy included) and
committed by ``Pipeline.record``. This module only translates between the text-completion shape
and the chat shape the pipeline works on: a choice's ``text`` goes in as the message content,
and whatever the pipeline put in the message's place (a rewrite, a refusal) comes back as the
``text``.

Decisions (README, "The API"):

- A batch ``prompt`` (a list of strings) and ``n``: the upstream answers ``len(prompt) * n``
  choices, choice ``index`` ``i`` belonging to ``prompt[i // n]`` (OpenAI's and vLLM's order);
  each choice is reviewed against its own prompt. At most ``MAX_CHOICES`` choices a request.
- Token-id prompts (``[1, 2]``, ``[[1, 2]]``) cannot be reviewed: 400 ``unsupported_prompt``.
- ``suffix`` (insertion) is refused: 400 ``unsupported_parameter`` (the answer would be the
  middle of a text the review never sees whole; vLLM refuses it too).
- ``echo``: the upstream's text starts with the prompt; only what follows it is reviewed, and a
  rewrite or refusal replaces only that part (the echoed prompt is the client's own text).
- Streaming is always buffered (generate, review, then stream), whatever
  ``CONSCIENCE_STREAM_MODE`` says: no unreviewed text is ever released. Each choice's text comes
  in one chunk (with its log-probs, where asked), then its ``finish_reason``; the last chunk
  (``"choices": []``) carries the ``conscience`` object (and ``usage`` with
  ``stream_options.include_usage``), then ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from conscience.errors import EngineError
from conscience.server import tracing
from conscience.server.auth import require_client
from conscience.server.body import conscience_headers, openapi_body, parse_body
from conscience.server.errors import ApiError
from conscience.server.pipeline import Decision, Options, Pipeline
from conscience.server.protocol import ConscienceOptions

__all__ = ["MAX_CHOICES", "CompletionRequest", "router"]

MAX_CHOICES = 64  # len(prompt) * n: every choice is one review (and maybe a rewrite)

router = APIRouter()


class CompletionRequest(BaseModel):
    """OpenAI's legacy completion request; unknown fields pass to the upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=512)
    # Token ids are typed so that they get a clear refusal instead of a type error.
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, le=16)
    echo: bool | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    conscience: ConscienceOptions | None = None

    @model_validator(mode="after")
    def _reviewable(self) -> CompletionRequest:
        prompts = self.prompts
        if len(prompts) * (self.n or 1) > MAX_CHOICES:
            raise ValueError(f"at most {MAX_CHOICES} choices (prompts times n) a request")
        return self

    @property
    def prompts(self) -> list[Any]:
        """The prompts, one per entry of a batch (token ids are refused by the handler)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def upstream_body(self, model: str) -> dict[str, Any]:
        """Everything the client sent but our key and streaming (the proxy streams itself)."""
        body = self.model_dump(
            exclude_none=True, exclude={"conscience", "stream", "stream_options"}
        )
        body["model"] = model
        return body


def _check_supported(body: CompletionRequest) -> None:
    prompt = body.prompt
    if isinstance(prompt, list) and (not prompt or not all(isinstance(p, str) for p in prompt)):
        message = (
            "a list prompt must hold one or more strings"
            if not prompt
            else "token-id prompts cannot be reviewed: send the prompt as text"
        )
        raise ApiError(400, message, param="prompt", code="unsupported_prompt")
    if body.suffix:
        raise ApiError(
            400,
            "suffix (insertion) is not supported: the review needs the whole text",
            param="suffix",
            code="unsupported_parameter",
        )


async def _parse(request: Request) -> CompletionRequest:
    body = await parse_body(request, CompletionRequest)
    _check_supported(body)
    return body


async def _generate(pipeline: Pipeline, body: CompletionRequest) -> dict[str, Any]:
    """The upstream's ``/v1/completions``, through the pipeline's client: its key, timeout and
    error mapping (an upstream 4xx passes through, 5xx is 502, a timeout 504)."""
    client = pipeline.client
    model = pipeline.upstream_model(body.model)
    # The same span as a chat generation (server.tracing), named for what it is.
    attributes = {
        **tracing.generation_attributes(model),
        "gen_ai.operation.name": "text_completion",
    }
    started = time.perf_counter()
    with tracing.span("conscience.generate", tracing.SpanKind.CLIENT, attributes) as span:
        completion = await client.completions(body.upstream_body(model))
        tracing.record_generation(span, completion)
    pipeline.metrics.upstream_seconds.observe(time.perf_counter() - started)
    choices = completion.get("choices")
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices)
    ):
        raise EngineError("engine answered a completion without text choices")
    return completion


def _prompt_of(choices: list[dict[str, Any]], prompts: list[str]) -> list[str]:
    """Each choice's prompt: choice ``index`` ``i`` answers ``prompts[i // per_prompt]``."""
    if len(choices) % len(prompts):
        raise EngineError(
            f"engine answered {len(choices)} choices for {len(prompts)} prompts: "
            "they cannot be matched to their prompts"
        )
    per_prompt = len(choices) // len(prompts)
    owners = []
    for position, choice in enumerate(choices):
        index = choice.get("index")
        if not isinstance(index, int) or not 0 <= index < len(choices):
            index = position
        owners.append(prompts[index // per_prompt])
    return owners


async def _review(
    pipeline: Pipeline,
    choice: dict[str, Any],
    prompt: str,
    echo: bool,
    options: Options,
    request_id: str,
    model: str | None,
) -> Decision:
    """Review one text choice through the pipeline and take back what it served in its place."""
    text: str = choice["text"]
    echoed = prompt if echo and text.startswith(prompt) else ""
    message = {"role": "assistant", "content": text[len(echoed) :]}
    as_chat = {
        "index": choice.get("index", 0),
        "message": message,
        "finish_reason": choice.get("finish_reason"),
    }
    decision = await pipeline.review(
        as_chat, [{"role": "user", "content": prompt}], options, request_id, model=model
    )
    if as_chat["message"] is not message:  # the policy served something else in its place
        choice["text"] = echoed + (as_chat["message"].get("content") or "")
        choice["finish_reason"] = as_chat.get("finish_reason")
        choice["logprobs"] = None  # they were the original's
    return decision


async def _stream(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
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


@router.post(
    "/v1/completions",
    dependencies=[Depends(require_client)],
    openapi_extra=openapi_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    body = await _parse(request)
    options = pipeline.options(body)  # it reads only the request's `conscience`
    request_id = request.state.request_id
    completion = await _generate(pipeline, body)
    choices = completion["choices"]
    owners = _prompt_of(choices, body.prompts)
    decisions = await asyncio.gather(
        *(
            _review(
                pipeline,
                choice,
                prompt,
                bool(body.echo),
                options,
                request_id,
                completion.get("model"),
            )
            for choice, prompt in zip(choices, owners, strict=True)
        )
    )
    top = await pipeline.record(list(decisions))  # committed before the client sees anything
    completion["conscience"] = top.wire()
    headers = conscience_headers(top)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            _stream(completion, include_usage), media_type="text/event-stream", headers=headers
        )
    return JSONResponse(completion, headers=headers)
