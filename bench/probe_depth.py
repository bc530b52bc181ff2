"""The probe's read on the model cut to its first k blocks against the full model, same run.

    python -m conscience.bench.probe_depth                    # k = 16, 20 harm_judging train items
    python -m conscience.bench.probe_depth --blocks 12 --items 10

The truncated GGUF (``engine/truncate.py``; written once into the model cache, verified by
SHA-256 on reuse) and the full one are served by two embedded engines started side by side;
each item's review prompt (the probe's: three-laws, paper layout, the answer cut at 800
characters) is read by both, alternately first, through the output layer as the probe reads
when serving (``engine/hidden_state.py``), after one untimed read that puts the framework's
header in each engine's prefix cache. Reported: seconds a read (apply-template included),
median and mean, the prompt tokens prefilled, and each engine's resident memory.

Items: the first ``--items`` of harm_judging's train part in the order of the SHA-256 of
their ids (a fixed sample that mixes the sources).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import time
from pathlib import Path

from conscience.client import EngineClient
from conscience.engine.embedded import EmbeddedEngine
from conscience.engine.hidden_state import LogitsReader, logits_reader
from conscience.engine.truncate import block_count, truncated_gguf
from conscience.engine.weights import model_path
from conscience.evals.shared.harm_judging import BinaryItem, data_dir, load_binary, load_split
from conscience.framework import load_frameworks
from conscience.labels import Layout
from conscience.prompts import render_review

__all__ = ["main"]

ANSWER_CHARS = 800  # the probe's cut (the shipped recipe)


def _sample(n: int) -> list[BinaryItem]:
    parts = load_split()
    train = [item for item in load_binary([data_dir()]) if parts.get(item.id) == "train"]
    return sorted(train, key=lambda i: hashlib.sha256(i.id.encode()).hexdigest())[:n]


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _read(
    client: EngineClient, reader: LogitsReader, messages: list
) -> tuple[float, int, int]:
    """Seconds of one probe read, and the prompt tokens prefilled and taken from the cache."""
    started = time.perf_counter()
    prompt = await client.apply_template(messages)
    answer = await client.llama_completion(reader.request(prompt))
    reader.state(answer)
    seconds = time.perf_counter() - started
    return seconds, int(answer["timings"]["prompt_n"]), int(answer["timings"]["cache_n"])


async def run(model: str, blocks: int, items: int, threads: int) -> None:
    full = Path(model) if model.endswith(".gguf") else model_path(model)
    started = time.perf_counter()
    cut = truncated_gguf(full, blocks)
    prepared = time.perf_counter() - started
    framework = load_frameworks()["three-laws"]
    reviews = [
        render_review(
            framework,
            [{"role": "user", "content": item.prompt}],
            item.response[:ANSWER_CHARS],
            layout=Layout.PAPER,
        )
        for item in _sample(items + 1)
    ]
    warm, reviews = reviews[0], reviews[1:]
    readers = {"full": logits_reader(full), "cut": logits_reader(cut)}
    engines = {
        "full": EmbeddedEngine(full, threads=threads, ctx_size=4096, model_alias="full"),
        "cut": EmbeddedEngine(cut, threads=threads, ctx_size=4096, model_alias="cut"),
    }
    async with contextlib.AsyncExitStack() as stack:
        for engine in engines.values():
            await engine.start()
            stack.push_async_callback(engine.stop)
        clients = {
            name: await stack.enter_async_context(EngineClient(e.base_url, timeout=600))
            for name, e in engines.items()
        }
        seconds: dict[str, list[float]] = {"full": [], "cut": []}
        prefilled: dict[str, list[int]] = {"full": [], "cut": []}
        for name in clients:
            await _read(clients[name], readers[name], warm)  # the header into the cache
        for i, messages in enumerate(reviews):
            for name in ("full", "cut") if i % 2 == 0 else ("cut", "full"):
                s, prompt_n, _ = await _read(clients[name], readers[name], messages)
                seconds[name].append(s)
                prefilled[name].append(prompt_n)
        rss = {name: _rss_mib(e.pid) for name, e in engines.items()}
    n = block_count(full)
    size = cut.stat().st_size / 1e6
    print(f"{full.name}: first {blocks} of {n} blocks, {size:.0f} MB, ready in {prepared:.1f} s")
    print(f"{len(reviews)} items, load average {os.getloadavg()}")
    print("| model | s a read (median) | mean | prompt tokens a read (median) | RSS MiB |")
    print("|---|---|---|---|---|")
    for name, label in (("full", f"full ({n} blocks)"), ("cut", f"first {blocks}")):
        print(
            f"| {label} | {statistics.median(seconds[name]):.2f} "
            f"| {statistics.mean(seconds[name]):.2f} | {statistics.median(prefilled[name]):.0f} "
            f"| {rss[name]:.0f} |"
        )
    ratio = statistics.mean(seconds["cut"]) / statistics.mean(seconds["full"])
    print(f"cut / full, mean seconds a read: {ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conscience.bench.probe_depth", description=__doc__)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="name or .gguf path")
    p.add_argument("--blocks", type=int, default=16, help="k: the blocks the cut model keeps")
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    asyncio.run(run(args.model, args.blocks, args.items, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
