"""Several users of the default stack at once.

    python -m conscience.bench.concurrency --requests 2                   # 1, 2 and 4 users
    python -m conscience.bench.concurrency --requests 4 --parallel 1      # one slot, to compare

The default stack: the proxy with the embedded engine serving the default model, the review
on (the default judge method and policy), slots as ``CONSCIENCE_ENGINE_PARALLEL`` or the
machine's default (``engine/connect.py default_parallel``) unless ``--parallel``. Each user
sends ``--requests`` chat completions one after another (``ignore_eos`` and ``--max-tokens``,
so every answer is as long); a level's users start together. Reported per level: aggregate
answer tokens/s (all answers' tokens over the level's wall time, review included), and p50,
p99 and max latency: a starved request (one that waited while others were served) shows as a
max far above the p50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import httpx

from conscience.server.app import create_app
from conscience.server.threaded import serve_in_thread
from conscience.settings import Settings

__all__ = ["main"]


@dataclass
class Level:
    users: int
    wall_s: float
    latencies: list[float]
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _user(
    client: httpx.AsyncClient, url: str, user: int, args: argparse.Namespace
) -> list[tuple[float, int]]:
    done = []
    for n in range(args.requests):
        body = {
            "model": "default",
            "messages": [
                {
                    "role": "user",
                    "content": f"User {user}, task {n}: write a Python function "
                    "that merges two sorted lists, with a docstring.",
                }
            ],
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "ignore_eos": True,  # every answer as long: the levels compare the same work
        }
        started = time.monotonic()
        reply = await client.post(f"{url}/v1/chat/completions", json=body)
        reply.raise_for_status()
        done.append((time.monotonic() - started, reply.json()["usage"]["completion_tokens"]))
    return done


async def _level(url: str, users: int, args: argparse.Namespace) -> Level:
    async with httpx.AsyncClient(timeout=None) as client:  # the work is bounded by max_tokens
        started = time.monotonic()
        results = await asyncio.gather(*(_user(client, url, u, args) for u in range(users)))
        wall = time.monotonic() - started
    latencies = [s for user in results for s, _ in user]
    tokens = sum(t for user in results for _, t in user)
    return Level(users, wall, latencies, tokens)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2, help="requests per user per level")
    p.add_argument("--max-tokens", type=int, default=48, help="tokens of each answer")
    p.add_argument("--users", default="1,2,4", help="the levels, comma-separated")
    p.add_argument("--parallel", type=int, default=None, help="engine slots (default: the rule)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            upstream_url=None,
            store_url=f"{tmp}/j.sqlite3",
            engine_parallel=args.parallel,
            engine_threads=args.threads,
            upstream_timeout=900,
        )
        app = create_app(settings)
        with serve_in_thread(app) as url:
            engine = app.state.engine
            print(f"model {settings.model}, {engine.parallel} slots, load {os.getloadavg()}")
            warm = argparse.Namespace(**{**vars(args), "requests": 1, "max_tokens": 4})
            asyncio.run(_level(url, 1, warm))  # pages in the model, caches the judge's header
            levels = []
            for users in (int(u) for u in args.users.split(",")):
                levels.append(asyncio.run(_level(url, users, args)))
                print(f"  {users} users: {levels[-1].tokens_per_s:.2f} tok/s", flush=True)
    print(f"load average {os.getloadavg()} at the end")
    one = levels[0].tokens_per_s
    print("| users | requests | answer tok/s | vs one user | p50 s | p99 s | max s |")
    print("|---|---|---|---|---|---|---|")
    for level in levels:
        print(
            f"| {level.users} | {len(level.latencies)} | {level.tokens_per_s:.2f} "
            f"| {level.tokens_per_s / one:.2f} | {statistics.median(level.latencies):.1f} "
            f"| {level.percentile(0.99):.1f} | {max(level.latencies):.1f} |"
        )


if __name__ == "__main__":
    main()
