"""Time to first token of the two streaming modes against the unguarded upstream.

A scripted upstream streams a 120-word answer at 20 ms a word (2.4 s) and takes 150 ms per
review. Three paths: the upstream directly (unguarded), the proxy buffered (generate, review,
then stream) and the proxy incremental (review growing windows, release what passed).

    python -m conscience.bench.stream_ttft [--requests 5] [--window 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from conscience.bench.proxy_overhead import serve_module
from conscience.server.threaded import free_port

BODY = {"model": "gen", "stream": True, "messages": [{"role": "user", "content": "Tell me."}]}


def _measure(url: str) -> tuple[float, float]:
    """Seconds to the first content and to the end of one streamed completion."""
    started = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/chat/completions", json=BODY, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and '"content": "word' in line.replace('":"', '": "'):
                first = time.perf_counter() - started
    return first or float("nan"), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--window", type=int, default=200, help="incremental window, chars")
    args = parser.parse_args()
    ports = [free_port() for _ in range(3)]
    upstream_cmd = [
        "conscience.testing.scripted",
        "--port",
        str(ports[0]),
        "--words",
        "120",
        "--stream-delay",
        "0.02",
        "--review-latency",
        "0.15",
    ]
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_module(upstream_cmd, ports[0]) as (upstream, _),
    ):

        def proxy(port: int, mode: str) -> list[str]:
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
                "--stream-mode",
                mode,
                "--store",
                str(Path(tmp) / f"{mode}.sqlite3"),
                "--log-level",
                "warning",
            ]

        env_window = {"CONSCIENCE_STREAM_WINDOW_CHARS": str(args.window)}
        with (
            serve_module(proxy(ports[1], "buffered"), ports[1]) as (buffered, _),
            serve_module(proxy(ports[2], "incremental"), ports[2], env_window) as (incremental, _),
        ):
            paths = {
                "upstream (unguarded)": upstream,
                "proxy buffered": buffered,
                "proxy incremental": incremental,
            }
            print(f"{'path':<22} {'TTFT s':>8} {'total s':>8} {'TTFT ratio':>10}")
            base = None
            for name, url in paths.items():
                runs = [_measure(url) for _ in range(args.requests)]
                ttft = statistics.median(r[0] for r in runs)
                total = statistics.median(r[1] for r in runs)
                base = base or ttft
                print(f"{name:<22} {ttft:>8.3f} {total:>8.3f} {ttft / base:>10.1f}")


if __name__ == "__main__":
    main()
