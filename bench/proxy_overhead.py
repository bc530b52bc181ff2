"""Proxy overhead against an instant scripted upstream, all in one run.

Three paths to the same scripted engine: direct, through the proxy with the review off, and
through the proxy with the review on (one extra judge call per request, SQLite log). Each at
concurrency 1 and 32; p50/p99 latency and requests/s, with ratios to the direct path.

    python -m conscience.bench.proxy_overhead [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from conscience.server.threaded import free_port

BODY = {"model": "gen", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


@contextmanager
def serve_module(
    args: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """A ``python -m`` server on loopback: its URL, once it answers /health, and its pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _load(url: str, concurrency: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        for _ in range(20):  # warm-up: connections, caches, JIT-free but allocator-warm
            (await http.post(url + "/v1/chat/completions", json=BODY)).raise_for_status()
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                response = await http.post(url + "/v1/chat/completions", json=BODY)
                if response.status_code != 200:
                    errors.append(response.text[:300])
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    if errors:
        print(f"  {len(errors)} of {requests} requests failed at {url}; first: {errors[0]}")
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "rps": requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    upstream_port, off_port, on_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:

        def proxy(port: int, policy: str) -> list[str]:
            return [
                "conscience.cli",
                "serve",
                "--upstream",
                f"{upstream}/v1",
                "--model",
                "gen",
                "--judge-model",
                "judge",
                "--port",
                str(port),
                "--policy",
                policy,
                "--store",
                str(Path(tmp) / f"{policy}.sqlite3"),
                "--log-level",
                "warning",
            ]

        with (
            serve_module(
                ["conscience.server.scripted", "--port", str(upstream_port)], upstream_port
            ) as (upstream, _),
            serve_module(proxy(off_port, "off"), off_port) as (off, _),
            serve_module(proxy(on_port, "rewrite"), on_port) as (on, _),
        ):
            paths = {"direct": upstream, "proxy, review off": off, "proxy, review on": on}
            print(
                f"{'path':<20} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
                f"{'p50 +ms':>8} {'rps ratio':>9}"
            )
            for concurrency in (1, 32):
                base = None
                for name, url in paths.items():
                    result = asyncio.run(_load(url, concurrency, args.requests))
                    base = base or result
                    print(
                        f"{name:<20} {concurrency:>4} {result['p50_ms']:>8.2f} "
                        f"{result['p99_ms']:>8.2f} {result['rps']:>8.0f} "
                        f"{result['p50_ms'] - base['p50_ms']:>8.2f} "
                        f"{result['rps'] / base['rps']:>9.2f}"
                    )


if __name__ == "__main__":
    main()
