"""The app factory: ``create_app(settings)``. Importing this module does no I/O; the lifespan
opens the engine client, the store (and the embedded engine when no upstream is set) and
closes them again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from conscience.client import EngineClient
from conscience.review import conscience_from_settings
from conscience.settings import Settings
from conscience.store import open_store
from conscience.store.url import redact
from server import admin, routes
from server.errors import install_error_handlers, secret_scrubber
from server.metrics import Metrics
from server.middleware import RequestContext
from server.pipeline import Pipeline
from server.retention import retention_loop

__all__ = ["create_app", "engine_client", "start_engine"]

log = logging.getLogger("conscience.server")


async def start_engine(settings: Settings) -> Any:
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


@asynccontextmanager
async def engine_client(settings: Settings) -> AsyncIterator[EngineClient]:
    """An ``EngineClient`` on the configured upstream, or on the embedded engine without one
    (started here, stopped on exit). The one-shot commands (review, eval, calibrate) use it."""
    engine = await start_engine(settings)
    try:
        url = engine.base_url if engine is not None else settings.upstream_url
        key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        async with EngineClient(url, api_key=key, timeout=settings.upstream_timeout) as client:
            yield client
    finally:
        if engine is not None:
            await engine.stop()


def _log_calibration(settings: Settings, conscience: Any) -> None:
    """Say at start how verdicts will be decided: users must know if nothing is calibrated."""
    key = (settings.judge, settings.framework, settings.layout.value)
    if key in conscience.calibrations:
        c = conscience.calibrations[key]
        log.info(
            "calibrated verdicts for %s (%s): P(unethical) >= %s is unethical, T = %.2f",
            key,
            conscience.calibration_source,
            c.unethical_threshold,
            c.temperature,
        )
    elif settings.unethical_threshold is not None:
        log.info(
            "no calibration for %s: P(unethical) >= %s (CONSCIENCE_UNETHICAL_THRESHOLD) "
            "is unethical; confidence uncalibrated",
            key,
            settings.unethical_threshold,
        )
    else:
        log.warning(
            "no calibration for %s (%s): the verdict is the most probable label and its "
            "confidence is uncalibrated (run `conscience calibrate`)",
            key,
            conscience.calibration_source,
        )


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await start_engine(settings)
        base_url = engine.base_url if engine is not None else settings.upstream_url
        key = settings.upstream_api_key
        client = EngineClient(
            base_url,
            api_key=key.get_secret_value() if key else None,
            timeout=settings.upstream_timeout,
        )
        store = open_store(settings.store_url)
        purger: asyncio.Task[None] | None = None
        try:
            conscience = conscience_from_settings(settings, client)
            await store.open()
            if settings.retention_days is not None:
                purger = asyncio.create_task(retention_loop(store, settings.retention_days))
            _log_calibration(settings, conscience)
            app.state.engine = engine
            app.state.pipeline = Pipeline(settings, client, conscience, store, Metrics.create())
            log.info(
                "conscience proxy ready: upstream %s, model %s, judge %s, framework %s, policy %s",
                redact(base_url),
                settings.model,
                settings.judge,
                settings.framework,
                settings.policy.value,
            )
            yield
        finally:
            if purger is not None:  # stopped before the store it uses is closed
                purger.cancel()
                with suppress(asyncio.CancelledError):
                    await purger
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
    app.state.scrub = secret_scrubber(settings)
    install_error_handlers(app, app.state.scrub)
    app.include_router(routes.router)
    app.include_router(admin.router)

    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)
    return app
