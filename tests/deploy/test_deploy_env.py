"""deploy/env.sh, the quick start's one command for a .env: fresh secrets, the profile asked
for, nothing overwritten, no secret printed; and compose hands its admin key to both the CPU
proxy and its nightly job."""

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from deploy_files import DEPLOY, ENV_EXAMPLE


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The two files the script reads, where it expects them."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(DEPLOY / "env.sh", tmp_path / "deploy" / "env.sh")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    return tmp_path


def _env_sh(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(checkout / "deploy" / "env.sh"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _values(env_file: Path) -> dict[str, str]:
    lines = env_file.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))


def test_env_sh_writes_fresh_secrets_for_the_cpu_stack(checkout: Path):
    result = _env_sh(checkout, "cpu")
    assert result.returncode == 0, result.stderr
    env_file = checkout / ".env"
    values = _values(env_file)
    assert values["COMPOSE_PROFILES"] == "cpu"
    assert re.fullmatch(r"[0-9a-f]{64}", values["CONSCIENCE_ADMIN_KEY"])
    assert re.fullmatch(r"[0-9a-f]{48}", values["POSTGRES_PASSWORD"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # Every other line is the example's.
    example = _values(ENV_EXAMPLE)
    changed = {k for k in example if example[k] != values[k]}
    assert changed == {"COMPOSE_PROFILES", "CONSCIENCE_ADMIN_KEY", "POSTGRES_PASSWORD"}
    for secret in (values["CONSCIENCE_ADMIN_KEY"], values["POSTGRES_PASSWORD"]):
        assert secret not in result.stdout + result.stderr


def test_env_sh_keys_differ_between_runs_and_an_existing_env_is_kept(checkout: Path):
    assert _env_sh(checkout, "gpu").returncode == 0
    first = (checkout / ".env").read_text(encoding="utf-8")
    first_key = _values(checkout / ".env")["CONSCIENCE_ADMIN_KEY"]
    assert _values(checkout / ".env")["COMPOSE_PROFILES"] == "gpu"
    again = _env_sh(checkout, "cpu")
    assert again.returncode == 1 and "exists already" in again.stderr
    assert (checkout / ".env").read_text(encoding="utf-8") == first
    (checkout / ".env").unlink()
    assert _env_sh(checkout).returncode == 0  # gpu by default
    assert _values(checkout / ".env")["CONSCIENCE_ADMIN_KEY"] != first_key


def test_env_sh_refuses_an_unknown_profile(checkout: Path):
    result = _env_sh(checkout, "tpu")
    assert result.returncode == 2 and "usage" in result.stderr
    assert not (checkout / ".env").exists()


def test_compose_gives_the_generated_admin_key_to_proxy_cpu_and_trainer_cpu(checkout: Path):
    from test_deploy_lint import _config  # the compose binary itself, or a skip

    assert _env_sh(checkout, "cpu").returncode == 0
    key = _values(checkout / ".env")["CONSCIENCE_ADMIN_KEY"]
    result = _config(
        "--profile",
        "cpu",
        "--profile",
        "train-cpu",
        "config",
        "--format",
        "json",
        env_file=checkout / ".env",
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("proxy-cpu", "trainer-cpu"):
        assert services[name]["environment"]["CONSCIENCE_ADMIN_KEY"] == key, name
