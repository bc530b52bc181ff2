#!/bin/sh
# The nightly retraining job (docker-compose.yml, service `trainer`; scheduled by the host:
# deploy/crontab or deploy/systemd/). One run:
#   1. `conscience train` learns a LoRA adapter from the store's unconsumed preference pairs
#      into $ADAPTERS_DIR/run-<UTC date-time>, runs the evaluation gate, and when the adapter
#      passes, publishes it to vLLM (PUBLISH=embedded: to the proxy's own engine, the CPU
#      stack) and switches the proxy to it; MAX_MINUTES (default 600) bounds the training's
#      wall time: it stops at a step boundary and leaves the pairs it did not reach for the
#      next night; it continues from the adapter in CURRENT (a warm start), so the nights add up;
#   2. adapter.py record writes the proxy's generator to $ADAPTERS_DIR/CURRENT, which vLLM and
#      the proxy read when they restart;
#   3. with PROBE_REFIT_MIN_LABELS set (off by default): when at least that many human labels are
#      new to the probe the proxy serves, `conscience fit probe --labels-from` refits the judge's
#      probe on them and publishes it to the proxy, which switches only if its gate passed
#      (PROBE_BASE_VECTORS, default $PROBE_DIR/base: the training and dev states an earlier
#      `conscience fit probe` kept beside its output, so that the labelled sets need not be on
#      this host; the labels' states are kept in $PROBE_DIR between nights).
# A run still going when the next one is due makes the next one exit (a lock on the volume).
set -eu

adapters="${ADAPTERS_DIR:-/adapters}"
vllm_url="${VLLM_URL:-http://vllm:8000}"
publish="${PUBLISH:-$vllm_url}"
max_minutes="${MAX_MINUTES:-600}"
proxy_url="${PROXY_URL:-http://proxy:8000}"
here="$(dirname "$0")"
run="run-$(date -u +%Y%m%d-%H%M%S)"

if [ -z "${CONSCIENCE_ADMIN_KEY:-}" ]; then
    echo "nightly.sh: CONSCIENCE_ADMIN_KEY is not set: the job cannot switch the proxy" >&2
    exit 2
fi
: "${CONSCIENCE_STORE_URL:?CONSCIENCE_STORE_URL is not set}"
: "${BASE_MODEL:?BASE_MODEL is not set}"

exec 9>"$adapters/.nightly.lock"
if ! flock -n 9; then
    echo "nightly.sh: another run holds $adapters/.nightly.lock; this one is skipped" >&2
    exit 0
fi

echo "nightly.sh: $run: training on $BASE_MODEL, publishing to $publish" >&2
conscience train \
    --store "$CONSCIENCE_STORE_URL" \
    --base-model "$BASE_MODEL" \
    --out "$adapters/$run" \
    --publish "$publish" \
    --proxy-admin "$proxy_url" \
    --max-minutes "$max_minutes" \
    --init-adapter current

python "$here/adapter.py" --vllm "$vllm_url" --proxy "$proxy_url" --adapters "$adapters" record

if [ -n "${PROBE_REFIT_MIN_LABELS:-}" ]; then
    probe_dir="${PROBE_DIR:-$adapters/probe-refit}"
    mkdir -p "$probe_dir"
    echo "nightly.sh: $run: refitting the probe if $PROBE_REFIT_MIN_LABELS labels are new" >&2
    conscience fit probe \
        --labels-from "$CONSCIENCE_STORE_URL" \
        --min-new-labels "$PROBE_REFIT_MIN_LABELS" \
        --publish "$proxy_url" \
        --out "$probe_dir/candidate.json" \
        --base-vectors "${PROBE_BASE_VECTORS:-$probe_dir/base}"
fi
