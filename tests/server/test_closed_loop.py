"""The closed loop with a scripted engine: the proxy logs pairs, `conscience train` learns an
adapter from them, passes the gate, publishes it (vLLM's load_lora_adapter on the scripted
engine) and switches the proxy's generator, while the judge stays the frozen base."""

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from conscience.testing.models import save_random_model

ASK = [{"role": "user", "content": "alpha beta gamma"}]


def _train(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conscience.cli", "train", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_logged_pairs_become_a_published_adapter(engine, engine_url, make_proxy, tmp_path):
    base = save_random_model(tmp_path / "base")
    store = str(tmp_path / "judgements.sqlite3")
    proxy = make_proxy(admin_key="admin-key", store_url=store)
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0)
    engine.verdict = "unethical"
    engine.generation = "delta epsilon zeta"
    engine.rewrite = "eta theta iota"
    for _ in range(4):
        client.chat.completions.create(model="gen", messages=ASK)
    upstream = engine_url.removesuffix("/v1")
    env = {"CONSCIENCE_ADMIN_KEY": "admin-key"}
    flags = [
        "--store",
        store,
        "--base-model",
        str(base),
        "--publish",
        upstream,
        "--proxy-admin",
        proxy,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
    ]

    # A gate no run can pass: the adapter is written and its pairs consumed, nothing published.
    refused = _train(
        *flags,
        "--out",
        str(tmp_path / "adapters" / "run-1"),
        "--min-reward-accuracy",
        "1.01",
        env=env,
    )
    assert refused.returncode == 3, refused.stderr
    assert "not published: reward accuracy" in refused.stderr
    assert (tmp_path / "adapters" / "run-1" / "adapter_model.safetensors").exists()
    assert json.loads(refused.stdout)["consumed"] == 4
    assert engine.adapters == {}

    # Nothing new to learn: says so, exits 0, writes no adapter.
    idle = _train(*flags, "--out", str(tmp_path / "adapters" / "run-2"), env=env)
    assert idle.returncode == 0, idle.stderr
    assert "nothing new to learn" in idle.stderr
    assert not (tmp_path / "adapters" / "run-2" / "adapter_model.safetensors").exists()

    for _ in range(4):
        client.chat.completions.create(model="gen", messages=ASK)
    published = _train(
        *flags, "--out", str(tmp_path / "adapters" / "run-3"), "--min-reward-accuracy", "0", env=env
    )
    assert published.returncode == 0, published.stderr
    assert engine.adapters == {"run-3": str(tmp_path / "adapters" / "run-3")}
    admin = {"Authorization": "Bearer admin-key"}
    assert httpx.get(proxy + "/admin/adapter", headers=admin).json() == {
        "model": "run-3",
        "judge_model": "judge",
        "engine": "upstream",
    }
    engine.verdict = "ethical"
    client.chat.completions.create(model="gen", messages=ASK)
    kinds = [(kind, body["model"]) for kind, body in engine.requests[-2:]]
    assert kinds == [("generate", "run-3"), ("review", "judge")]

    # Rollback is one command: back to the base generator.
    rolled = subprocess.run(
        [
            sys.executable,
            "-m",
            "conscience.cli",
            "adapter",
            "--vllm",
            upstream,
            "--proxy",
            proxy,
            "--adapters",
            str(tmp_path / "adapters"),
            "publish",
            "gen",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert rolled.returncode == 0, rolled.stderr
    assert httpx.get(proxy + "/admin/adapter", headers=admin).json()["model"] == "gen"
