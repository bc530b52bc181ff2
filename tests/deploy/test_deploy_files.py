"""The Dockerfile and docker-compose.yml parse and say what docs/deploy.md promises.

No Docker engine is needed: the files are read as text and YAML. (test_deploy_lint.py runs
hadolint, shellcheck and `docker compose config` where they are installed.)
"""

import re

from deploy_files import (
    COMPOSE,
    DEPLOY,
    DOCKERIGNORE,
    as_argv,
    dockerfile_instructions,
    environment,
    exec_form,
    last,
    load_compose,
    stages,
)

BASE_MODEL = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
DEFAULT_BASE_MODEL = "${BASE_MODEL:-" + BASE_MODEL + "}"

# --- Dockerfile


def test_dockerfile_parses_into_known_instructions():
    known = {
        "FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "VOLUME",
        "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL",
    }  # fmt: skip
    instructions = dockerfile_instructions()
    assert instructions[0].keyword == "ARG"  # the base image, shared by both stages
    assert {i.keyword for i in instructions} <= known


def test_dockerfile_is_multi_stage_with_a_slim_runtime():
    instructions = dockerfile_instructions()
    base = re.fullmatch(r"PYTHON_IMAGE=(\S+)", instructions[0].args)
    assert base and base.group(1) == "python:3.11-slim"
    builder, runtime = stages(instructions)
    assert builder[0].args == "${PYTHON_IMAGE} AS builder"
    assert runtime[0].args == "${PYTHON_IMAGE} AS runtime"
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    # No compiler or build tool in the runtime stage.
    runtime_runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert not re.search(r"build-essential|gcc|pip install", runtime_runs)


def test_dockerfile_extras_build_arg_defaults_to_the_engine_and_otel():
    builder = stages(dockerfile_instructions())[0]
    args = dict(i.args.partition("=")[::2] for i in builder if i.keyword == "ARG")
    assert args["EXTRAS"] == "engine,otel"  # the proxy, able to export traces
    assert args["TORCH_INDEX_URL"] == ""
    install = " ".join(i.args for i in builder if i.keyword == "RUN")
    assert 'requirements.py "$EXTRAS"' in install
    assert '--index-url "$TORCH_INDEX_URL"' in install


def test_dockerfile_runs_as_a_non_root_user():
    runtime = stages(dockerfile_instructions())[-1]
    user = last(runtime, "USER")
    assert user is not None
    assert user.args.split(":")[0] not in ("root", "0")
    assert user.args == "10001:10001"
    assert "useradd --system --uid 10001" in " ".join(i.args for i in runtime)


def test_dockerfile_health_check_expose_entrypoint_and_command():
    runtime = stages(dockerfile_instructions())[-1]
    assert last(runtime, "EXPOSE").args == "8000"
    health = last(runtime, "HEALTHCHECK").args
    assert "/health" in health and "urllib.request" in health
    assert exec_form(health.split("CMD", 1)[1].strip())[0] == "python"
    assert exec_form(last(runtime, "ENTRYPOINT").args) == ["conscience"]
    assert exec_form(last(runtime, "CMD").args) == ["serve", "--host", "0.0.0.0"]


def test_dockerfile_keeps_models_and_adapters_on_volumes():
    runtime = stages(dockerfile_instructions())[-1]
    volumes = exec_form(last(runtime, "VOLUME").args)
    assert {"/models", "/adapters"} <= set(volumes)
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "CONSCIENCE_MODEL_CACHE_DIR=/models" in env


def test_dockerfile_bakes_in_no_secret():
    for instruction in dockerfile_instructions():
        if instruction.keyword in ("ENV", "ARG"):
            for name, value in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S*)", instruction.args):
                if re.search(r"(^|_)(KEYS?|PASSWORD|TOKEN|SECRET)(_|$)", name):
                    raise AssertionError(f"line {instruction.line}: {name}={value} baked in")


def test_dockerfile_copies_files_that_exist_and_are_not_ignored():
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for instruction in dockerfile_instructions():
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        sources = [w for w in instruction.args.split() if not w.startswith("--")][:-1]
        for source in sources:
            assert (COMPOSE.parent / source).exists(), f"COPY {source}: no such file"
            top = source.rstrip("/").split("/")[0]
            assert top not in ignored, f"COPY {source}, but .dockerignore leaves out {top}"


def test_dockerignore_keeps_secrets_and_virtualenvs_out():
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    for pattern in (".env", "**/.venv", "**/.git", "**/*.sqlite3"):
        assert pattern in ignored


def test_deploy_scripts_the_image_runs_are_executable():
    for name in ("serve.sh", "nightly.sh", "adapter.py", "vllm-serve.sh"):
        assert (DEPLOY / name).stat().st_mode & 0o111, f"deploy/{name} is not executable"


# --- docker-compose.yml


def test_compose_parses_with_the_expected_services_and_profiles():
    services = load_compose()["services"]
    profiles = {name: tuple(service.get("profiles", ())) for name, service in services.items()}
    assert profiles == {
        "vllm": ("gpu",),
        "postgres": ("gpu",),
        "proxy": ("gpu",),
        "volume-init": ("gpu",),
        # train-cpu too: `run trainer-cpu` turns on that profile alone, and it depends on proxy-cpu.
        "proxy-cpu": ("cpu", "train-cpu"),
        "trainer": ("train",),
        "trainer-cpu": ("train-cpu",),
    }


def _active(profiles: set[str]) -> set[str]:
    """The services `up` starts with these profiles (every service here has a profile)."""
    services = load_compose()["services"]
    return {name for name, s in services.items() if set(s.get("profiles", ())) & profiles}


def test_cpu_profile_starts_no_gpu_service_and_the_default_is_the_gpu_stack():
    services = load_compose()["services"]
    cpu = _active({"cpu"})
    assert cpu == {"proxy-cpu"}
    assert not any("deploy" in services[name] for name in cpu)  # no GPU reservation
    assert _active({"gpu"}) == {"vllm", "postgres", "proxy", "volume-init"}
    env_example = (COMPOSE.parent / ".env.example").read_text(encoding="utf-8")
    assert re.search(r"^COMPOSE_PROFILES=gpu$", env_example, re.MULTILINE)


def _gpu_devices(service: dict) -> list[dict]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def test_vllm_serves_the_base_model_with_lora():
    vllm = load_compose()["services"]["vllm"]
    assert vllm["image"].startswith("${VLLM_IMAGE:-vllm/vllm-openai:")
    command = as_argv(vllm["command"])
    for flag in ("--enable-lora", "--max-lora-rank=16", "--enable-prefix-caching"):
        assert flag in command
    env = environment(vllm)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["BASE_MODEL"] == DEFAULT_BASE_MODEL
    assert "adapters:/adapters:ro" in vllm["volumes"]
    assert any(v.startswith("hf-cache:") for v in vllm["volumes"])
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert _gpu_devices(vllm)[0]["driver"] == "nvidia"
    assert "gpu" in _gpu_devices(vllm)[0]["capabilities"]


def test_vllm_start_script_runs_vllm_serve_on_the_base_model():
    vllm = load_compose()["services"]["vllm"]
    assert as_argv(vllm["entrypoint"]) == ["/bin/sh", "/deploy/vllm-serve.sh"]
    assert "./deploy/vllm-serve.sh:/deploy/vllm-serve.sh:ro" in vllm["volumes"]
    script = (DEPLOY / "vllm-serve.sh").read_text(encoding="utf-8")
    assert 'exec vllm serve "$model" "$@"' in script


def test_proxy_points_at_vllm_and_postgres():
    services = load_compose()["services"]
    proxy = services["proxy"]
    env = environment(proxy)
    assert env["CONSCIENCE_UPSTREAM_URL"] == "http://vllm:8000/v1"
    assert env["CONSCIENCE_JUDGE_MODEL"] == DEFAULT_BASE_MODEL
    assert env["CONSCIENCE_MODEL"] == DEFAULT_BASE_MODEL
    assert env["CONSCIENCE_STORE_URL"].startswith("postgresql://conscience:")
    assert env["CONSCIENCE_STORE_URL"].endswith("@postgres:5432/conscience")
    assert proxy["ports"] == ["${PROXY_BIND:-127.0.0.1}:${PROXY_PORT:-8000}:8000"]
    assert proxy["depends_on"] == {
        "vllm": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert "/health" in " ".join(proxy["healthcheck"]["test"])
    # The trainer reaches the same store.
    assert environment(services["trainer"])["CONSCIENCE_STORE_URL"] == env["CONSCIENCE_STORE_URL"]


def test_postgres_has_a_volume_and_a_readiness_check():
    postgres = load_compose()["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_proxy_cpu_runs_the_embedded_engine_without_gpu():
    proxy_cpu = load_compose()["services"]["proxy-cpu"]
    env = environment(proxy_cpu)
    assert "CONSCIENCE_UPSTREAM_URL" not in env  # no upstream: the embedded engine
    assert env["CONSCIENCE_MODEL_CACHE_DIR"] == "/models"
    assert "model-cache:/models" in proxy_cpu["volumes"]
    assert "deploy" not in proxy_cpu
    assert "depends_on" not in proxy_cpu


def test_trainer_shares_the_adapters_with_vllm_and_has_a_gpu():
    services = load_compose()["services"]
    trainer = services["trainer"]
    assert trainer["build"]["args"]["EXTRAS"] == "train"
    assert "adapters:/adapters" in trainer["volumes"]  # read-write
    assert _gpu_devices(trainer)[0]["driver"] == "nvidia"
    assert as_argv(trainer["entrypoint"]) == ["/app/deploy/nightly.sh"]
    assert trainer["healthcheck"] == {"disable": True}
    assert trainer["depends_on"]["volume-init"] == {"condition": "service_completed_successfully"}
    init = services["volume-init"]
    assert as_argv(init["entrypoint"]) == ["chown", "10001:10001", "/adapters"]
    assert "adapters:/adapters" in init["volumes"]


def test_every_named_volume_is_declared():
    compose = load_compose()
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"service {name} mounts undeclared volume {source}"


def test_the_schedulers_run_the_trainer_service():
    assert "trainer" in load_compose()["services"]
    for path in (DEPLOY / "crontab", DEPLOY / "systemd" / "conscience-nightly.service"):
        text = path.read_text(encoding="utf-8")
        assert "docker compose run --rm -T trainer" in text, path.name
    timer = (DEPLOY / "systemd" / "conscience-nightly.timer").read_text(encoding="utf-8")
    assert "OnCalendar=" in timer
