"""Loading the causal LM and its tokenizer, and wrapping the model in a LoRA adapter.

Any causal LM that transformers loads works: an HF directory, or a ``.gguf`` file whose
quantized weights are dequantized to dense ones (training needs real tensors), once, into a
verified cache (``trainer/dense.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from conscience.trainer.config import TrainConfig
from conscience.trainer.dense import source_of

__all__ = [
    "cpu_has_fast_bf16",
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


# CPU flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles): where oneDNN runs
# bf16 matmuls natively, not by converting to fp32 and back (docs/decisions.md, "Precision").
_FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively (Linux: its flags; elsewhere: assume not)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_FAST_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def resolve_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        # bf16 halves memory and runs on tensor cores; on a CPU only where it multiplies bf16
        # natively (there 1.2x faster than fp32 per step, measured), else fp32 is faster.
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]


def load_tokenizer(config: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source_of(config.model, config.dense_cache))


def pad_id(tokenizer: Any) -> int:
    """Any id does for padding (it is masked out); prefer the tokenizer's own."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def load_base(config: TrainConfig, dtype: torch.dtype) -> Any:
    """The base model of ``config.model`` (a GGUF's dense checkpoint), no adapter, on the CPU,
    with no KV cache (nothing here generates)."""
    from transformers import AutoModelForCausalLM

    source = source_of(config.model, config.dense_cache)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    base.config.use_cache = False  # no generation here; the KV cache would only cost memory
    return base


def load_model(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> Any:
    """The base model with a fresh LoRA adapter (seeded), or the ``init_adapter`` to continue,
    on ``device``; only LoRA trains."""
    from peft import LoraConfig, get_peft_model

    base = load_base(config, dtype)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no requires_grad on the embeddings' output.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # TRL's disable_dropout: DPO compares log-probs with the reference, and dropout noise on the
    # policy side alone would bias every reward. The adapter's own dropout stays configurable.
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if config.init_adapter is not None:  # a warm start: the adapter served now, trainable
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            base, config.init_adapter, is_trainable=True, autocast_adapter_dtype=True
        )
        return model.to(device)
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
    config: TrainConfig, device: torch.device | None = None, *, load_on: torch.device | None = None
) -> tuple[Any, list[torch.nn.Parameter], torch.optim.Optimizer, torch.device]:
    """The model (base frozen, fresh seeded LoRA adapter, train mode), its trainable
    parameters and their AdamW optimizer, on ``device`` (default: the configured one) and
    the configured dtype for it; ``load_on`` another device (the CPU, for a base to be split
    over several processes onto theirs) leaves the model there."""
    device = device or resolve_device(config)
    model = load_model(config, load_on or device, resolve_dtype(config, device))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return model, params, optimizer, device
