"""The deploy/ scripts, run for real with stub `conscience` and `vllm` commands and a fake
vLLM + proxy on loopback: what they pass on, what they record in CURRENT, what they refuse."""

import fcntl
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from deploy_files import ADMIN_KEY, DEPLOY, ROOT, script_env


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


adapter = _load("adapter")
requirements = _load("requirements")


def _run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(DEPLOY / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _args(stub_bin: Path, name: str) -> list[str]:
    return (stub_bin / f"{name}.args").read_text(encoding="utf-8").splitlines()


def _make_adapter(adapters: Path, name: str, status: str = "trained") -> Path:
    path = adapters / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 16}', encoding="utf-8")
    (path / "report.json").write_text(f'{{"status": "{status}"}}', encoding="utf-8")
    return path


# --- serve.sh (the GPU proxy's start)


def test_serve_passes_its_flags_to_conscience_serve(tmp_path, stub_bin):
    env = script_env(stub_bin, ADAPTERS_DIR=str(tmp_path), CONSCIENCE_ADMIN_KEY=ADMIN_KEY)
    result = _run("serve.sh", env, "--host", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    assert _args(stub_bin, "conscience") == ["serve", "--host", "0.0.0.0"]


def test_serve_exits_with_the_proxys_status(tmp_path, stub_bin):
    (stub_bin / "conscience").write_text("#!/bin/sh\nexit 5\n", encoding="utf-8")
    result = _run("serve.sh", script_env(stub_bin, ADAPTERS_DIR=str(tmp_path)))
    assert result.returncode == 5


def test_serve_switches_a_restarted_proxy_back_to_the_recorded_adapter(
    tmp_path, stub_bin, fake_stack
):
    """The proxy (here a stub that runs until it is signalled; the fake stack answers for it)
    starts on the base model; serve.sh switches it to CURRENT, and passes `docker stop` on."""
    (stub_bin / "conscience").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{stub_bin}/conscience.args"\nexec sleep 30\n',
        encoding="utf-8",
    )
    fake_stack.served.add("run-7")
    (tmp_path / "CURRENT").write_text("run-7\n", encoding="utf-8")
    port = fake_stack.url.rsplit(":", 1)[1]
    env = script_env(
        stub_bin, ADAPTERS_DIR=str(tmp_path), CONSCIENCE_ADMIN_KEY=ADMIN_KEY, CONSCIENCE_PORT=port
    )
    process = subprocess.Popen(["sh", str(DEPLOY / "serve.sh"), "--host", "0.0.0.0"], env=env)
    try:
        deadline = time.monotonic() + 30
        while fake_stack.generator != "run-7" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fake_stack.generator == "run-7"
        assert ("POST", "/admin/adapter", {"model": "run-7"}) in fake_stack.calls
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 128 + signal.SIGTERM  # the proxy's own status
    finally:
        process.kill()
        process.wait()


# --- vllm-serve.sh (vLLM's start)


def _vllm(tmp_path: Path, stub_bin: Path, current: str | None) -> list[str]:
    if current is not None:
        (tmp_path / "CURRENT").write_text(current + "\n", encoding="utf-8")
    env = script_env(stub_bin, ADAPTERS_DIR=str(tmp_path), BASE_MODEL="Qwen/Base")
    result = _run("vllm-serve.sh", env, "--enable-lora", "--max-lora-rank=16")
    assert result.returncode == 0, result.stderr
    return _args(stub_bin, "vllm")


def test_vllm_serves_the_base_model_with_the_given_flags(tmp_path, stub_bin):
    assert _vllm(tmp_path, stub_bin, None) == [
        "serve",
        "Qwen/Base",
        "--enable-lora",
        "--max-lora-rank=16",
    ]


def test_vllm_loads_the_recorded_adapter_at_start(tmp_path, stub_bin):
    _make_adapter(tmp_path, "run-1")
    argv = _vllm(tmp_path, stub_bin, "run-1")
    assert argv[-2:] == ["--lora-modules", f"run-1={tmp_path}/run-1"]


@pytest.mark.parametrize("current", ["Qwen/Base", "run-missing", "../etc", ".hidden", "a b"])
def test_vllm_loads_nothing_that_is_not_an_adapter_directory(tmp_path, stub_bin, current):
    _make_adapter(tmp_path, "etc")
    assert "--lora-modules" not in _vllm(tmp_path, stub_bin, current)


def test_vllm_start_needs_the_base_model(tmp_path, stub_bin):
    result = _run("vllm-serve.sh", script_env(stub_bin, ADAPTERS_DIR=str(tmp_path)))
    assert result.returncode != 0
    assert "BASE_MODEL" in result.stderr


# --- nightly.sh (the trainer job)


def _nightly_env(tmp_path: Path, stub_bin: Path, stack_url: str, **extra: str) -> dict[str, str]:
    env = {
        "ADAPTERS_DIR": str(tmp_path),
        "CONSCIENCE_ADMIN_KEY": ADMIN_KEY,
        "CONSCIENCE_STORE_URL": "postgresql://conscience:pw@postgres:5432/conscience",
        "BASE_MODEL": "Qwen/Base",
        "VLLM_URL": stack_url,
        "PROXY_URL": stack_url,
    }
    return script_env(stub_bin, **{**env, **extra})


def test_nightly_trains_publishes_and_records(tmp_path, stub_bin, fake_stack):
    # What `conscience train --publish --proxy-admin` leaves behind: the proxy on the new adapter.
    fake_stack.served.add("run-new")
    fake_stack.generator = "run-new"
    result = _run("nightly.sh", _nightly_env(tmp_path, stub_bin, fake_stack.url))
    assert result.returncode == 0, result.stderr
    argv = _args(stub_bin, "conscience")
    assert argv[:1] == ["train"]
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options == {
        "--store": "postgresql://conscience:pw@postgres:5432/conscience",
        "--base-model": "Qwen/Base",
        "--out": options["--out"],
        "--publish": fake_stack.url,
        "--proxy-admin": fake_stack.url,
        "--max-minutes": "600",  # a night, unless MAX_MINUTES says otherwise
        "--init-adapter": "current",  # a warm start from the adapter served now
    }
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/run-\d{8}-\d{6}", options["--out"])
    assert (tmp_path / "CURRENT").read_text(encoding="utf-8") == "run-new\n"


def test_nightly_on_the_cpu_stack_publishes_to_the_proxys_engine_on_a_budget(
    tmp_path, stub_bin, fake_stack
):
    fake_stack.served.add("run-new")
    fake_stack.generator = "run-new"
    env = _nightly_env(tmp_path, stub_bin, fake_stack.url, PUBLISH="embedded", MAX_MINUTES="45")
    result = _run("nightly.sh", env)
    assert result.returncode == 0, result.stderr
    argv = _args(stub_bin, "conscience")
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--publish"] == "embedded"
    assert options["--max-minutes"] == "45"
    assert (tmp_path / "CURRENT").read_text(encoding="utf-8") == "run-new\n"


def test_nightly_refits_the_probe_when_asked_to(tmp_path, stub_bin, fake_stack):
    fake_stack.served.add("run-new")
    fake_stack.generator = "run-new"
    env = _nightly_env(
        tmp_path,
        stub_bin,
        fake_stack.url,
        PROBE_REFIT_MIN_LABELS="50",
        PROBE_BASE_VECTORS="/data/probe.json.vectors/three-laws",
    )
    result = _run("nightly.sh", env)
    assert result.returncode == 0, result.stderr
    argv = _args(stub_bin, "conscience")  # the last command: the refit, after the training
    assert argv[:2] == ["fit", "probe"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options == {
        "--labels-from": "postgresql://conscience:pw@postgres:5432/conscience",
        "--min-new-labels": "50",
        "--publish": fake_stack.url,
        "--out": str(tmp_path / "probe-refit" / "candidate.json"),
        "--base-vectors": "/data/probe.json.vectors/three-laws",
    }
    del env["PROBE_BASE_VECTORS"]  # then the states beside the candidate
    assert _run("nightly.sh", env).returncode == 0
    argv = _args(stub_bin, "conscience")
    assert argv[argv.index("--base-vectors") + 1] == str(tmp_path / "probe-refit" / "base")
    # Without PROBE_REFIT_MIN_LABELS the night ends with the training.
    result = _run("nightly.sh", _nightly_env(tmp_path, stub_bin, fake_stack.url))
    assert result.returncode == 0, result.stderr
    assert _args(stub_bin, "conscience")[:1] == ["train"]


def test_nightly_refuses_to_start_without_the_admin_key(tmp_path, stub_bin, fake_stack):
    env = _nightly_env(tmp_path, stub_bin, fake_stack.url, CONSCIENCE_ADMIN_KEY="")
    result = _run("nightly.sh", env)
    assert result.returncode == 2
    assert "CONSCIENCE_ADMIN_KEY" in result.stderr
    assert not (stub_bin / "conscience.args").exists()


def test_nightly_skips_a_run_while_another_holds_the_lock(tmp_path, stub_bin, fake_stack):
    with open(tmp_path / ".nightly.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _run("nightly.sh", _nightly_env(tmp_path, stub_bin, fake_stack.url))
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr
    assert not (stub_bin / "conscience.args").exists()


def test_nightly_stops_when_training_fails(tmp_path, stub_bin, fake_stack):
    (stub_bin / "conscience").write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    result = _run("nightly.sh", _nightly_env(tmp_path, stub_bin, fake_stack.url))
    assert result.returncode == 3
    assert not (tmp_path / "CURRENT").exists()
    assert fake_stack.calls == []


# --- adapter.py (publish, roll back, record)


def _publish(stack, adapters: Path, name: str) -> str:
    with httpx.Client(timeout=10) as client:
        return adapter.publish(
            client, name, vllm=stack.url, proxy=stack.url, adapters=adapters, admin_key=ADMIN_KEY
        )


def test_publish_loads_into_vllm_then_switches_the_proxy_then_records(tmp_path, fake_stack):
    path = _make_adapter(tmp_path, "run-2")
    _publish(fake_stack, tmp_path, "run-2")
    posts = [(p, body) for method, p, body in fake_stack.calls if method == "POST"]
    assert posts == [
        ("/v1/load_lora_adapter", {"lora_name": "run-2", "lora_path": str(path)}),
        ("/admin/adapter", {"model": "run-2"}),
    ]
    assert fake_stack.generator == "run-2"
    assert adapter.read_current(tmp_path) == "run-2"


def test_rollback_to_a_served_model_loads_nothing(tmp_path, fake_stack):
    fake_stack.generator = "run-2"
    fake_stack.served.add("run-2")
    _publish(fake_stack, tmp_path, "base/model")
    assert [p for method, p, _ in fake_stack.calls if method == "POST"] == ["/admin/adapter"]
    assert fake_stack.generator == "base/model"
    assert adapter.read_current(tmp_path) == "base/model"


@pytest.mark.parametrize("name", ["run-absent", "../run-2", "/adapters/run-2"])
def test_publish_refuses_what_is_not_an_adapter_and_records_nothing(tmp_path, fake_stack, name):
    _make_adapter(tmp_path, "run-2")
    with pytest.raises(adapter.AdapterError):
        _publish(fake_stack, tmp_path, name)
    assert fake_stack.generator == "base/model"
    assert adapter.read_current(tmp_path) is None


def test_a_failed_load_leaves_the_proxy_and_current_alone(tmp_path, fake_stack):
    _make_adapter(tmp_path, "run-3")
    adapter.write_current(tmp_path, "run-1")
    fake_stack.fail_load = True
    with pytest.raises(adapter.AdapterError, match="cannot load"):
        _publish(fake_stack, tmp_path, "run-3")
    assert fake_stack.generator == "base/model"
    assert adapter.read_current(tmp_path) == "run-1"


def test_record_writes_the_proxys_generator(tmp_path, fake_stack):
    fake_stack.generator = "run-9"
    with httpx.Client(timeout=10) as client:
        name = adapter.record(client, proxy=fake_stack.url, adapters=tmp_path, admin_key=ADMIN_KEY)
    assert name == "run-9"
    assert (tmp_path / "CURRENT").read_text(encoding="utf-8") == "run-9\n"


def test_restore_switches_only_when_the_proxy_is_on_another_model(tmp_path, fake_stack):
    with httpx.Client(timeout=10) as client:
        kwargs = {"proxy": fake_stack.url, "adapters": tmp_path, "admin_key": ADMIN_KEY}
        assert adapter.restore(client, **kwargs) is None  # nothing recorded: nothing to do
        adapter.write_current(tmp_path, "base/model")
        assert adapter.restore(client, **kwargs) == "base/model"
        assert not [c for c in fake_stack.calls if c[0] == "POST"]
        fake_stack.served.add("run-8")
        adapter.write_current(tmp_path, "run-8")
        assert adapter.restore(client, **kwargs) == "run-8"
    assert fake_stack.generator == "run-8"


def test_restore_gives_up_on_a_proxy_that_never_answers(tmp_path):
    adapter.write_current(tmp_path, "run-8")
    with httpx.Client(timeout=1) as client, pytest.raises(adapter.AdapterError, match="answer"):
        adapter.restore(
            client, proxy="http://127.0.0.1:9", adapters=tmp_path, admin_key="k", wait_s=0.5
        )


def test_list_shows_adapters_newest_first_with_their_status(tmp_path):
    old = _make_adapter(tmp_path, "run-old", "trained")
    _make_adapter(tmp_path, "run-new", "rejected")
    (tmp_path / "not-an-adapter").mkdir()
    os.utime(old, (1, 1))
    listed = adapter.list_adapters(tmp_path)
    assert [(a["name"], a["status"]) for a in listed] == [
        ("run-new", "rejected"),
        ("run-old", "trained"),
    ]


def test_adapter_cli_publish_uses_the_settings_admin_key(tmp_path, fake_stack, monkeypatch):
    _make_adapter(tmp_path, "run-5")
    monkeypatch.setenv("CONSCIENCE_ADMIN_KEY", ADMIN_KEY)
    argv = ["--vllm", fake_stack.url, "--proxy", fake_stack.url, "--adapters", str(tmp_path)]
    assert adapter.main([*argv, "publish", "run-5"]) == 0
    assert fake_stack.generator == "run-5"
    monkeypatch.delenv("CONSCIENCE_ADMIN_KEY")
    assert adapter.main([*argv, "record"]) == 1  # no admin key: a clear error, exit 1


# --- requirements.py (the Dockerfile's dependency layer)


def test_requirements_of_the_engine_and_train_extras():
    pyproject = ROOT / "pyproject.toml"
    engine = requirements.requirements(pyproject, ["engine"])
    assert any(r.startswith("xllamacpp") for r in engine)
    assert not any(r.startswith("torch") for r in engine)
    train = requirements.requirements(pyproject, ["train"])
    assert "torch==2.13.0" in train
    assert len(train) == len(set(train))


def test_requirements_refuses_an_unknown_extra():
    with pytest.raises(ValueError, match="unknown extra"):
        requirements.requirements(ROOT / "pyproject.toml", ["gpu"])
