"""``POST /v1/chat/completions``: validate, run the pipeline (generation, review, policy,
record), and answer with the completion, a buffered stream of it, or an incremental stream
(``server.chat.streaming``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conscience.errors import ConscienceError
from conscience.server.auth import require_client
from conscience.server.body import conscience_headers, openapi_body, parse_body
from conscience.server.chat.protocol import ChatCompletionRequest
from conscience.server.chat.streaming import buffered_chunks, incremental_chunks
from conscience.server.errors import ApiError, client_message, status_of
from conscience.server.pipeline import Pipeline
from conscience.server.sse import sse

__all__ = ["router"]

log = logging.getLogger("conscience.server")

router = APIRouter()


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
    pipeline: Pipeline = request.app.state.pipeline
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
