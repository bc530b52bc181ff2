"""How soon the embedded engine is idle after its client leaves (issue 16, item 3).

    python -m conscience.bench.cancellation                    # SmolLM2-135M, 2 rounds
    python -m conscience.bench.cancellation --model qwen2.5-coder-1.5b-instruct --rounds 2

Three ways of leaving a long generation (``ignore_eos``, ``--max-tokens``) once the engine is
decoding it, each timed from the close of the connection to llama.cpp's ``/metrics`` saying no
request is processed or deferred: straight to the engine, non-streamed and streamed (what
llama.cpp does by itself), and through the proxy (``stream_unary``: the proxy always streams
from the embedded engine), non-streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from conscience.engine.embedded import EmbeddedEngine, busy, metrics
from conscience.server.app import create_app
from conscience.server.threaded import serve_in_thread
from conscience.settings import Settings

__all__ = ["main"]


async def _leave(engine: EmbeddedEngine, url: str, body: dict[str, Any], limit_s: float) -> float:
    """Seconds from leaving mid-generation to an idle engine (``limit_s`` if never)."""
    async with httpx.AsyncClient(timeout=600) as client, httpx.AsyncClient(timeout=30) as probe:

        async def idle() -> bool:
            return not busy(await metrics(probe, engine.url))

        await _until(idle, 0.2)  # the previous way's abandoned work, if any
        decoded = (await metrics(probe, engine.url))["n_decode_total"]

        async def decoding() -> bool:
            return (await metrics(probe, engine.url))["n_decode_total"] >= decoded + 8

        async def send() -> None:
            if body.get("stream"):
                async with client.stream("POST", url, json=body) as response:
                    async for _ in response.aiter_bytes():
                        pass
            else:
                await client.post(url, json=body)

        task = asyncio.create_task(send())
        await _until(decoding, 0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        left = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                await _until(idle, 0.02)
        return min(limit_s, time.monotonic() - left)


async def _until(check: Callable[[], Awaitable[bool]], period: float) -> None:
    while True:
        if await check():
            return
        await asyncio.sleep(period)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a packaged model or GGUF")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=400, help="the abandoned generation")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--limit", type=float, default=5.0, help="seconds waited for idle at most")
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
    }
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            upstream_url=None,
            model=args.model,
            store_url=f"{tmp}/j.sqlite3",
            engine_threads=args.threads,
            engine_ctx_size=args.max_tokens + 512,
            upstream_timeout=600,
        )
        app = create_app(settings)
        with serve_in_thread(app) as proxy:
            engine: EmbeddedEngine = app.state.engine
            ways = {
                "engine, non-streamed": (engine.base_url, {**body, "stream": False}),
                "engine, streamed": (engine.base_url, {**body, "stream": True}),
                "proxy, non-streamed": (f"{proxy}/v1", {**body, "stream": False}),
                "proxy, streamed": (f"{proxy}/v1", {**body, "stream": True}),
            }
            times: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(args.rounds):
                for way, (base, request) in ways.items():
                    url = f"{base}/chat/completions"
                    times[way].append(asyncio.run(_leave(engine, url, request, args.limit)))
                    print(f"  {way}: idle {times[way][-1]:.2f} s after leaving", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("| leaving | idle after (median s) | max s |\n|---|---|---|")
    for way, seconds in times.items():
        capped = " (the limit: never idle)" if max(seconds) >= args.limit else ""
        print(f"| {way} | {statistics.median(seconds):.2f} | {max(seconds):.2f}{capped} |")


if __name__ == "__main__":
    main()
