#!/usr/bin/env bash
# The time to publish an adapter on the embedded engine with the default model
# (docs/benchmarks.md, "Publishing an adapter on the embedded engine"): `conscience serve`
# with CONSCIENCE_ADAPTERS_DIR, a random rank-16 adapter with Qwen2.5-Coder-1.5B's shapes
# (scripts/random_adapter.py), then `conscience adapter publish` and the rollback, each timed.
# Needs .venv with the engine extra and the fetched default model. Run nothing else beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
port="${PORT:-8944}"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
export CONSCIENCE_UPSTREAM_URL="" CONSCIENCE_ADAPTERS_DIR="$work/adapters"
export CONSCIENCE_ADMIN_KEY=timing CONSCIENCE_POLICY=flag
.venv/bin/python scripts/random_adapter.py "$work/adapters/rand-1" >/dev/null
uptime
now() { date +%s.%N; }
t0=$(now)
.venv/bin/python -m conscience.cli serve --port "$port" --store "$work/j.sqlite3" \
    --log-level warning >"$work/serve.log" 2>&1 &
pid=$!
until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.5; done
echo "ready after $(echo "$(now) - $t0" | bc) s"
publish() {
    .venv/bin/python -m conscience.cli adapter --proxy "http://127.0.0.1:$port" \
        --adapters "$work/adapters" publish "$1"
}
t1=$(now)
publish rand-1
echo "publish took $(echo "$(now) - $t1" | bc) s"
ps -o rss=,args= -C python | awk '/child.py/ {print $1 / 1024 " MiB", $NF}'
t2=$(now)
publish qwen2.5-coder-1.5b-instruct
echo "rollback took $(echo "$(now) - $t2" | bc) s"
uptime
