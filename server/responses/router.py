"""``POST /v1/responses``: the Responses API, served from the upstream's chat completions.

The request is translated into the chat-completions request it means
(``request.py``), which goes through the same ``Pipeline`` as
``/v1/chat/completions``: one review path, one policy, one store. The reviewed completion is
translated back into a Response object (``response.py``) or its stream of events
(``streaming.py``). docs/decisions.md, "The Responses API", has the reasons.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conscience.server.auth import require_client
from conscience.server.body import conscience_headers, openapi_body, parse_body
from conscience.server.pipeline import Pipeline
from conscience.server.responses.request import ResponsesRequest, to_chat_request
from conscience.server.responses.response import to_response
from conscience.server.responses.streaming import buffered_events, incremental_events

__all__ = ["ResponsesRequest", "create_response", "router"]

router = APIRouter()


@router.post(
    "/v1/responses",
    dependencies=[Depends(require_client)],
    openapi_extra=openapi_body(ResponsesRequest),
)
async def responses(request: Request) -> Response:
    """The Responses API, reviewed like chat completions."""
    return await create_response(request, request.app.state.pipeline)


async def create_response(request: Request, pipeline: Pipeline) -> Response:
    """The handler behind ``POST /v1/responses``."""
    body = await parse_body(request, ResponsesRequest)
    chat = to_chat_request(body)
    options = pipeline.options(chat)
    request_id = request.state.request_id
    # Incremental streaming reviews text only (tool calls are not streamed incrementally),
    # so a request that offers tools is answered buffered.
    if body.stream and pipeline.settings.stream_mode == "incremental" and not body.tools:
        events = incremental_events(
            pipeline, chat, options, request_id, body, request.app.state.scrub
        )
        return StreamingResponse(events, media_type="text/event-stream")
    reviewed = await pipeline.complete(chat, options, request_id)
    headers = conscience_headers(reviewed.result)
    response = to_response(reviewed.completion, body)
    if body.stream:
        return StreamingResponse(
            buffered_events(response), media_type="text/event-stream", headers=headers
        )
    return JSONResponse(response, headers=headers)
