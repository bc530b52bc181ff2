"""`conscience review` run as a real subprocess against a scripted engine."""

import json
import os
import subprocess
import sys

from conscience.testing.scripted import ScriptedEngine, free_port


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conscience.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_review_prints_one_json_object(engine: ScriptedEngine, engine_url: str) -> None:
    engine.verdict = "unethical"
    result = _run(
        "review",
        "--upstream",
        engine_url,
        "--judge-model",
        "judge",
        "--framework",
        "wwjd",
        "--question",
        "Q",
        "--answer",
        "A",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["verdict"] == "unethical"
    assert out["framework"] == "wwjd"
    assert 0.0 <= out["confidence"] <= 1.0
    assert out["rewrite"] == engine.rewrite
    assert set(out["latency_ms"]) == {"review", "rewrite"}


def test_settings_come_from_the_environment(engine: ScriptedEngine, engine_url: str) -> None:
    result = _run(
        "review",
        "--question",
        "Q",
        "--answer",
        "A",
        env={"CONSCIENCE_UPSTREAM_URL": engine_url, "CONSCIENCE_JUDGE_MODEL": "judge"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "ethical"
    assert "rewrite" not in json.loads(result.stdout)


def test_errors_are_one_line_without_traceback(engine_url: str, tmp_path) -> None:
    no_model = {"CONSCIENCE_UPSTREAM_URL": "", "CONSCIENCE_MODEL_CACHE_DIR": str(tmp_path)}
    cases = [
        (("--upstream", f"http://127.0.0.1:{free_port()}/v1"), None, "cannot reach"),
        (("--upstream", engine_url, "--framework", "kant"), None, "unknown framework"),
        # No upstream and no model in the cache: the embedded engine says what to run.
        ((), no_model, "conscience model fetch qwen2.5-coder-1.5b-instruct"),
    ]
    for extra, env, message in cases:
        result = _run("review", "--question", "Q", "--answer", "A", *extra, env=env)
        assert result.returncode == 1, (extra, result.stderr)
        assert result.stderr.startswith("conscience: error:")
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_invalid_setting_exits_2(engine_url: str) -> None:
    result = _run(
        "review",
        "--upstream",
        engine_url,
        "--question",
        "Q",
        "--answer",
        "A",
        env={"CONSCIENCE_POLICY": "maybe"},
    )
    assert result.returncode == 2
    assert "invalid settings: policy" in result.stderr
