"""Loading the causal LM and its tokenizer, and wrapping the model in a LoRA adapter.

Any causal LM that transformers loads works: an HF directory, or a ``.gguf`` file whose
quantized weights are dequantized to dense ones (training needs real tensors). A dequantized GGUF
takes a while to convert; save it once as an HF checkpoint when it is trained on repeatedly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conscience.trainer.config import TrainConfig

__all__ = [
    "load_model",
    "load_tokenizer",
    "pad_id",
    "prepare_training",
    "resolve_device",
    "resolve_dtype",
]


def resolve_device(config: TrainConfig) -> torch.device:
    if config.device != "auto":
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        # bf16 halves memory and runs on tensor cores; CPU bf16 matmuls are slower than fp32
        # on most CPUs, so CPU keeps full precision.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]


def _source(model: str) -> tuple[str, dict[str, Any]]:
    """``(directory, extra from_pretrained kwargs)`` for an HF dir or a .gguf file."""
    path = Path(model)
    if path.suffix != ".gguf":
        return model, {}
    return str(path.parent), {"gguf_file": path.name}


def load_tokenizer(config: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    directory, kwargs = _source(config.model)
    return AutoTokenizer.from_pretrained(directory, **kwargs)


def pad_id(tokenizer: Any) -> int:
    """Any id does for padding (it is masked out); prefer the tokenizer's own."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def load_model(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> Any:
    """The base model with a fresh LoRA adapter (seeded), on ``device``; only LoRA trains."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    directory, kwargs = _source(config.model)
    if "gguf_file" in kwargs:
        try:
            from transformers import GgufConfig
        except ImportError:  # older transformers dequantize GGUF without being asked
            pass
        else:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)
    base.config.use_cache = False  # no generation here; the KV cache would only cost memory
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no requires_grad on the embeddings' output.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # TRL's disable_dropout: DPO compares log-probs with the reference, and dropout noise on the
    # policy side alone would bias every reward. The adapter's own dropout stays configurable.
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        use_rslora=config.use_rslora,
        target_modules=(
            config.lora_targets
            if isinstance(config.lora_targets, str)
            else list(config.lora_targets)
        ),
        bias="none",  # vLLM serves LoRA without bias terms
        task_type="CAUSAL_LM",
    )
    # The A matrices are drawn at random: seed them so one seed gives one adapter.
    torch.manual_seed(config.seed)
    # autocast_adapter_dtype keeps the adapter in fp32 over a bf16 base: AdamW's updates to
    # small LoRA weights would round away in bf16.
    model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    return model.to(device)


def prepare_training(
    config: TrainConfig,
) -> tuple[Any, list[torch.nn.Parameter], torch.optim.Optimizer, torch.device]:
    """The model (base frozen, fresh seeded LoRA adapter, train mode), its trainable
    parameters and their AdamW optimizer, on the configured device and dtype."""
    device = resolve_device(config)
    model = load_model(config, device, resolve_dtype(config, device))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return model, params, optimizer, device
