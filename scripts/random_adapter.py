"""A random LoRA adapter with Qwen2.5-Coder-1.5B's attention shapes, in peft's format.

For scripts/publish-timing.sh (what matters there is the adapter's size and shapes, not what
it does to answers)::

    python scripts/random_adapter.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

RANK, ALPHA, LAYERS, HIDDEN, KV = 16, 32, 28, 1536, 256  # the trainer's default LoRA, the model's
OUTPUTS = {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN}


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(LAYERS):
        for module, n_out in OUTPUTS.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = rng.standard_normal((RANK, HIDDEN)) * 0.02
            b = rng.standard_normal((n_out, RANK)) * 0.02
            tensors[f"{prefix}.lora_A.weight"] = a.astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = b.astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": list(OUTPUTS),
        "task_type": "CAUSAL_LM",
    }
    (out / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
