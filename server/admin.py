"""The admin API, behind the admin key: judgements, human labels, pairs, the served adapter.

A row the store cannot read (``UnreadableRow``: written behind the store's back, by a bug or a
hand edit) is one bad row, not a failed store: the list names it under ``unreadable`` beside the
readable judgements of its page, asked for by id it answers 500 ``unreadable_judgement`` with
the reason, and the pairs export leaves it out and counts it in its headers, with every pair that
is not plain chat or not valid Unicode (docs/decisions.md, "Poisoned rows in the admin API").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from conscience.engine.lora_gguf import LoraExportError
from conscience.engine.publish import ADAPTER_NAME
from conscience.errors import EngineError
from conscience.labels import Verdict
from conscience.pairs import PairError, to_trl_line
from conscience.server.auth import require_admin
from conscience.server.errors import ApiError
from conscience.server.pipeline import Pipeline
from conscience.server.retention import purge_older_than_days
from conscience.store.base import UnreadableRow

__all__ = ["router"]

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
log = logging.getLogger("conscience.server.admin")

# The export's headers: how many pairs it holds, how many it left out, and why.
PAIRS_HEADER = "X-Conscience-Pairs"
SKIPPED_HEADER = "X-Conscience-Skipped"
REASONS_HEADER = "X-Conscience-Skipped-Reasons"
_DETAIL_CHARS = 500  # of the store's description of an unreadable row, in an error message


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


class _Json(JSONResponse):
    """JSON that a lone surrogate cannot fail (a JSON escape such as ``\\ud800`` in a stored
    conversation reads back as one, and UTF-8 cannot encode it): such an answer is sent ASCII-
    escaped, the surrogate as ``\\ud800``, the way the store holds it."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


class LabelBody(BaseModel):
    label: Verdict | None  # None clears the human label


class AdapterBody(BaseModel):
    model: str  # the upstream model (vLLM: LoRA adapter name) that generates from now on


class PurgeBody(BaseModel):
    older_than_days: int = Field(gt=0)  # like CONSCIENCE_RETENTION_DAYS


@router.get("/judgements", response_model=dict[str, Any])
async def list_judgements(
    request: Request,
    verdict: Verdict | None = None,
    framework: str | None = None,
    client_key_id: str | None = None,  # the client key's id (server/auth.key_id)
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**63 - 1),  # the stores' largest integer
) -> JSONResponse:
    """A page of judgements, newest first; ``unreadable`` names the page's rows the store cannot
    read (``{"id", "reason"}``), so that ``data`` and ``unreadable`` together are the page."""
    store = _pipeline(request).store
    filters: dict[str, Any] = {
        "verdict": verdict,
        "framework": framework,
        "client_key_id": client_key_id,
        "since": since,
        "until": until,
    }
    total = await store.count(**filters)
    found = await store.read_page(**filters, limit=limit, offset=offset)
    rows, unreadable = found.judgements, found.unreadable
    for row in unreadable:
        log.warning("admin: judgement %s is unreadable (%s)", row.judgement_id, row.reason)
    return _Json(
        {
            "object": "list",
            "total": total,
            "data": [row.model_dump(mode="json") for row in rows],
            "unreadable": [{"id": row.judgement_id, "reason": row.reason} for row in unreadable],
        }
    )


def _unreadable_error(exc: UnreadableRow, *, labelled: bool = False) -> ApiError:
    """500 ``unreadable_judgement``: the row is there and the store is up, but the row is not a
    judgement this server can read; the message has the store's reason and detail."""
    log.warning("admin: judgement %s is unreadable (%s)", exc.judgement_id, exc.reason)
    detail = " ".join(
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.strip().startswith("For further information")
    )
    if len(detail) > _DETAIL_CHARS:
        detail = detail[: _DETAIL_CHARS - 3] + "..."
    prefix = "the label was stored, but " if labelled else ""
    return ApiError(
        500,
        f"{prefix}{detail}; fix or delete the row in the store",
        code="unreadable_judgement",
    )


@router.get("/judgements/{judgement_id}", response_model=dict[str, Any])
async def get_judgement(request: Request, judgement_id: str) -> JSONResponse:
    try:
        judgement = await _pipeline(request).store.get(judgement_id)
    except UnreadableRow as exc:
        raise _unreadable_error(exc) from None
    return _Json(judgement.model_dump(mode="json"))


@router.post("/judgements/{judgement_id}/label", response_model=dict[str, Any])
async def set_label(request: Request, judgement_id: str, body: LabelBody) -> JSONResponse:
    """A human label overrides the model's verdict in training data (active learning)."""
    try:
        judgement = await _pipeline(request).store.set_human_label(judgement_id, body.label)
    except UnreadableRow as exc:  # the store wrote the label, then could not read the row back
        raise _unreadable_error(exc, labelled=True) from None
    return _Json(judgement.model_dump(mode="json"))


@router.get("/pairs")
async def export_pairs(request: Request, include_consumed: bool = False) -> StreamingResponse:
    """Preference pairs as TRL-style JSONL (prompt / chosen / rejected, conversational).

    Every line is a pair. A row the store cannot read, a conversation that is not plain chat and
    text that is not valid Unicode are left out: ``X-Conscience-Skipped`` counts them and
    ``X-Conscience-Skipped-Reasons`` says why (``reason=n,...``; absent when none is), the log
    names each one; ``X-Conscience-Pairs`` counts the lines.
    """
    found = await _pipeline(request).store.read_pairs(include_consumed=include_consumed)
    skipped: Counter[str] = Counter()
    for row in found.unreadable:
        log.warning("admin pairs: skipped judgement %s (%s)", row.judgement_id, row.reason)
        skipped[row.reason] += 1
    lines: list[bytes] = []
    for judgement in found.judgements:
        try:
            lines.append(to_trl_line(judgement).encode("utf-8"))
        except PairError as exc:
            log.warning("admin pairs: skipped judgement %s (%s)", judgement.id, exc.reason)
            skipped[exc.reason] += 1
    headers = {PAIRS_HEADER: str(len(lines)), SKIPPED_HEADER: str(skipped.total())}
    if skipped:
        headers[REASONS_HEADER] = ",".join(f"{r}={n}" for r, n in sorted(skipped.items()))

    async def stream() -> AsyncIterator[bytes]:
        for line in lines:
            yield line

    return StreamingResponse(stream(), media_type="application/x-ndjson", headers=headers)


@router.post("/purge")
async def purge(request: Request, body: PurgeBody) -> dict[str, Any]:
    """Delete stored conversations older than ``older_than_days`` now (retention on demand)."""
    deleted, cutoff = await purge_older_than_days(_pipeline(request).store, body.older_than_days)
    return {"deleted": deleted, "cutoff": cutoff.isoformat()}


async def _serve_adapter(request: Request, name: str, served: set[Any]) -> None:
    """On the embedded engine: serve the adapter directory ``name`` in its own engine, or stop
    serving one when ``name`` is the base model's (a rollback). An upstream loads its own
    adapters: on vLLM the publisher calls ``/v1/load_lora_adapter`` first."""
    adapters = request.app.state.adapters
    if adapters is None or name == adapters.name:
        if name not in served:
            raise ApiError(
                404, f"the upstream does not serve {name!r}", param="model", code="model_not_found"
            )
        return
    if name in served:
        await adapters.clear()  # the base model generates: the adapter's engine is not needed
        return
    adapters_dir = request.app.state.settings.adapters_dir
    found = (
        adapters_dir is not None
        and ADAPTER_NAME.fullmatch(name) is not None
        and await asyncio.to_thread((adapters_dir / name / "adapter_config.json").is_file)
    )
    if not found:
        raise ApiError(404, f"no adapter is named {name!r}", param="model", code="model_not_found")
    try:
        await adapters.serve(name, adapters_dir)
    except LoraExportError as exc:
        raise ApiError(422, str(exc), param="model", code="adapter_not_servable") from exc
    except EngineError as exc:
        log.error("admin: the engine with adapter %s did not start: %s", name, exc)
        raise ApiError(
            502,
            f"the engine with adapter {name!r} did not start",
            param="model",
            code="adapter_not_servable",
        ) from exc


@router.get("/adapter")
async def current_adapter(request: Request) -> dict[str, str]:
    pipeline = _pipeline(request)
    return _adapter_answer(request, pipeline)


def _adapter_answer(request: Request, pipeline: Pipeline) -> dict[str, str]:
    """The generator, the judge, and who loads adapters: ``embedded`` (this proxy's engine,
    from CONSCIENCE_ADAPTERS_DIR) or ``upstream`` (the publisher loads them into vLLM)."""
    engine = "embedded" if request.app.state.adapters is not None else "upstream"
    return {
        "model": pipeline.generator,
        "judge_model": pipeline.conscience.judge_model,
        "engine": engine,
    }


@router.post("/adapter")
async def switch_adapter(request: Request, body: AdapterBody) -> dict[str, str]:
    """Generate with another upstream model (a newly published adapter, or a rollback)."""
    pipeline = _pipeline(request)
    listing = await pipeline.client.models()
    served = {m.get("id") for m in listing.get("data", []) if isinstance(m, dict)}
    await _serve_adapter(request, body.model, served)
    pipeline.generator = body.model
    return _adapter_answer(request, pipeline)
