"""The app factory: ``create_app(settings)``. Importing this module does no I/O; the lifespan
opens the engine client, the store (and the embedded engine when no upstream is set) and
closes them again."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from conscience.client import EngineClient
from conscience.review import conscience_from_settings
from conscience.settings import Settings
from conscience.store import open_store
from server import admin, routes
from server.errors import error_response, install_error_handlers
from server.metrics import Metrics
from server.pipeline import Pipeline

__all__ = ["create_app"]

log = logging.getLogger("conscience.server")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def _start_engine(settings: Settings) -> Any:
    """The embedded llama.cpp engine serving ``settings.model``; None when an upstream is set."""
    if settings.upstream_url is not None:
        return None
    from conscience.models import model_path
    from server.engine import EmbeddedEngine

    path = model_path(settings.model, settings.model_cache_dir)
    engine = EmbeddedEngine(
        path,
        threads=settings.engine_threads,
        ctx_size=settings.engine_ctx_size,
        model_alias=settings.model,
    )
    await engine.start()
    return engine


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await _start_engine(settings)
        base_url = engine.base_url if engine is not None else settings.upstream_url
        key = settings.upstream_api_key
        client = EngineClient(
            base_url,
            api_key=key.get_secret_value() if key else None,
            timeout=settings.upstream_timeout,
        )
        store = open_store(settings.store_url)
        try:
            conscience = conscience_from_settings(settings, client)
            await store.open()
            app.state.engine = engine
            app.state.pipeline = Pipeline(settings, client, conscience, store, Metrics.create())
            log.info(
                "conscience proxy ready: upstream %s, model %s, judge %s, framework %s, policy %s",
                base_url,
                settings.model,
                settings.judge,
                settings.framework,
                settings.policy.value,
            )
            yield
        finally:
            await store.close()
            await client.aclose()
            if engine is not None:
                await engine.stop()

    app = FastAPI(
        title="conscience",
        version="0.1.0",
        lifespan=lifespan,
        summary="OpenAI-compatible guardrail proxy with a self-reviewing conscience",
    )
    app.state.settings = settings
    app.state.engine = None
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(admin.router)

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else "req_" + uuid.uuid4().hex
        request.state.request_id = request_id
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            response: Response = error_response(
                413,
                f"request body larger than {settings.max_body_bytes} bytes",
                code="request_too_large",
            )
        else:
            started = time.perf_counter()
            response = await call_next(request)
            log.info(
                "%s %s %s %.1fms",
                request.method,
                request.url.path,
                response.status_code,
                (time.perf_counter() - started) * 1000,
                extra={"request_id": request_id},
            )
        response.headers["X-Request-ID"] = request_id
        pipeline = getattr(request.app.state, "pipeline", None)
        if pipeline is not None:
            pipeline.metrics.requests.labels(
                request.url.path if response.status_code != 404 else "unknown",
                str(response.status_code),
            ).inc()
        return response

    return app
