"""The OpenAI-compatible routes and the health probes. Each handler validates, calls the
pipeline, and returns a response, a stream or an error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from conscience.errors import ConscienceError
from server.auth import require_client
from server.errors import ApiError, status_of
from server.pipeline import Pipeline
from server.protocol import ChatCompletionRequest
from server.streaming import buffered_chunks, incremental_chunks, sse

__all__ = ["router"]

router = APIRouter()


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def _parse(request: Request) -> ChatCompletionRequest:
    raw = await request.body()
    limit = request.app.state.settings.max_body_bytes
    if len(raw) > limit:  # a chunked body has no Content-Length to refuse it by earlier
        raise ApiError(413, f"request body larger than {limit} bytes", code="request_too_large")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_value") from exc


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """After the headers are sent a failure can only be told in the stream: an error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except (ApiError, ConscienceError) as exc:
        code = exc.code if isinstance(exc, ApiError) else status_of(exc)[1]
        error = {"message": str(exc), "type": "server_error", "param": None, "code": code}
        yield sse({"error": error})


@router.post("/v1/chat/completions", dependencies=[Depends(require_client)])
async def chat_completions(request: Request) -> Response:
    pipeline = _pipeline(request)
    body = await _parse(request)
    options = pipeline.options(body)
    request_id = request.state.request_id
    if body.stream and pipeline.settings.stream_mode == "incremental" and (body.n or 1) == 1:
        stream = incremental_chunks(pipeline, body, options, request_id)
        first = await anext(stream)  # nothing upstream can fail before the first chunk
        return StreamingResponse(_guarded(_prepend(first, stream)), media_type="text/event-stream")
    reviewed = await pipeline.complete(body, options, request_id)
    headers = {
        "X-Conscience-Verdict": reviewed.result.verdict or "unreviewed",
        "X-Conscience-Action": reviewed.result.action.value,
    }
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            buffered_chunks(reviewed.completion, include_usage),
            media_type="text/event-stream",
            headers=headers,
        )
    return JSONResponse(reviewed.completion, headers=headers)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


@router.get("/v1/models", dependencies=[Depends(require_client)])
async def models(request: Request) -> dict[str, Any]:
    pipeline = _pipeline(request)
    entry = {
        "id": pipeline.settings.model,
        "object": "model",
        "created": 0,
        "owned_by": "conscience",
    }
    return {"object": "list", "data": [entry]}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    pipeline = _pipeline(request)
    problems = []
    engine = request.app.state.engine
    if engine is not None and not engine.alive():
        problems.append("the embedded engine is not running")
    else:
        try:
            await pipeline.client.models()
        except ConscienceError as exc:
            problems.append(f"upstream: {exc}")
    if not await pipeline.store.ping():
        problems.append("the judgement store does not answer")
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(
        _pipeline(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
