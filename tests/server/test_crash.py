"""A SIGKILL of the proxy under load loses no judgement whose response a client received."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conscience.store import open_store
from conscience.testing.scripted import ScriptedEngine, free_port


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_sigkill_under_load_loses_no_acknowledged_judgement(
    backend: str, engine: ScriptedEngine, engine_url: str, tmp_path
) -> None:
    if backend == "postgres":
        store_url = os.environ.get("CONSCIENCE_TEST_POSTGRES_URL")
        if not store_url:
            pytest.skip("CONSCIENCE_TEST_POSTGRES_URL is not set")
    else:
        store_url = str(tmp_path / "crash.sqlite3")
    engine.verdict = "unethical"  # every request takes the longest path: review and rewrite
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conscience.cli",
            "serve",
            "--upstream",
            engine_url,
            "--model",
            "gen",
            "--judge-model",
            "judge",
            "--store",
            store_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await http.get(base + "/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, "no start"
                await asyncio.sleep(0.1)

            acknowledged: list[str] = []

            async def worker() -> None:
                body = {"model": "gen", "messages": [{"role": "user", "content": "hi"}]}
                while True:
                    try:
                        response = await http.post(base + "/v1/chat/completions", json=body)
                    except httpx.TransportError:
                        return  # the server is gone
                    if response.status_code == 200:
                        acknowledged.append(response.json()["conscience"]["judgement_id"])

            workers = [asyncio.create_task(worker()) for _ in range(8)]
            while len(acknowledged) < 40:
                await asyncio.sleep(0.02)
            os.kill(server.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*workers), timeout=20)
    finally:
        server.kill()
        server.wait()
    store = open_store(store_url)
    await store.open()
    try:
        missing = []
        for judgement_id in acknowledged:
            try:
                await store.get(judgement_id)
            except Exception:
                missing.append(judgement_id)
    finally:
        await store.close()
    assert len(acknowledged) >= 40
    assert missing == []
