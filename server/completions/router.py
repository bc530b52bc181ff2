"""``POST /v1/completions``: legacy completions, reviewed like chat completions (the rules in
``protocol.py``; the translation to and from the pipeline in ``translation.py``)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from conscience.server.auth import require_client
from conscience.server.body import conscience_headers, openapi_body
from conscience.server.completions.protocol import CompletionRequest, parse
from conscience.server.completions.streaming import text_chunks
from conscience.server.completions.translation import check_choices, prompts_of, review_choice
from conscience.server.pipeline import Pipeline
from conscience.server.usage import account

__all__ = ["router"]

router = APIRouter()


@router.post(
    "/v1/completions",
    dependencies=[Depends(require_client)],
    openapi_extra=openapi_body(CompletionRequest),
)
async def completions(request: Request) -> Response:
    pipeline: Pipeline = request.app.state.pipeline
    body = await parse(request)
    options = pipeline.options(body)  # it reads only the request's `conscience`
    request_id = request.state.request_id
    completion = await pipeline.generate(body, text=True)
    choices = check_choices(completion)
    owners = prompts_of(choices, body.prompts)
    decisions = await asyncio.gather(
        *(
            review_choice(
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
    account(completion, list(decisions))  # a rewrite served: its tokens (server/usage.py)
    headers = conscience_headers(top)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(
            text_chunks(completion, include_usage), media_type="text/event-stream", headers=headers
        )
    return JSONResponse(completion, headers=headers)
