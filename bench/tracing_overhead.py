"""What tracing costs a reviewed request: the proxy untraced (no OTEL_* variables) and traced
(OTLP/HTTP to a collector that discards), against an instant scripted upstream.

Four paths, in interleaved rounds so that drift on a shared machine hits them alike: untraced
without and with a ``traceparent`` from the caller (then forwarded unchanged), traced without
and with one. Concurrency 1, one review per request (policy rewrite, ethical answers: generate,
review, store commit). Latency (p50, per path and per round) and the proxy process's own CPU
time per request (user + system, every thread: the traced proxy's exporter included), which a
busy machine disturbs far less than latency. Then the untraced path's own additions, timed
in-process per request: the middleware's header check, the pipeline's span calls that start
nothing, and the trace headers the engine client injects (two upstream calls).

    python -m conscience.bench.tracing_overhead [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
import timeit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from conscience.bench.proxy_overhead import BODY, cpu_seconds, serve_module
from conscience.server import tracing
from conscience.server.threaded import free_port

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Discard(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts every export and keeps nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _latencies(http: httpx.Client, url: str, requests: int, headers: dict[str, str]) -> list[float]:
    found = []
    for _ in range(requests):
        started = time.perf_counter()
        response = http.post(url + "/v1/chat/completions", json=BODY, headers=headers)
        response.raise_for_status()
        found.append(time.perf_counter() - started)
    return found


def _drive(coroutine: Any) -> None:
    """Run a coroutine that never waits, without an event loop."""
    with contextlib.suppress(StopIteration):
        coroutine.send(None)


def _untraced_additions(repeat: int = 200_000) -> float:
    """Microseconds the untraced proxy adds to a request: what server/tracing.py and the
    client's ``inject`` run when no provider is installed, in the numbers one request has."""
    from starlette.types import Receive, Scope, Send

    from conscience.client import _trace_headers

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    middleware = tracing.PassThrough(app)
    scope = {"type": "http", "headers": [(b"host", b"x"), (b"content-type", b"json")] * 4}

    def one_request() -> None:
        _drive(middleware(scope, None, None))  # type: ignore[arg-type]
        for name in ("conscience.generate", "conscience.review", "conscience.store.commit"):
            with tracing.span(name) as span:
                tracing.record_judgement(span, None)  # type: ignore[arg-type]
        _trace_headers()
        _trace_headers()

    def nothing() -> None:
        async def bare(scope: Scope, receive: Receive, send: Send) -> None:
            return await app(scope, receive, send)

        _drive(bare(scope, None, None))  # type: ignore[arg-type]

    assert not tracing.recording()
    spent = min(timeit.repeat(one_request, number=repeat, repeat=3))
    baseline = min(timeit.repeat(nothing, number=repeat, repeat=3))
    return (spent - baseline) / repeat * 1e6


def _traced_additions(collector: str, repeat: int = 5000) -> float:
    """Microseconds of CPU (every thread: the batch exporter's included) one traced request's
    spans cost in-process: a server span like FastAPI's, with the caller's context as parent,
    the pipeline's generate, review and store-commit spans with their attributes, the trace
    headers of two upstream calls, and their export (OTLP/HTTP protobuf to ``collector``).
    Installs the SDK in this process: run it last."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    from conscience.client import _trace_headers
    from conscience.judgement import Judgement
    from conscience.labels import Action, Verdict

    os.environ.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BSP_MAX_QUEUE_SIZE": str(8 * repeat),  # nothing dropped: all of it exported
        }
    )
    assert tracing.install_from_env()
    tracer = trace.get_tracer("bench")
    carrier = {"traceparent": TRACEPARENT}
    server = {"http.request.method": "POST", "url.path": "/v1/chat/completions"}
    completion = {"model": "gen", "id": "chatcmpl-1", "usage": {"prompt_tokens": 10}}
    judgement = Judgement(
        framework="three-laws",
        layout="paper",
        messages=BODY["messages"],
        answer="4",
        verdict=Verdict.ETHICAL,
        confidence=0.9,
        judge_model="judge",
        action=Action.PASSED,
    )
    review = {"conscience.policy": "rewrite", "conscience.request_id": "req_1"}

    def one_request() -> None:
        parent = propagate.extract(carrier)
        with tracer.start_as_current_span(
            "POST /v1/chat/completions", context=parent, kind=SpanKind.SERVER, attributes=server
        ):
            attributes = tracing.generation_attributes("gen")
            with tracing.span("conscience.generate", SpanKind.CLIENT, attributes) as span:
                _trace_headers()
                tracing.record_generation(span, completion)
            with tracing.span("conscience.review", attributes=review) as span:
                _trace_headers()
                tracing.record_judgement(span, judgement)
            with tracing.span(
                "conscience.store.commit", attributes=tracing.commit_attributes(None, 1)
            ):
                pass

    for _ in range(200):
        one_request()  # warm-up
    tracing.flush()
    started = time.process_time()
    for _ in range(repeat):
        one_request()
    tracing.flush(60_000)
    return (time.process_time() - started) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
        "OTEL_SERVICE_NAME": "conscience-bench",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: each batch is exported within its own round
    }
    upstream_port, off_port, on_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:

        def proxy(port: int, name: str) -> list[str]:
            return [
                *("conscience.cli", "serve", "--upstream", f"{upstream}/v1", "--model", "gen"),
                *("--judge-model", "judge", "--port", str(port), "--policy", "rewrite"),
                *("--store", str(Path(tmp) / f"{name}.sqlite3"), "--log-level", "warning"),
            ]

        scripted = ["conscience.testing.scripted", "--port", str(upstream_port)]
        untraced_env = {"OTEL_SDK_DISABLED": "true"}  # whatever the calling shell exports
        with (
            serve_module(scripted, upstream_port, {}) as (upstream, _),
            serve_module(proxy(off_port, "off"), off_port, untraced_env) as off,
            serve_module(proxy(on_port, "on"), on_port, otel) as on,
        ):
            paths = {
                "untraced": (off, {}),
                "untraced, traceparent": (off, {"traceparent": TRACEPARENT}),
                "traced": (on, {}),
                "traced, traceparent": (on, {"traceparent": TRACEPARENT}),
            }
            found: dict[str, list[float]] = {name: [] for name in paths}
            rounds: dict[str, list[float]] = {name: [] for name in paths}  # each round's p50
            cpu: dict[str, float] = dict.fromkeys(paths, 0.0)  # the proxy's CPU seconds
            with httpx.Client(timeout=30) as http:
                for (url, _pid), headers in paths.values():
                    _latencies(http, url, 50, headers)  # warm-up
                for _ in range(args.rounds):
                    for name, ((url, pid), headers) in paths.items():
                        before = cpu_seconds(pid)
                        latencies = _latencies(http, url, args.requests, headers)
                        time.sleep(0.3)  # the traced proxy's export of this round is done
                        cpu[name] += cpu_seconds(pid) - before
                        found[name] += latencies
                        rounds[name].append(statistics.median(latencies) * 1000)
    collector.shutdown()
    base = statistics.median(found["untraced"]) * 1000
    total = args.requests * args.rounds
    print(f"{'path':<24} {'p50 ms':>8} {'p50 +ms':>8} {'CPU ms/req':>10}  rounds' p50 ms")
    for name, latencies in found.items():
        p50 = statistics.median(latencies) * 1000
        spread = " ".join(f"{r:.2f}" for r in rounds[name])
        per_request = cpu[name] / total * 1000
        print(f"{name:<24} {p50:>8.3f} {p50 - base:>+8.3f} {per_request:>10.3f}  {spread}")
    print(f"untraced additions per request, in-process: {_untraced_additions():.2f} µs")
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    traced = _traced_additions(f"http://127.0.0.1:{collector.server_address[1]}")
    print(f"traced spans and their export per request, in-process: {traced:.0f} µs CPU")
    collector.shutdown()


if __name__ == "__main__":
    main()
