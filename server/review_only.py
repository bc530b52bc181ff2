"""``POST /v1/conscience/review``: judge a conversation and an answer the caller already has;
nothing is generated and nothing is rewritten.

For a service that generates elsewhere and wants only the guard's reading, and for the console's
re-judging. Behind a client key; the judgement is stored like every other, marked
``review_only`` and with the client key's id, and its id is in the answer (so that
``/admin/judgements/{id}`` and the console find it). The framework override follows the same
rule as a completion's (``CONSCIENCE_ALLOW_OVERRIDES``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from conscience.server import tracing
from conscience.server.auth import client_key_id, require_client
from conscience.server.body import openapi_body, parse_body
from conscience.server.errors import ApiError
from conscience.server.pipeline import Pipeline

__all__ = ["ReviewRequest", "router"]

router = APIRouter()


class ReviewRequest(BaseModel):
    """A conversation (OpenAI chat messages) and the assistant answer to judge."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    answer: str
    reasoning: str | None = None  # the reasoning the answer came with, judged with it
    framework: str | None = None  # the server's framework unless overrides are allowed
    model: str | None = None  # the model that wrote the answer, recorded with the judgement


@router.post(
    "/v1/conscience/review",
    dependencies=[Depends(require_client)],
    openapi_extra=openapi_body(ReviewRequest),
)
async def review(request: Request) -> JSONResponse:
    pipeline: Pipeline = request.app.state.pipeline
    body = await parse_body(request, ReviewRequest)
    framework = body.framework or pipeline.settings.framework
    if body.framework is not None and body.framework != pipeline.settings.framework:
        if not pipeline.settings.allow_overrides:
            raise ApiError(
                403,
                "this server does not allow per-request conscience options",
                param="framework",
                code="overrides_disabled",
            )
        if body.framework not in pipeline.conscience.frameworks:
            known = ", ".join(sorted(pipeline.conscience.frameworks))
            raise ApiError(
                400,
                f"unknown framework {body.framework!r} (known: {known})",
                param="framework",
                code="unknown_framework",
            )
    started = time.perf_counter()
    with tracing.span("conscience.review", attributes={"conscience.review_only": True}):
        judgement = await pipeline.conscience.review(
            body.messages,
            body.answer,
            framework,
            reasoning=body.reasoning,
            model=body.model,
            request_id=request.state.request_id,
        )
    pipeline.metrics.review_seconds.observe(time.perf_counter() - started)
    judgement.review_only = True
    judgement.client_key_id = client_key_id.get()
    judgement.trace_id = tracing.trace_id()
    await pipeline.store.add(judgement)
    pipeline.metrics.verdicts.labels(judgement.verdict.value, judgement.framework).inc()
    probs = judgement.label_probs or {}
    return JSONResponse(
        {
            "object": "conscience.review",
            "judgement_id": judgement.id,
            "verdict": judgement.verdict.value,
            "framework": judgement.framework,
            "confidence": judgement.confidence,
            "p_unethical": probs.get("unethical"),
            "label_probs": judgement.label_probs,
            "screen": judgement.screen,
            "review_ms": judgement.review_ms,
        },
        headers={"X-Conscience-Verdict": judgement.verdict.value},
    )
