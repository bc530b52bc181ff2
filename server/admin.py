"""The admin API, behind the admin key: judgements, human labels, pairs, the served adapter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from conscience.labels import Verdict
from conscience.pairs import to_trl_pair
from server.auth import require_admin
from server.errors import ApiError
from server.pipeline import Pipeline
from server.retention import purge_older_than_days

__all__ = ["router"]

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


class LabelBody(BaseModel):
    label: Verdict | None  # None clears the human label


class AdapterBody(BaseModel):
    model: str  # the upstream model (vLLM: LoRA adapter name) that generates from now on


class PurgeBody(BaseModel):
    older_than_days: int = Field(gt=0)  # like CONSCIENCE_RETENTION_DAYS


@router.get("/judgements")
async def list_judgements(
    request: Request,
    verdict: Verdict | None = None,
    framework: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**63 - 1),  # the stores' largest integer
) -> dict[str, Any]:
    store = _pipeline(request).store
    filters = {"verdict": verdict, "framework": framework, "since": since, "until": until}
    rows = await store.list(**filters, limit=limit, offset=offset)
    total = await store.count(**filters)
    return {"object": "list", "total": total, "data": [row.model_dump(mode="json") for row in rows]}


@router.get("/judgements/{judgement_id}")
async def get_judgement(request: Request, judgement_id: str) -> dict[str, Any]:
    return (await _pipeline(request).store.get(judgement_id)).model_dump(mode="json")


@router.post("/judgements/{judgement_id}/label")
async def set_label(request: Request, judgement_id: str, body: LabelBody) -> dict[str, Any]:
    """A human label overrides the model's verdict in training data (active learning)."""
    judgement = await _pipeline(request).store.set_human_label(judgement_id, body.label)
    return judgement.model_dump(mode="json")


@router.get("/pairs")
async def export_pairs(request: Request, include_consumed: bool = False) -> StreamingResponse:
    """Preference pairs as TRL-style JSONL (prompt / chosen / rejected, conversational)."""
    pairs = await _pipeline(request).store.pairs(include_consumed=include_consumed)

    async def lines() -> AsyncIterator[bytes]:
        for judgement in pairs:
            yield (json.dumps(to_trl_pair(judgement), ensure_ascii=False) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/purge")
async def purge(request: Request, body: PurgeBody) -> dict[str, Any]:
    """Delete stored conversations older than ``older_than_days`` now (retention on demand)."""
    deleted, cutoff = await purge_older_than_days(_pipeline(request).store, body.older_than_days)
    return {"deleted": deleted, "cutoff": cutoff.isoformat()}


@router.get("/adapter")
async def current_adapter(request: Request) -> dict[str, str]:
    pipeline = _pipeline(request)
    return {"model": pipeline.generator, "judge_model": pipeline.conscience.judge_model}


@router.post("/adapter")
async def switch_adapter(request: Request, body: AdapterBody) -> dict[str, str]:
    """Generate with another upstream model (a newly published adapter, or a rollback)."""
    pipeline = _pipeline(request)
    listing = await pipeline.client.models()
    served = {m.get("id") for m in listing.get("data", []) if isinstance(m, dict)}
    if body.model not in served:
        raise ApiError(
            404,
            f"the upstream does not serve {body.model!r}",
            param="model",
            code="model_not_found",
        )
    pipeline.generator = body.model
    return {"model": pipeline.generator, "judge_model": pipeline.conscience.judge_model}
