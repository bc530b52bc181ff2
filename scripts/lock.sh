#!/usr/bin/env bash
# constraints.txt records the versions CI tests with: every package `scripts/test.sh`, `.ci/run`
# and the Dockerfile install is pinned by it (pyproject.toml keeps ranges). This refreshes it to
# the newest releases the ranges admit and runs the whole test suite on them in a fresh venv,
# so an upstream release that breaks the project is found here, not by its users:
#
#   bash scripts/lock.sh            # refresh constraints.txt, then the tests in .venv-newest
#   bash scripts/lock.sh --no-test  # refresh only
#
# Commit constraints.txt when the tests pass; otherwise bound the range that broke in
# pyproject.toml and run it again. Written by uv (`uv pip compile`), resolved for CPython 3.11
# on x86_64 Linux, the platform of CI and the image.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-lock/bin/uv ]; then
    "$PYTHON" -m venv .venv-lock
    .venv-lock/bin/python -m pip install --quiet "uv>=0.9"
fi
.venv-lock/bin/uv pip compile pyproject.toml --upgrade --quiet \
    --extra engine --extra train --extra eval --extra test --extra otel --extra docs \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --no-header --annotation-style line \
    --output-file constraints.txt.new
{
    echo "# The versions CI tests with (pip install -c constraints.txt ...). Written by scripts/lock.sh"
    echo "# (uv pip compile, CPython 3.11, x86_64 Linux); edit pyproject.toml's ranges, not this file."
    cat constraints.txt.new
} > constraints.txt
rm constraints.txt.new
echo "lock: constraints.txt refreshed ($(grep -c '==' constraints.txt) pins)" >&2
if [ "${1:-}" = "--no-test" ]; then
    exit 0
fi
rm -rf .venv-newest
CONSCIENCE_VENV=.venv-newest bash scripts/test.sh -q -ra
