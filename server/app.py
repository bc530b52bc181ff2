"""The app factory: ``create_app(settings)``. Importing this module does no I/O; the lifespan
opens the engine client, the store (and the embedded engine when no upstream is set) and
closes them again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from conscience.engine.connect import open_engine
from conscience.errors import ConfigError
from conscience.labels import Layout
from conscience.probe_history import ProbeHistory
from conscience.review import Conscience, conscience_from_settings
from conscience.server import (
    admin,
    console,
    ops,
    passthrough,
    probe_admin,
    review_only,
    tracing,
)
from conscience.server.cancellation import Cancellation
from conscience.server.chat import router as chat
from conscience.server.completions import router as completions
from conscience.server.errors import install_error_handlers, secret_scrubber
from conscience.server.metrics import Metrics
from conscience.server.middleware import RequestContext
from conscience.server.pipeline import Pipeline
from conscience.server.responses import router as responses
from conscience.server.retention import retention_loop
from conscience.settings import Settings
from conscience.store import open_store
from conscience.store.url import redact

__all__ = ["create_app"]

log = logging.getLogger("conscience.server")


def _log_calibration(settings: Settings, conscience: Any) -> None:
    """Say at start how verdicts will be decided: users must know if nothing is calibrated."""
    layout = conscience.asked_in(settings.framework)
    if layout != settings.layout:
        log.warning(
            "the %s layout's one-line question is for a probe, and none reads %s for %s:"
            " its reviews are asked in the %s layout",
            settings.layout.value,
            settings.framework,
            settings.judge,
            layout.value,
        )
    key = (settings.judge, settings.framework, layout.value)
    if conscience.probes:
        covered = ", ".join(f"{framework}/{laid}" for _, framework, laid in conscience.probes)
        probe = conscience.probe_for(settings.framework)
        if probe is not None:
            log.info(
                "probe verdicts for %s (%s, which covers %s): P(unethical) >= %.3f of the "
                "judge's hidden state is unethical; other frameworks are judged as follows",
                key,
                conscience.probe_source,
                covered,
                probe.threshold,
            )
            log.info(
                "the probe reads the judge's state %s",
                "through the engine's output layer, reusing its prefix cache"
                if conscience.probe_read == "logits"
                else "from /v1/embeddings (every prompt prefilled whole)",
            )
            if Layout(probe.layout).follows_up:
                log.info(
                    "the follow-up layout: a review reads the answer as the judge's own last"
                    " turn, from the cache of the generation that wrote it (faster; the probe"
                    ' reads worse there: docs/decisions.md, "The judge\'s own turn")'
                )
            _log_second_opinion(settings, conscience)
            fitted_read = probe.fitted.get("read", "embeddings")  # files from before: embeddings
            if fitted_read != conscience.probe_read:
                log.warning(
                    "the probe was fitted on states read through %s and reads them through %s"
                    " here: its threshold may not hold (fit it on this engine: conscience"
                    " fit probe)",
                    fitted_read,
                    conscience.probe_read,
                )
        else:
            log.warning(
                "the %s covers %s, not %s: it is judged as follows",
                conscience.probe_source,
                covered,
                key,
            )
    # The label calibration decides the reviews no probe reads: in the brief layout, those are
    # asked in the paper layout (Conscience.asked_in).
    calibrated = (settings.judge, settings.framework, settings.layout.without_probe.value)
    if calibrated in conscience.calibrations:
        c = conscience.calibrations[calibrated]
        log.info(
            "calibrated verdicts for %s (%s): P(unethical) >= %s is unethical, T = %.2f",
            calibrated,
            conscience.calibration_source,
            c.unethical_threshold,
            c.temperature,
        )
    elif settings.unethical_threshold is not None:
        log.info(
            "no calibration for %s: P(unethical) >= %s (CONSCIENCE_UNETHICAL_THRESHOLD) "
            "is unethical; confidence uncalibrated",
            calibrated,
            settings.unethical_threshold,
        )
    else:
        log.warning(
            "no calibration for %s (%s): the verdict is the most probable label and its "
            "confidence is uncalibrated (run `conscience fit calibration`)",
            calibrated,
            conscience.calibration_source,
        )


def _log_second_opinion(settings: Settings, conscience: Any) -> None:
    """Say whether a second opinion backs the first probe, and where it is asked."""
    if conscience.second_opinion is None:
        return
    band = conscience.band_for(settings.framework)
    if band is None:
        log.warning(
            "no band of doubt for %s/%s then %s (%s): no second opinion is asked",
            settings.framework,
            settings.layout.value,
            conscience.second_opinion.value,
            conscience.band_source,
        )
        return
    log.info(
        "a second opinion in the %s layout where the first probe's P(unethical) is in"
        " [%.3f, %.3f) (%s; it escalated %.0f%% of the items it was measured on)",
        band.then,
        band.lo,
        band.hi,
        conscience.band_source,
        100 * float(band.fitted.get("measured", {}).get("escalated", float("nan"))),
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def _check_key_policies(settings: Settings, conscience: Conscience) -> None:
    """A client key's framework must exist (said at start, not at its first request)."""
    for key, chosen in settings.key_policies.items():
        if chosen.framework is not None and chosen.framework not in conscience.frameworks:
            known = ", ".join(sorted(conscience.frameworks))
            raise ConfigError(
                f"CONSCIENCE_KEY_POLICIES: {key}'s framework {chosen.framework!r} is unknown"
                f" (known: {known})"
            )
    if settings.key_policies:
        log.info("own policies for %d client keys", len(settings.key_policies))


def _probe_history(settings: Settings, conscience: Conscience) -> ProbeHistory | None:
    """Where a probe judges: the probes served since the first start (a published refit is
    judged with again after a restart, conscience/probe_history.py); else None."""
    if conscience.probe_read is None:
        return None
    configured = dict(conscience.probes)
    history = ProbeHistory(settings.probes_dir, configured, conscience.probe_source or "?")
    probes, source = history.active
    if probes is not configured:
        conscience.use_probes(dict(probes), source)
    if settings.probes_dir is None:
        log.info("a probe published to this proxy is kept until it stops (no probes directory)")
    return history


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if tracing.install_from_env():  # the OTEL_* variables (docs/deploy.md, "Tracing")
                stack.callback(tracing.flush)  # the last spans, after everything else closed
            engine = await stack.enter_async_context(open_engine(settings))
            client = engine.client
            store = open_store(settings.store_url)
            conscience = conscience_from_settings(settings, client, engine.facts)
            await store.open()
            stack.push_async_callback(store.close)
            if settings.retention_days is not None:
                purger = asyncio.create_task(retention_loop(store, settings.retention_days))
                stack.push_async_callback(_cancel, purger)  # stopped before the store it uses
            _check_key_policies(settings, conscience)
            app.state.probe_history = _probe_history(settings, conscience)
            _log_calibration(settings, conscience)
            app.state.engine = engine.embedded
            app.state.adapters = engine.adapters
            app.state.pipeline = Pipeline(
                settings, client, conscience, store, Metrics.create(), app.state.scrub
            )
            if engine.adapter is not None:  # the embedded engine serves CURRENT's adapter
                app.state.pipeline.generator = engine.adapter
                log.info("generating with adapter %s (recorded in CURRENT)", engine.adapter)
            log.info(
                "conscience proxy ready: upstream %s, model %s, judge %s, framework %s, policy %s",
                redact(client.base_url),
                settings.model,
                settings.judge,
                settings.framework,
                settings.policy.value,
            )
            yield

    app = FastAPI(
        title="conscience",
        version="0.1.0",
        lifespan=lifespan,
        summary="OpenAI-compatible guardrail proxy with a self-reviewing conscience",
        # FastAPI's server span, once a tracer provider is installed (server/tracing.py); the
        # pipeline's spans are its children, without FastAPI's per-operation ones between.
        telemetry={"operation_spans": False, "exclude": tracing.untraced},
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.adapters = None  # the embedded engine's published adapter (engine/adapters.py)
    app.state.scrub = secret_scrubber(settings)
    install_error_handlers(app, app.state.scrub)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(completions.router)
    app.include_router(ops.router)
    app.include_router(admin.router)
    app.include_router(probe_admin.router)
    app.include_router(review_only.router)
    console.install(app)  # the operator's console at /ui/
    passthrough.install(app)  # every other /v1 route: the fallback, after all routes

    # Inside RequestContext, so that a cancelled request is logged and counted with its status.
    app.add_middleware(Cancellation, timeout=settings.request_timeout)
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(tracing.PassThrough)  # untraced: the caller's trace context, forwarded
    return app
