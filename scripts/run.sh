#!/usr/bin/env bash
# Runs `conscience ARGS...`, creating .venv and installing the project on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/conscience ]; then
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[engine]"
fi
exec .venv/bin/conscience "$@"
