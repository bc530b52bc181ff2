#!/bin/sh
# The proxy's start on the GPU stack (docker-compose.yml, service `proxy`): `conscience serve`
# with the given flags; once it answers, it is switched to the adapter recorded in
# $ADAPTERS_DIR/CURRENT (deploy/adapter.py restore), so that a restarted proxy generates with
# the adapter published last. The public model name (CONSCIENCE_MODEL) stays what it is: only
# the generator behind it changes, as with POST /admin/adapter. Without CURRENT, or without an
# admin key, the generator is CONSCIENCE_MODEL itself (the base model).
set -eu

adapters="${ADAPTERS_DIR:-/adapters}"
here="$(dirname "$0")"

conscience serve "$@" &
server=$!
# docker stop signals this shell (PID 1): pass it on and let the proxy shut down cleanly.
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT

if [ -s "$adapters/CURRENT" ] && [ -n "${CONSCIENCE_ADMIN_KEY:-}" ]; then
    python "$here/adapter.py" --adapters "$adapters" \
        --proxy "http://127.0.0.1:${CONSCIENCE_PORT:-8000}" restore &
fi

# A trapped signal ends `wait` early, while the proxy is still stopping: wait again until it
# is gone, then leave with its exit status.
while :; do
    status=0
    wait "$server" || status=$?
    if ! kill -0 "$server" 2>/dev/null; then
        exit "$status"
    fi
done
