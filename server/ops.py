"""The operational routes: ``/v1/models``, the health probes (``/health``, ``/ready``) and
``/metrics``. The endpoints that generate have their packages (``chat``, ``completions``,
``responses``)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from conscience.errors import ConscienceError
from conscience.server.auth import require_client
from conscience.server.pipeline import Pipeline

__all__ = ["router"]

log = logging.getLogger("conscience.server")

router = APIRouter()


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


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
