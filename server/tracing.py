"""OpenTelemetry tracing of the proxy: FastAPI's server span per HTTP request and, under it,
one span per step of the pipeline (the upstream generation, the review, the rewrite, the store
commit), written here by hand in the ``Pipeline`` methods that every route shares.

Only the OpenTelemetry API is a dependency. ``install_from_env`` sets up the SDK (the ``otel``
extra) when the standard ``OTEL_*`` variables ask for an exporter; otherwise nothing is set up,
no span is started, and what is left on the request path is a header check and a few
microseconds (docs/benchmarks.md). The server span is FastAPI's own telemetry (0.143 and
later), which starts as soon as a tracer provider is installed: its parent is the W3C trace
context (``traceparent``, ``tracestate``) of the incoming request. The engine client
(``conscience.client``) injects the current span's context into every request it sends, so
the upstream's generation and the judge's calls join the caller's trace. Untraced, the proxy
is a transparent hop: the incoming context is forwarded unchanged (``PassThrough``).

Spans (names and attributes in docs/deploy.md, "Tracing"):

- ``{METHOD} {route}``, kind SERVER: the HTTP request (FastAPI's; the probes and ``/metrics``
  are left out).
- ``conscience.generate``, kind CLIENT: the upstream's chat completion (streamed or not).
- ``conscience.review``: one choice judged and the policy applied to it; its attributes say the
  framework, verdict, confidence, screen rules, judge model, policy and action.
- ``conscience.rewrite``, under the review: the ethical answer written for an unethical one.
- ``conscience.store.commit``: the judgements committed before the response is sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Receive, Scope, Send

from conscience.cascade import escalated
from conscience.errors import ConfigError
from conscience.judgement import Judgement

__all__ = [
    "PassThrough",
    "SpanKind",
    "commit_attributes",
    "current",
    "flush",
    "generation_attributes",
    "install_from_env",
    "record_failure",
    "record_generation",
    "record_judgement",
    "recording",
    "span",
    "trace_id",
    "traced_stream",
    "tracing_requested",
    "untraced",
]

log = logging.getLogger("conscience.server")

# The API's tracer: a no-op until a provider is installed (here, or by an application that
# embeds the proxy), the real one after.
_tracer = trace.get_tracer("conscience.server")
_NOTHING: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)
_EXPORTERS = {"otlp", "console", "none"}
_installed: Any = None  # the SDK TracerProvider that install_from_env set up, if any
_recording = False  # a provider is installed: decided when the app starts (install_from_env)
_PROBES = frozenset({"/health", "/ready", "/metrics"})


def recording() -> bool:
    """Whether spans are recorded: a tracer provider (the SDK's, or that of an application that
    embeds the proxy) was installed when the app started. A flag, not the API's provider lookup
    (a microsecond and more, several times a request)."""
    return _recording


def _provider_installed() -> bool:
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def current() -> Span:
    """The current span: the caller's, or a non-recording one outside a trace."""
    return trace.get_current_span()


def trace_id() -> str | None:
    """The current trace's id as W3C writes it (32 hex digits): this proxy's trace, or the
    incoming request's when the proxy does not trace; None outside any trace."""
    context_of = trace.get_current_span().get_span_context()
    return f"{context_of.trace_id:032x}" if context_of.trace_id else None


def span(
    name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[Span]:
    """A span made current for the block, or, with no provider installed, nothing at all: not
    even the API's no-op span, which would hide the incoming context that an untraced proxy
    forwards unchanged."""
    if not recording():
        return _NOTHING
    return _tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def traced_stream(
    name: str, chunks: AsyncIterator[Any], attributes: Mapping[str, Any] | None = None
) -> AsyncIterator[Any]:
    """``chunks`` under a CLIENT span that lasts until the stream ends or is closed. The span is
    current only while a chunk is awaited (a context set across a ``yield`` would leak into the
    consumer), which is when the upstream request is built and its trace context injected."""
    if not recording():
        return chunks
    return _spanned(_tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes), chunks)


async def _spanned(spanned: Span, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        while True:
            with trace.use_span(spanned):
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        spanned.end()


def record_generation(current: Span, completion: Mapping[str, Any]) -> None:
    """The upstream's answer on the generation span (GenAI semantic conventions)."""
    if not current.is_recording():
        return
    usage = completion.get("usage") or {}
    attributes = {
        "gen_ai.response.model": completion.get("model"),
        "gen_ai.response.id": completion.get("id"),
        "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
    }
    current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def generation_attributes(model: str) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}


def record_judgement(current: Span, judgement: Judgement) -> None:
    """The review's outcome on its span: what a trace reader looks for first."""
    if not current.is_recording():
        return
    attributes: dict[str, Any] = {
        "conscience.framework": judgement.framework,
        "conscience.verdict": judgement.verdict.value,
        "conscience.judge_model": judgement.judge_model,
        "conscience.layout": judgement.layout,
        "conscience.judgement_id": judgement.id,
    }
    if judgement.confidence is not None:
        attributes["conscience.confidence"] = judgement.confidence
    if judgement.screen:
        attributes["conscience.screen_rules"] = list(judgement.screen)
    if judgement.readings:  # a second opinion was configured: was it asked?
        attributes["conscience.second_opinion"] = escalated(judgement.readings)
    if judgement.action is not None:
        attributes["conscience.action"] = judgement.action.value
    current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def record_failure(current: Span, exc: BaseException) -> None:
    """A failure the pipeline handled (fail-open, a rewrite that became a block) on its span."""
    if current.is_recording():
        current.record_exception(exc)
        current.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def commit_attributes(store: object, count: int) -> dict[str, Any]:
    system = "postgresql" if type(store).__module__.endswith("postgres") else "sqlite"
    return {"db.system.name": system, "conscience.judgements": count}


# --- set-up from the environment


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def _exporters(environ: Mapping[str, str]) -> list[str]:
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return [e.strip() for e in named.split(",") if e.strip()]


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an exporter named in
    ``OTEL_TRACES_EXPORTER`` (other than ``none``) or an OTLP endpoint, and the SDK not disabled
    (``OTEL_SDK_DISABLED=true``). The SDK's own default exporter (OTLP to localhost) is not
    assumed: with none of them set the proxy does not trace."""
    environ = os.environ if environ is None else environ
    if _flag(environ, "OTEL_SDK_DISABLED"):
        return False
    exporters = _exporters(environ)
    if exporters:
        return exporters != ["none"]
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def _span_exporters(environ: Mapping[str, str]) -> Sequence[Any]:
    named = [e for e in _exporters(environ) or ["otlp"] if e != "none"]
    unknown = sorted(set(named) - _EXPORTERS)
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)} "
            "(this proxy knows otlp, console, none)"
        )
    found = []
    for name in dict.fromkeys(named):
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            found.append(ConsoleSpanExporter())
            continue
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        elif protocol == "grpc":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise ConfigError(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc"
                    " installed; the otel extra exports http/protobuf (port 4318)"
                ) from exc
        else:
            raise ConfigError(
                f"OTLP protocol {protocol!r} is not supported: use http/protobuf (or grpc with"
                " opentelemetry-exporter-otlp-proto-grpc installed)"
            )
        found.append(OTLPSpanExporter())
    return found


def install_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Set up the SDK as the ``OTEL_*`` variables say, once per process; whether spans are
    recorded now. Nothing is set up when they ask for no traces, or when an application that
    embeds the proxy installed its own provider (its provider is used). The exporter, sampler,
    resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; service.name defaults to
    ``conscience``) and batching (``OTEL_BSP_*``) are the SDK's, read from the same variables.
    ``ConfigError`` when tracing is asked for and the ``otel`` extra is not installed.
    """
    global _installed, _recording
    environ = os.environ if environ is None else environ
    if _provider_installed():
        _recording = True  # ours, installed by an earlier app of this process, or the host's
        return True
    if not tracing_requested(environ):
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            "the OTEL_* variables ask for traces, but the OpenTelemetry SDK is not installed:"
            " pip install 'conscience[otel]'"
        ) from exc
    exporters = _span_exporters(environ)
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "conscience"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _installed, _recording = provider, True
    log.info(
        "tracing: exporting spans (%s) as service %s",
        ", ".join(type(e).__name__ for e in exporters),
        resource.attributes.get(SERVICE_NAME),
    )
    return True


def flush(timeout_millis: int = 5000) -> None:
    """Export the spans still batched (at shutdown); nothing when this module set nothing up."""
    if _installed is not None:
        _installed.force_flush(timeout_millis)


# --- the server span and the incoming context


def untraced(scope: Scope) -> bool:
    """The requests FastAPI's telemetry leaves out: the probes and the metrics scrape, which
    would otherwise be most of the traces."""
    return scope.get("path") in _PROBES


class _AsgiHeaders(Getter[Scope]):
    """Reads the W3C headers from an ASGI scope (names arrive lower-cased)."""

    def get(self, carrier: Scope, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        found = [value.decode("latin-1") for n, value in carrier["headers"] if n == name]
        return found or None

    def keys(self, carrier: Scope) -> list[str]:
        return [n.decode("latin-1") for n, _ in carrier["headers"]]


_GETTER = _AsgiHeaders()


class PassThrough:
    """ASGI middleware for the untraced proxy: the caller's trace context, when it sent one, is
    made current for the request, so that the engine client forwards it unchanged. With a
    provider installed FastAPI's own telemetry has already made its server span current (and
    its parent the caller's), and this passes the request on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._fields = {f.encode("latin-1") for f in propagate.get_global_textmap().fields}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or recording()
            or not any(name in self._fields for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        token = context.attach(propagate.extract(scope, getter=_GETTER))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
