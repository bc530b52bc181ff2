"""The OpenAI-compatible routes and the health probes. Each handler validates, calls the
pipeline, and returns a response, a stream or an error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conscience.errors import ConscienceError
from conscience.server.auth import require_client
from conscience.server.body import conscience_headers, openapi_body, parse_body
from conscience.server.errors import ApiError, client_message, status_of
from conscience.server.pipeline import Pipeline
from conscience.server.protocol import ChatCompletionRequest
from conscience.server.responses import ResponsesRequest, create_response
from conscience.server.streaming import buffered_chunks, incremental_chunks, sse

__all__ = ["router"]

log = logging.getLogger("conscience.server")

router = APIRouter()


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def _guarded(
    chunks: AsyncIterator[bytes], scrub: Callable[[str], str]
) -> AsyncIterator[bytes]:
    """After the headers are sent a failure can only be told in the stream: an error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except ApiError as exc:
        message, code = scrub(exc.message), exc.code
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        yield sse({"error": error})
    except ConscienceError as exc:
        log.warning("stream failed: %s", scrub(str(exc)))
        message, code = scrub(client_message(exc)), status_of(exc)[1]
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        yield sse({"error": error})


@router.post(
    "/v1/chat/completions",
    dependencies=[Depends(require_client)],
    openapi_extra=openapi_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    pipeline = _pipeline(request)
    body = await parse_body(request, ChatCompletionRequest)
    options = pipeline.options(body)
    request_id = request.state.request_id
    if body.stream and pipeline.settings.stream_mode == "incremental" and (body.n or 1) == 1:
        stream = incremental_chunks(pipeline, body, options, request_id)
        first = await anext(stream)  # nothing upstream can fail before the first chunk
        guarded = _guarded(_prepend(first, stream), request.app.state.scrub)
        return StreamingResponse(guarded, media_type="text/event-stream")
    reviewed = await pipeline.complete(body, options, request_id)
    headers = conscience_headers(reviewed.result)
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


@router.post(
    "/v1/responses",
    dependencies=[Depends(require_client)],
    openapi_extra=openapi_body(ResponsesRequest),
)
async def responses(request: Request) -> Response:
    """The Responses API, reviewed like chat completions (``server.responses``)."""
    return await create_response(request, _pipeline(request))


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
    adapters = request.app.state.adapters
    if engine is not None and not engine.alive():
        problems.append("the embedded engine is not running")
    elif adapters is not None and not adapters.alive():
        problems.append(f"the engine of adapter {adapters.name} is not running")
    else:
        try:
            await pipeline.client.models()
        except ConscienceError as exc:
            problems.append(f"upstream: {request.app.state.scrub(str(exc))}")
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
