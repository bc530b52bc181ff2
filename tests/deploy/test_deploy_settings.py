"""The CONSCIENCE_* variables of the deployment are the fields of `conscience.settings.Settings`,
all of them are documented in .env.example, and the health checks probe routes that exist."""

import re

import pytest
from deploy_files import (
    COMPOSE,
    DEPLOY,
    DEPLOY_DOC,
    DOCKERFILE,
    ENV_EXAMPLE,
    app_routes,
    compose_variables,
    dockerfile_instructions,
    env_example_entries,
    env_names,
    environment,
    load_compose,
    stages,
)
from pydantic import ValidationError

from conscience.server.app import create_app
from conscience.settings import Settings

PREFIX = "CONSCIENCE_"
FIELDS = {PREFIX + name.upper() for name in Settings.model_fields}
FILES = [
    DOCKERFILE,
    COMPOSE,
    ENV_EXAMPLE,
    DEPLOY_DOC,
    *sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".pyc"),
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(COMPOSE.parent)))
def test_every_conscience_variable_is_a_settings_field(path):
    unknown = env_names(path.read_text(encoding="utf-8")) - FIELDS
    assert not unknown, f"{path.name} uses {sorted(unknown)}, which Settings does not have"


def test_every_settings_field_is_documented_in_env_example():
    entries = env_example_entries()
    missing = FIELDS - set(entries)
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_each_env_example_setting_has_a_one_line_comment_above_it():
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.fullmatch(r"(#\s*)?[A-Z][A-Z0-9_]*=.*", line.strip()):
            above = lines[number - 1].strip()
            assert above.startswith("#") and not re.fullmatch(r"#\s*[A-Z][A-Z0-9_]*=.*", above), (
                f".env.example line {number + 1} ({line}) has no comment above it"
            )


@pytest.mark.parametrize("name", sorted(env_example_entries()))
def test_env_example_values_are_valid_settings(name):
    """A value shown in .env.example, once uncommented, is one that Settings accepts."""
    value, _active = env_example_entries()[name]
    if not name.startswith(PREFIX) or value == "":
        return
    field = name.removeprefix(PREFIX).lower()
    try:
        Settings.model_validate({field: value})
    except ValidationError as exc:
        pytest.fail(f".env.example: {name}={value} is not valid: {exc}")


def test_env_example_active_settings_are_safe_when_empty():
    """Uncommented CONSCIENCE_* lines reach the containers even when empty: only fields that
    read an empty value as unset may be active with no value."""
    for name, (value, active) in env_example_entries().items():
        if name.startswith(PREFIX) and active and value == "":
            Settings.model_validate({name.removeprefix(PREFIX).lower(): ""})


def test_env_example_defines_every_variable_the_compose_file_interpolates():
    missing = compose_variables() - set(env_example_entries())
    assert not missing, f".env.example lacks {sorted(missing)}, used by docker-compose.yml"


def test_env_example_holds_no_secret_values():
    for name, (value, _active) in env_example_entries().items():
        if re.search(r"(^|_)(KEYS?|PASSWORD|TOKEN|SECRET)(_|$)", name):
            assert value == "", f".env.example must not carry a value for {name}"


def test_the_compose_file_passes_every_setting_to_the_proxies():
    """A setting put in .env reaches the proxy containers (set per service or passed through)."""
    services = load_compose()["services"]
    for name in ("proxy", "proxy-cpu"):
        passed = set(environment(services[name]))
        # proxy-cpu runs the embedded engine: no upstream, and the judge is the one model it has.
        exempt = (
            {"CONSCIENCE_UPSTREAM_URL", "CONSCIENCE_JUDGE_MODEL"} if name == "proxy-cpu" else set()
        )
        # The listen address is the command line's (--host 0.0.0.0).
        exempt |= {"CONSCIENCE_HOST"}
        if name == "proxy":
            exempt |= {"CONSCIENCE_MODEL_CACHE_DIR"}  # the GPU proxy fetches no packaged model
        missing = FIELDS - passed - exempt
        assert not missing, f"service {name} does not pass {sorted(missing)}"


def test_the_image_defaults_are_valid_settings():
    runtime = stages(dockerfile_instructions())[-1]
    env = {}
    for instruction in runtime:
        if instruction.keyword == "ENV":
            env.update(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", instruction.args))
    fields = {k.removeprefix(PREFIX).lower(): v for k, v in env.items() if k.startswith(PREFIX)}
    settings = Settings.model_validate(fields)
    assert settings.host == "0.0.0.0"
    assert str(settings.model_cache_dir) == "/models"
    assert settings.store_url == "sqlite:///data/judgements.sqlite3"


# --- the routes that health checks and the deploy scripts call


def _routes() -> dict[str, set[str]]:
    return app_routes(create_app(Settings(upstream_url="http://x/v1")))


def _health_paths() -> list[tuple[str, str]]:
    """(where, path) of every health check of our image: the Dockerfile's and the compose
    services built from the Dockerfile."""
    found = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "HEALTHCHECK":
            found += [
                ("Dockerfile", p)
                for p in re.findall(r"127\.0\.0\.1:[^/]*(/[\w/-]*)", instruction.args)
            ]
    for name, service in load_compose()["services"].items():
        if "build" in service and "healthcheck" in service:
            test = " ".join(map(str, service["healthcheck"].get("test") or []))
            found += [
                (f"compose {name}", p) for p in re.findall(r"127\.0\.0\.1:\d+(/[\w/-]*)", test)
            ]
    return found


def test_health_checks_probe_routes_of_the_app():
    routes = _routes()
    checks = _health_paths()
    assert {where for where, _ in checks} >= {"Dockerfile", "compose proxy", "compose proxy-cpu"}
    for where, path in checks:
        assert "GET" in routes.get(path, set()), f"{where} probes {path}, which the app lacks"


def test_the_admin_route_the_deploy_scripts_call_exists():
    routes = _routes()
    assert {"GET", "POST"} <= routes.get("/admin/adapter", set())
