"""How soon the embedded engine is idle after its client leaves.

    python -m conscience.bench.cancellation                    # SmolLM2-135M, 2 rounds
    python -m conscience.bench.cancellation --model qwen2.5-coder-1.5b-instruct --rounds 2
    python -m conscience.bench.cancellation --prompt-words 1000 --limit 60   # during prefill

Four ways of leaving a long generation (``ignore_eos``, ``--max-tokens``) once the engine is
decoding it, each timed from the close of the connection to llama.cpp's ``/metrics`` saying no
request is processed or deferred: straight to the engine, non-streamed and streamed (what
llama.cpp does by itself), and through the proxy (``stream_unary``: the proxy always streams
from the embedded engine), non-streamed and streamed. With ``--prompt-words`` the question is
that long and the client leaves ``--leave-after`` seconds after the engine took the request:
during the prompt's prefill (whose length alone, one uncancelled request, is printed first).
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


async def _leave(
    engine: EmbeddedEngine,
    url: str,
    body: dict[str, Any],
    limit_s: float,
    in_prefill_s: float | None = None,
) -> float:
    """Seconds from leaving mid-generation (or ``in_prefill_s`` after the engine took the
    request) to an idle engine (``limit_s`` if never)."""
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

        async def taken() -> bool:
            return not await idle()

        task = asyncio.create_task(send())
        if in_prefill_s is None:
            await _until(decoding, 0.05)
        else:
            await _until(taken, 0.02)
            await asyncio.sleep(in_prefill_s)
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
    p.add_argument(
        "--prompt-words", type=int, default=0, help="a question this long: leave in prefill"
    )
    p.add_argument("--leave-after", type=float, default=0.5, help="seconds into the prefill")
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    question = "Write a very long story about the sea."
    if args.prompt_words:
        line = "the harbour wall was grey and the boats came home late that evening"
        words = (line.split(" ") * (args.prompt_words // 13 + 1))[: args.prompt_words]
        question = " ".join(words) + "\n" + question
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
    }
    in_prefill = args.leave_after if args.prompt_words else None
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            upstream_url=None,
            model=args.model,
            store_url=f"{tmp}/j.sqlite3",
            engine_threads=args.threads,
            engine_ctx_size=args.max_tokens + 512 + 2 * args.prompt_words,
            upstream_timeout=600,
        )
        app = create_app(settings)
        with serve_in_thread(app) as proxy:
            engine: EmbeddedEngine = app.state.engine
            if in_prefill is not None:
                alone = httpx.post(
                    f"{engine.base_url}/chat/completions",
                    json={**body, "max_tokens": 1, "cache_prompt": False},
                    timeout=600,
                ).json()["timings"]
                print(
                    f"  the prompt alone: {alone['prompt_n']} tokens prefilled in "
                    f"{alone['prompt_ms'] / 1000:.1f} s; leaving {in_prefill} s into it"
                )
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
                    # A prompt of its own each time: nothing of it is in the prefix cache.
                    fresh = [{"role": "user", "content": f"{len(times[way])} {way}: {question}"}]
                    request = {**request, "messages": fresh}
                    left = _leave(engine, url, request, args.limit, in_prefill)
                    times[way].append(asyncio.run(left))
                    print(f"  {way}: idle {times[way][-1]:.2f} s after leaving", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print("| leaving | idle after (median s) | max s |\n|---|---|---|")
    for way, seconds in times.items():
        capped = " (the limit: never idle)" if max(seconds) >= args.limit else ""
        print(f"| {way} | {statistics.median(seconds):.2f} | {max(seconds):.2f}{capped} |")


if __name__ == "__main__":
    main()
