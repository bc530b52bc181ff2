#!/bin/sh
# vLLM's start on the GPU stack (docker-compose.yml, service `vllm`, bind-mounted into the
# official vllm/vllm-openai image): `vllm serve $BASE_MODEL` with the given flags, plus the
# adapter recorded in $ADAPTERS_DIR/CURRENT (if any) loaded at start under its own name. An
# adapter published at run time (POST /v1/load_lora_adapter) is forgotten when vLLM restarts;
# this keeps a restarted vLLM serving the model that the proxy generates with.
set -eu

model="${BASE_MODEL:?BASE_MODEL is not set}"
adapters="${ADAPTERS_DIR:-/adapters}"
current=""
if [ -s "$adapters/CURRENT" ]; then
    current="$(head -n 1 "$adapters/CURRENT")"
fi

case "$current" in
    "" | .* | *[!A-Za-z0-9._-]*)
        # Nothing recorded, the base model (a name with a slash), or not a plain directory name.
        ;;
    *)
        if [ -f "$adapters/$current/adapter_config.json" ]; then
            echo "vllm-serve.sh: loading adapter $current from $adapters/$current" >&2
            set -- "$@" --lora-modules "$current=$adapters/$current"
        else
            echo "vllm-serve.sh: CURRENT names $current, which is not an adapter; not loaded" >&2
        fi
        ;;
esac

exec vllm serve "$model" "$@"
