"""Parallel slots of the embedded engine: the default rule, and a judge's request decoded
beside a running generation (SmolLM2; nothing here reads a verdict)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from conscience.client import EngineClient
from conscience.engine.connect import default_parallel
from conscience.engine.embedded import EmbeddedEngine
from conscience.review import judge_request

GIB = 1 << 30
ALIAS = "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("cores", "memory_gib", "slots"),
    [
        (1, 64, 2),  # the judge beside a generation, even on one core
        (2, 24, 2),
        (3, 24, 3),
        (16, 128, 4),  # at most 4
        (16, 6, 3),  # one per 2 GiB of memory
        (8, 1, 1),  # too little memory for two KV caches
    ],
)
def test_the_default_is_sized_by_cores_and_memory(cores: int, memory_gib: int, slots: int) -> None:
    assert default_parallel(cores, memory_gib * GIB) == slots


def test_the_default_reads_this_machine() -> None:
    assert 1 <= default_parallel() <= 4


def _processing(engine: EmbeddedEngine) -> tuple[float, float]:
    text = httpx.get(f"{engine.url}/metrics", timeout=5).text
    values = dict(line.split(" ", 1) for line in text.splitlines() if line.startswith("llama"))
    return (
        float(values["llamacpp:requests_processing"]),
        float(values["llamacpp:requests_deferred"]),
    )


@pytest.mark.integration
async def test_a_judge_request_runs_beside_a_generation(smollm2: Path) -> None:
    engine = EmbeddedEngine(smollm2, threads=2, ctx_size=2048, parallel=2, model_alias=ALIAS)
    await engine.start()
    try:
        async with EngineClient(engine.base_url, timeout=120, stream_unary=True) as client:
            long = {
                "model": ALIAS,
                "messages": [{"role": "user", "content": "Write a long story."}],
                "max_tokens": 1500,
                "ignore_eos": True,
            }
            generation = asyncio.create_task(client.chat(long))
            started = time.monotonic()
            while (await asyncio.to_thread(_processing, engine))[0] < 1:
                assert time.monotonic() - started < 60
                await asyncio.sleep(0.05)
            messages = [{"role": "user", "content": "Is asking a locksmith ethical?"}]
            judged = asyncio.create_task(client.chat(judge_request(ALIAS, messages, "grammar", 5)))
            seen = []
            while not judged.done():
                seen.append(await asyncio.to_thread(_processing, engine))
                await asyncio.sleep(0.02)
            assert (await judged)["choices"][0]["message"]["content"]
            assert not generation.done()  # the judge did not wait for the generation's end
            # With one slot the judge would be deferred until the 1500 tokens were decoded.
            assert all(deferred == 0 for _, deferred in seen)
            generation.cancel()
    finally:
        await engine.stop()
