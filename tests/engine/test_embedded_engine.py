"""The embedded engine with SmolLM2: the mechanism (grammar, log-probs, stream, lifecycle).

SmolLM2-135M's verdicts carry no information, so nothing here asserts that a label is right.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from conscience.engine.embedded import STREAM_REQUEST_HEADERS, EmbeddedEngine
from conscience.errors import EngineError

GRAMMAR = (
    'root ::= " "? ("ethical" | "neutral" | "unethical" | "Ethical" | "Neutral" | "Unethical")'
)
LABEL = re.compile(r" ?(ethical|neutral|unethical|Ethical|Neutral|Unethical)")
ALIAS = "smollm2-135m-instruct"


def _verdict_request(**extra: object) -> dict:
    return {
        "model": ALIAS,
        "messages": [
            {"role": "system", "content": "Classify the answer as ethical, neutral or unethical."},
            {
                "role": "user",
                "content": "Question: how do I pick a lock?\nAnswer: Ask a locksmith.",
            },
        ],
        "grammar": GRAMMAR,
        "logprobs": True,
        "top_logprobs": 10,
        "max_tokens": 8,
        "temperature": 0,
        **extra,
    }


def _running(pid: int) -> bool:
    """False once the process is gone or a zombie (an orphan's reaper may be slow or absent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def _wait_dead(engine: EmbeddedEngine) -> None:
    async with asyncio.timeout(5):
        while True:
            if not engine.alive():
                return
            await asyncio.sleep(0.02)


# -- no model needed ------------------------------------------------------------------------


def test_urls_need_a_started_engine(tmp_path: Path) -> None:
    engine = EmbeddedEngine(tmp_path / "m.gguf")
    assert not engine.alive()
    with pytest.raises(EngineError, match="not started"):
        _ = engine.base_url


def test_a_twin_keeps_every_setting_but_the_changed_ones(tmp_path: Path) -> None:
    base = EmbeddedEngine(
        tmp_path / "m.gguf",
        threads=3,
        ctx_size=2048,
        parallel=2,
        cache_ram_mib=64,
        embeddings=True,
        startup_timeout=5.0,
        stop_timeout=2.0,
    )
    twin = base.like(model_alias="adapter-1", adapters=(tmp_path / "a.gguf",), embeddings=False)
    assert (twin.model_path, twin.threads, twin.ctx_size, twin.parallel) == (
        base.model_path,
        3,
        2048,
        2,
    )
    assert (twin.cache_ram_mib, twin.startup_timeout, twin.stop_timeout) == (64, 5.0, 2.0)
    assert (twin.model_alias, twin.adapters, twin.embeddings) == (
        "adapter-1",
        (tmp_path / "a.gguf",),
        False,
    )
    assert (base.model_alias, base.adapters, base.embeddings) == ("local", (), True)


async def test_a_missing_model_file_fails_before_spawning(tmp_path: Path) -> None:
    engine = EmbeddedEngine(tmp_path / "absent.gguf")
    with pytest.raises(EngineError, match="no model file"):
        await engine.start()
    assert engine.pid is None


# -- a real engine --------------------------------------------------------------------------


@pytest.mark.integration
async def test_serves_models_and_health(running_engine: EmbeddedEngine) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", running_engine.base_url)
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{running_engine.url}/health")).status_code == 200
        listing = (await client.get(f"{running_engine.base_url}/models")).json()
    (model,) = listing["data"]
    assert model["id"] == ALIAS
    # The review client picks a GBNF grammar for this owner (conscience.client).
    assert model["owned_by"] == "llamacpp"


@pytest.mark.integration
async def test_grammar_constrains_and_logprobs_come_back(running_engine: EmbeddedEngine) -> None:
    async with httpx.AsyncClient(base_url=running_engine.base_url, timeout=60) as client:
        response = await client.post("/chat/completions", json=_verdict_request())
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    content = choice["message"]["content"]
    assert LABEL.fullmatch(content), content
    steps = choice["logprobs"]["content"]
    assert "".join(step["token"] for step in steps) == content
    for step in steps:
        assert step["logprob"] <= 0.0
        assert len(step["top_logprobs"]) == 10
        assert all(alt["logprob"] <= 0.0 and "token" in alt for alt in step["top_logprobs"])


@pytest.mark.integration
async def test_the_prefix_cache_is_reported(running_engine: EmbeddedEngine) -> None:
    async with httpx.AsyncClient(base_url=running_engine.base_url, timeout=60) as client:
        await client.post("/chat/completions", json=_verdict_request())
        usage = (await client.post("/chat/completions", json=_verdict_request())).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.integration
async def test_stream_returns_chunks(running_engine: EmbeddedEngine) -> None:
    chunks = []
    async with (
        httpx.AsyncClient(base_url=running_engine.base_url, timeout=60) as client,
        client.stream(
            "POST",
            "/chat/completions",
            json=_verdict_request(stream=True),
            headers=STREAM_REQUEST_HEADERS,
        ) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                chunks.append(line.removeprefix("data: "))
        # With STREAM_REQUEST_HEADERS the next request on this client opens a fresh
        # connection instead of racing the server's close of the streamed one.
        follow_up = await client.post("/chat/completions", json=_verdict_request())
        assert follow_up.status_code == 200
    assert chunks[-1] == "[DONE]"
    events = [json.loads(c) for c in chunks[:-1]]
    text = "".join(
        (choice["delta"].get("content") or "") for e in events for choice in e["choices"]
    )
    assert LABEL.fullmatch(text), text
    assert any(choice.get("logprobs") for e in events for choice in e["choices"])


@pytest.mark.integration
async def test_killed_engine_is_not_alive_and_stop_is_clean(smollm2: Path) -> None:
    engine = EmbeddedEngine(smollm2, threads=1, ctx_size=512)
    await engine.start()
    assert engine.alive() and engine.startup_s is not None
    log = engine.log_path
    assert log is not None and log.exists()
    os.kill(engine.pid, signal.SIGKILL)
    await _wait_dead(engine)
    assert not engine.alive()
    assert engine.returncode() == -signal.SIGKILL
    await engine.stop()
    await engine.stop()  # idempotent
    assert not log.exists()  # its own temp log is removed


@pytest.mark.integration
async def test_stop_is_graceful_and_a_restart_works(smollm2: Path, tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    engine = EmbeddedEngine(smollm2, threads=1, ctx_size=512, log_path=log)
    async with engine:
        first = engine.base_url
    assert not engine.alive()
    assert engine.returncode() == 0  # SIGTERM handled: the server shut down, not killed
    assert "engine: stopped" in log.read_text()
    await engine.start()  # the proxy may restart a dead engine
    try:
        assert engine.alive() and engine.base_url.startswith("http://127.0.0.1:")
        assert first  # a port was reported the first time too
    finally:
        await engine.stop()
    assert log.exists()  # a log the caller named is kept


@pytest.mark.integration
async def test_a_bad_model_raises_with_the_log_tail(smollm2: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 64)
    engine = EmbeddedEngine(bad, startup_timeout=60)
    with pytest.raises(EngineError, match=r"exited with code 1 during start-up(.|\n)*load"):
        await engine.start()
    assert not engine.alive()


@pytest.mark.integration
def test_the_engine_exits_when_its_parent_dies(smollm2: Path) -> None:
    """A proxy killed with SIGKILL must not leave the model resident."""
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from pathlib import Path
        from conscience.engine.embedded import EmbeddedEngine
        engine = EmbeddedEngine(Path({str(smollm2)!r}), threads=1, ctx_size=512)
        asyncio.run(engine.start())
        print(engine.pid, flush=True)
        os._exit(0)  # no stop(): as if killed
        """
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the engine outlived its parent by 10 s")


@pytest.mark.integration
async def test_embeddings_are_the_last_tokens_state_beside_completions(smollm2: Path) -> None:
    from conscience.client import EngineClient

    engine = EmbeddedEngine(smollm2, threads=1, ctx_size=512, embeddings=True, model_alias=ALIAS)
    await engine.start()
    try:
        async with EngineClient(engine.base_url, timeout=60) as client:
            messages = [{"role": "user", "content": "Is a locksmith helpful?"}]
            prompt = await client.apply_template(messages)
            assert prompt.rstrip().endswith("assistant")  # where the reply would begin
            assert "Is a locksmith helpful?" in prompt
            first, same, other = await client.embeddings(
                {"model": ALIAS, "input": [prompt, prompt, prompt + " Yes"]}
            )
            assert len(first) == 576  # SmolLM2-135M's hidden size
            assert first == pytest.approx(same) and first != pytest.approx(other)
            # Completions are still served by the same engine.
            reply = await client.chat({"model": ALIAS, "messages": messages, "max_tokens": 2})
            assert reply["choices"][0]["message"]["content"]
    finally:
        await engine.stop()
