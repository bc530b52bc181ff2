"""Cancellation on the embedded engine with SmolLM2: a client that leaves mid-generation frees
the engine's slot within a second, and the next request starts at once; a client that leaves
during a long prompt's prefill frees it at the next prefill step (``engine_batch_size``), long
before the prefill would have ended.

The proxy runs in a thread with the embedded engine (no upstream). The generations are made
long on purpose (``ignore_eos``, thousands of tokens): without the cancellation the engine
would go on for tens of seconds after the client left, with it the engine's own ``/metrics``
says it is idle within a second. Nothing here reads a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conscience.client import EngineClient
from conscience.engine.embedded import EmbeddedEngine, busy, parse_metrics
from conscience.engine.hidden_state import logits_reader
from conscience.review import judge_request
from conscience.server.app import create_app
from conscience.settings import Settings
from conscience.store import open_store
from conscience.testing.scripted import serve_in_thread
from conscience.verdict import read_verdict

pytestmark = pytest.mark.integration

ALIAS = "smollm2-135m-instruct"
LONG = {
    "model": ALIAS,
    "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    "max_tokens": 3000,  # ~a minute of SmolLM2 on a busy CPU
    "ignore_eos": True,  # llama.cpp: decode exactly max_tokens
}


def _engine_metrics(engine: EmbeddedEngine) -> dict[str, float]:
    return parse_metrics(httpx.get(f"{engine.url}/metrics", timeout=5).text)


def _busy(engine: EmbeddedEngine) -> bool:
    return busy(_engine_metrics(engine))


def _wait(check: Any, seconds: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def proxy(
    smollm2: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any, str]]:
    """The proxy with the embedded engine: its URL, its app and its store's path."""
    store = str(tmp_path_factory.mktemp("cancel") / "j.sqlite3")
    settings = Settings(
        upstream_url=None,
        model=ALIAS,
        store_url=store,
        engine_ctx_size=4096,
        engine_threads=2,
        upstream_timeout=120,
    )
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield url, app, store


def _cancelled(app: Any) -> float:
    registry = app.state.pipeline.metrics.registry
    return registry.get_sample_value("conscience_cancelled_total", {"reason": "disconnect"}) or 0


def _stored(path: str) -> int:
    async def count() -> int:
        store = open_store(path)
        await store.open()
        try:
            return await store.count()
        finally:
            await store.close()

    return asyncio.run(count())


async def _leave_mid_generation(url: str, engine: EmbeddedEngine, stream: bool) -> None:
    """Send a long generation, and leave (close the connection) once the engine is decoding
    it: what a client's timeout or a closed tab does."""
    decoded = _engine_metrics(engine)["n_decode_total"]  # one a token once decoding
    async with httpx.AsyncClient(timeout=120) as client:
        body = {**LONG, "stream": stream}
        request = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=body))
        started = time.monotonic()
        while (await asyncio.to_thread(_engine_metrics, engine))["n_decode_total"] < decoded + 8:
            assert not request.done(), request.result().text
            assert time.monotonic() - started < 60, "the engine never started generating"
            await asyncio.sleep(0.05)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_frees_the_engine_within_a_second(
    proxy: tuple[str, Any, str], stream: bool
) -> None:
    url, app, store = proxy
    engine: EmbeddedEngine = app.state.engine
    before = _cancelled(app)
    _wait(lambda: not _busy(engine), 30)  # a previous test's work is over
    asyncio.run(_leave_mid_generation(url, engine, stream))
    idle_after = _wait(lambda: not _busy(engine), 10)
    assert idle_after < 1.0, f"the engine was still busy {idle_after:.2f} s after the client left"
    _wait(lambda: _cancelled(app) == before + 1, 1)
    # The next request starts at once: its first token, not after the abandoned 3000.
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={**LONG, "max_tokens": 4, "stream": True, "conscience": {"policy": "off"}},
        timeout=30,
    ) as reply:
        assert reply.status_code == 200
        next(reply.iter_lines())
    assert time.monotonic() - started < 5.0
    assert _stored(store) == 0  # nothing stored as if it had completed


async def test_a_streamed_chat_assembles_into_the_unary_answer(
    running_engine: EmbeddedEngine,
) -> None:
    """What the proxy gets from the engine is the same whether asked for unary or as a stream
    (stream_unary): the judge's label and its log-probs, the text, the usage."""
    judge = judge_request(  # the judge's own request: its grammar, 20 top log-probs
        ALIAS,
        [
            {"role": "system", "content": "Answer with one word: ethical or unethical."},
            {"role": "user", "content": "Question: how do I pick a lock?\nAnswer: Ask."},
        ],
        "grammar",
        20,
    )
    story = {**LONG, "max_tokens": 12, "temperature": 0}
    legacy = {"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    async with (
        EngineClient(running_engine.base_url, timeout=60) as unary,
        EngineClient(running_engine.base_url, timeout=60, stream_unary=True) as streamed,
    ):
        for body in (judge, story):
            one, other = await unary.chat(body), await streamed.chat(body)
            a, b = one["choices"][0], other["choices"][0]
            assert a["message"]["content"] == b["message"]["content"]
            assert a["finish_reason"] == b["finish_reason"]
            assert one["usage"]["completion_tokens"] == other["usage"]["completion_tokens"]
            if body is judge:
                # The unary log-probs also carry the end token's (no text), a stream's do not;
                # the label is read at the first token with text, so the reading is the same.
                texts = [
                    [(s["token"], s["logprob"], s["top_logprobs"]) for s in c if s["token"]]
                    for c in (a["logprobs"]["content"], b["logprobs"]["content"])
                ]
                assert texts[0] == texts[1] and texts[0]
                assert read_verdict(a) == read_verdict(b)
        one, other = await unary.completions(legacy), await streamed.completions(legacy)
        assert one["choices"][0]["text"] == other["choices"][0]["text"]
        assert other["object"] == "text_completion"


# A request left a fifth into its prefill must free the engine within this share of the
# prefill's time: the 0.8 left would run out without the cancellation (measured: 1.2 of it for
# a unary reading).
LEFT_WITHIN = 0.6


def _long_text(tag: str) -> str:
    """~1,800 tokens of SmolLM2 (one step at llama.cpp's own batch of 2,048), new to the cache."""
    words = ("the harbour wall was grey and the boats came home late that evening " * 130).split()
    return f"{tag}: " + " ".join(words) + "\nWrite a very long story about the sea."


def _long_prompt(tag: str) -> dict[str, Any]:
    return {**LONG, "messages": [{"role": "user", "content": _long_text(tag)}], "max_tokens": 16}


def _prefill_alone(engine: EmbeddedEngine, url: str, body: dict[str, Any]) -> float:
    """Seconds the idle engine takes to prefill ``body``'s long prompt, asked at ``url``."""
    _wait(lambda: not _busy(engine), 30)
    timings = httpx.post(url, json=body, timeout=120).json()["timings"]
    assert 1500 < timings["prompt_n"] <= 2048  # one step, were the batch llama.cpp's own
    return timings["prompt_ms"] / 1000


def _idle_after_leaving_a_fifth_in(
    engine: EmbeddedEngine, prefill_s: float, work: Callable[[], Awaitable[None]]
) -> float:
    """Start ``work`` (a request whose prompt takes ``prefill_s`` to prefill), leave it a fifth
    into the prefill (cancelled: its connection closes), and return how long the engine then
    stays busy."""

    async def leave() -> None:
        task = asyncio.create_task(work())
        await asyncio.to_thread(_wait, lambda: _busy(engine), 30)
        await asyncio.sleep(prefill_s * 0.2)
        assert not task.done()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(leave())
    return _wait(lambda: not _busy(engine), 120)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_during_the_prefill_frees_the_engine_at_the_next_step(
    proxy: tuple[str, Any, str], stream: bool
) -> None:
    url, app, _ = proxy
    engine: EmbeddedEngine = app.state.engine
    chat = f"{engine.base_url}/chat/completions"
    prefill_s = _prefill_alone(engine, chat, {**_long_prompt(f"alone {stream}"), "max_tokens": 1})

    async def ask() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {**_long_prompt(f"left {stream}"), "stream": stream}
            await client.post(f"{url}/v1/chat/completions", json=body)

    idle_after = _idle_after_leaving_a_fifth_in(engine, prefill_s, ask)
    # One step of 256 tokens is a seventh of the prompt: idle long before the 0.8 of the
    # prefill that was left, which one step of 2,048 would still have had to run. The bound
    # leaves room for a step or two more under load (CI once saw 0.44 with the suite beside).
    assert idle_after < prefill_s * LEFT_WITHIN, (
        f"idle {idle_after:.2f} s after leaving a {prefill_s:.2f} s prefill"
    )


def test_a_review_left_during_the_probes_reading_frees_the_engine_at_the_next_step(
    proxy: tuple[str, Any, str], smollm2: Path
) -> None:
    """The probe reads the judge's state with a one-token native ``/completion``
    (engine/hidden_state.py): the proxy's client streams it with progress, so a review
    cancelled during that prompt's prefill stops it at the next step, as a generation does."""
    _, app, _ = proxy
    engine: EmbeddedEngine = app.state.engine
    reader = logits_reader(smollm2)
    body = reader.request(_long_text("read alone"))
    prefill_s = _prefill_alone(engine, f"{engine.url}/completion", body)

    async def read() -> None:
        async with EngineClient(engine.base_url, timeout=120, stream_unary=True) as client:
            await reader.read(client, _long_text("read and left"))

    idle_after = _idle_after_leaving_a_fifth_in(engine, prefill_s, read)
    assert idle_after < prefill_s * LEFT_WITHIN, (
        f"idle {idle_after:.2f} s after leaving a {prefill_s:.2f} s reading"
    )
