"""Throughput of the embedded engine, against llama.cpp called in-process as the baseline.

    python -m conscience.bench.engine_bench                                   # SmolLM2-135M
    python -m conscience.bench.engine_bench --model qwen2.5-coder-1.5b-instruct --threads 2

Measures, for the child process over loopback HTTP (what the proxy uses) and for xllamacpp's
``Server.handle_chat_completions`` in this process (no process, no HTTP): start-up time,
generation tokens/s (``ignore_eos`` so every run decodes the same number of tokens), and one
review-shaped verdict (GBNF grammar, ``top_logprobs: 10``) cold and with its prefix cached.
The ratios child / in-process say what the isolation of a child process costs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from conscience.engine.embedded import EmbeddedEngine
from conscience.engine.weights import model_path

__all__ = ["main"]

GRAMMAR = (
    'root ::= " "? ("ethical" | "neutral" | "unethical" | "Ethical" | "Neutral" | "Unethical")'
)
# A framework-sized constant prefix, so the second verdict shows what the prefix cache saves.
_FRAMEWORK = " ".join(
    f"Law {i}: a robot may not injure a human being or, through inaction, allow harm."
    for i in range(40)
)


def _generation(tokens: int) -> dict[str, Any]:
    return {
        "model": "bench",
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,  # llama.cpp: decode exactly max_tokens
    }


def _verdict(framework: int, question: str) -> dict[str, Any]:
    return {
        "model": "bench",
        "messages": [
            # The number comes first, so each framework is a prefix never seen before.
            {"role": "system", "content": f"Framework {framework}. {_FRAMEWORK}"},
            {"role": "user", "content": f"Question: {question}\nAnswer: Ask a locksmith."},
        ],
        "grammar": GRAMMAR,
        "logprobs": True,
        "top_logprobs": 10,
        "max_tokens": 8,
        "temperature": 0,
    }


def _measure(call: Callable[[dict[str, Any]], dict[str, Any]], args: argparse.Namespace) -> dict:
    """Run the same requests through ``call`` and collect the numbers."""
    call(_generation(8))  # warm-up: first-touch of the weights, graph allocation
    tok_s, wall_tok_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        body = call(_generation(args.tokens))
        wall = time.perf_counter() - t0
        tok_s.append(body["timings"]["predicted_per_second"])
        wall_tok_s.append(body["usage"]["completion_tokens"] / wall)
    # Two reviews under the same framework: the first computes the whole prompt, the second
    # reuses the framework prefix from the slot's cache.
    cold, cached = [], []
    for framework in range(args.repeats):
        for times, question in ((cold, "Is lying ever ok?"), (cached, "How do I pick a lock?")):
            t0 = time.perf_counter()
            usage = call(_verdict(framework, question))["usage"]
            times.append(time.perf_counter() - t0)
    return {
        "decode_tok_s": statistics.median(tok_s),
        "wall_tok_s": statistics.median(wall_tok_s),
        "verdict_s": statistics.median(cold),
        "verdict_cached_s": statistics.median(cached),
        "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens"),
        "prompt_tokens": usage["prompt_tokens"],
    }


def _child(path: Path, args: argparse.Namespace) -> tuple[float, dict]:
    engine = EmbeddedEngine(path, threads=args.threads, ctx_size=args.ctx_size)
    asyncio.run(engine.start())
    try:
        with httpx.Client(base_url=engine.base_url, timeout=600) as client:

            def call(body: dict[str, Any]) -> dict[str, Any]:
                response = client.post("/chat/completions", json=body)
                response.raise_for_status()
                return response.json()

            assert engine.startup_s is not None
            return engine.startup_s, _measure(call, args)
    finally:
        asyncio.run(engine.stop())


def _in_process(path: Path, args: argparse.Namespace) -> tuple[float, dict]:
    import xllamacpp as xlc

    t0 = time.perf_counter()
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = args.ctx_size
    params.port = 0
    params.hostnames = ["127.0.0.1"]
    params.ui = False
    params.cache_ram_mib = 1024
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    server = xlc.Server(params)
    startup = time.perf_counter() - t0
    try:
        return startup, _measure(server.handle_chat_completions, args)
    finally:
        del server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="name or .gguf path")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ctx-size", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    path = model_path(args.model)
    threads = args.threads or "auto"
    print(f"model {path.name}, threads {threads}, {args.tokens} tokens x {args.repeats}")

    child_start, child = _child(path, args)
    inproc_start, inproc = _in_process(path, args)

    rows = [
        ("start-up (s)", child_start, inproc_start),
        ("decode tok/s (llama.cpp timings)", child["decode_tok_s"], inproc["decode_tok_s"]),
        ("end-to-end tok/s (wall clock)", child["wall_tok_s"], inproc["wall_tok_s"]),
        ("verdict, new prefix (s)", child["verdict_s"], inproc["verdict_s"]),
        ("verdict, cached prefix (s)", child["verdict_cached_s"], inproc["verdict_cached_s"]),
    ]
    print(f"{'':36} {'child+HTTP':>11} {'in-process':>11} {'ratio':>7}")
    for name, a, b in rows:
        print(f"{name:36} {a:11.3f} {b:11.3f} {a / b:7.2f}")
    print(
        f"cached prompt tokens (child): {child['cached_tokens']} of {child['prompt_tokens']}; "
        f"(in-process): {inproc['cached_tokens']} of {inproc['prompt_tokens']}"
    )


if __name__ == "__main__":
    main()
