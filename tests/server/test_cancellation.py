"""Cancellation through the real proxy, against the scripted engine: a client that leaves, or a
deadline that passes, stops the request's work where it waits (generation, review, rewrite),
counts it, and stores nothing. That the embedded engine's slot is then free is
tests/engine/test_engine_cancellation.py's."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from conscience.store import open_store
from conscience.testing.scripted import ScriptedEngine

ProxyFactory = Callable[..., str]  # tests/server/conftest.py's make_proxy
BODY = {"model": "gen", "messages": [{"role": "user", "content": "Capital of France?"}]}


def _metric(base: str, name: str, **labels: str) -> float:
    text = httpx.get(base + "/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" (\S+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def _eventually(check: object, seconds: float) -> float:
    """Seconds until ``check()`` is true; fails after ``seconds``."""
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - started


def _stored(tmp_path: Path) -> int:
    async def count() -> int:
        store = open_store(str(tmp_path / "judgements.sqlite3"))
        await store.open()
        try:
            return await store.count()
        finally:
            await store.close()

    return asyncio.run(count())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("phase", ["generate", "rewrite"])
def test_a_client_that_leaves_is_cancelled_and_nothing_is_stored(
    engine: ScriptedEngine, make_proxy: ProxyFactory, tmp_path: Path, phase: str, stream: bool
) -> None:
    engine.verdict = "unethical"  # so that a rewrite follows the review
    engine.latency = {phase: 3.0}  # past the client's patience (and short: the engine's
    # server waits for it on shutdown)
    base = make_proxy(upstream_timeout=60)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=1.0)
    _eventually(lambda: _metric(base, "conscience_cancelled_total", reason="disconnect"), 1.0)
    assert engine.requests[-1][0] == phase  # it was waiting where the test meant it to
    route = {"route": "/v1/chat/completions", "status": "499"}
    _eventually(lambda: _metric(base, "conscience_requests_total", **route) == 1.0, 1.0)
    assert _metric(base, 'conscience_actions_total{action="rewritten"}') == 0.0
    assert _metric(base, "conscience_cancelled_total", reason="deadline") == 0.0
    assert _stored(tmp_path) == 0
    # The proxy serves the next request as usual.
    engine.latency = {}
    reply = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=10)
    assert reply.json()["conscience"]["action"] == "rewritten"
    assert _stored(tmp_path) == 1


def test_a_deadline_answers_504_and_stops_the_work(
    engine: ScriptedEngine, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    engine.latency = {"review": 3.0}
    base = make_proxy(upstream_timeout=60, request_timeout=0.5)
    started = time.monotonic()
    reply = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=10)
    assert time.monotonic() - started < 2.0
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "request_timeout"
    assert _metric(base, "conscience_cancelled_total", reason="deadline") == 1.0
    assert _metric(base, "conscience_cancelled_total", reason="disconnect") == 0.0
    assert _stored(tmp_path) == 0


def test_a_deadline_ends_a_started_stream_with_an_error_event(
    engine: ScriptedEngine, make_proxy: ProxyFactory
) -> None:
    engine.generation = "word " * 200
    engine.stream_delay = 0.05  # 10 s of generation
    base = make_proxy(
        upstream_timeout=60,
        request_timeout=1.0,
        stream_mode="incremental",
        stream_window_chars=20,
    )
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json={**BODY, "stream": True}, timeout=10
    ) as reply:
        assert reply.status_code == 200
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    last = json.loads(events[-1])
    assert last["error"]["code"] == "request_timeout"
    assert any(json.loads(e).get("choices") for e in events[:-1])  # text was released first
    assert _metric(base, "conscience_cancelled_total", reason="deadline") == 1.0


def test_a_request_within_its_deadline_is_untouched(make_proxy: ProxyFactory) -> None:
    base = make_proxy(request_timeout=5.0)
    reply = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=10)
    assert reply.status_code == 200 and reply.json()["conscience"]["verdict"] == "ethical"
    assert _metric(base, "conscience_cancelled_total", reason="deadline") == 0.0
    assert _metric(base, "conscience_cancelled_total", reason="disconnect") == 0.0
