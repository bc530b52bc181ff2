"""Publishing on the default stack: `conscience serve` with no upstream, SmolLM2, an adapter.

`conscience adapter publish NAME` against a proxy that runs the embedded engine: the proxy
exports the adapter, its engine serves it, the proxy generates with it and CURRENT records it;
a restarted proxy starts with it; publishing the base model's name rolls back. The adapter is
random, so only "the answer changed / came back" is asserted, never what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conscience.testing.scripted import free_port

pytest.importorskip("peft")
import tiny_gguf  # tests/engine/tiny_gguf.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMOL = "smollm2-135m-instruct"
ADMIN = "admin-key"
ADAPTER_CLI = [sys.executable, "-m", "conscience.cli", "adapter"]


def _serve(tmp_path: Path, port: int, adapters: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "CONSCIENCE_UPSTREAM_URL": "",
        "CONSCIENCE_ADAPTERS_DIR": str(adapters),
        "CONSCIENCE_ADMIN_KEY": ADMIN,
        "CONSCIENCE_POLICY": "flag",  # the answer is served as generated: it is what we compare
        "CONSCIENCE_ENGINE_CTX_SIZE": "2048",
        "CONSCIENCE_ENGINE_THREADS": "2",
    }
    argv = [sys.executable, "-m", "conscience.cli", "serve", "--model", SMOL]
    argv += ["--port", str(port), "--store", str(tmp_path / "j.sqlite3"), "--log-level", "warning"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not become ready: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def _answer(url: str) -> str:
    body = {
        "model": SMOL,  # the public name: the proxy generates with its current generator
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 12,
        "temperature": 0,
    }
    completion = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
    return completion["choices"][0]["message"]["content"]


def _publish(url: str, adapters: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADAPTER_CLI, "--proxy", url, "--adapters", str(adapters), "publish", name],
        env={**os.environ, "CONSCIENCE_ADMIN_KEY": ADMIN},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _generator(url: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.get(f"{url}/admin/adapter", headers=headers, timeout=30).json()


def test_publish_restart_and_rollback_on_the_embedded_engine(smollm2: Path, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    tiny_gguf.smollm2_adapter(adapters / "night-1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    proc = _serve(tmp_path, port, adapters)
    try:
        base = _answer(url)
        published = _publish(url, adapters, "night-1")
        assert published.returncode == 0, published.stderr
        assert "embedded engine" in published.stdout
        assert (adapters / "CURRENT").read_text().strip() == "night-1"
        assert _generator(url) == {"model": "night-1", "judge_model": SMOL, "engine": "embedded"}
        adapted = _answer(url)
        assert adapted != base
        unknown = _publish(url, adapters, "night-9")
        assert unknown.returncode == 1 and "no adapter is named 'night-9'" in unknown.stderr
        assert (adapters / "CURRENT").read_text().strip() == "night-1"  # nothing recorded
    finally:
        _stop(proc)

    proc = _serve(tmp_path, port, adapters)  # a restart keeps the adapter published last
    try:
        assert _generator(url)["model"] == "night-1"
        assert _answer(url) == adapted
        rolled_back = _publish(url, adapters, SMOL)
        assert rolled_back.returncode == 0, rolled_back.stderr
        assert _generator(url)["model"] == SMOL
        assert _answer(url) == base
        assert (adapters / "CURRENT").read_text().strip() == SMOL
    finally:
        _stop(proc)
