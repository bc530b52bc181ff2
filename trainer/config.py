"""The training run's configuration: one dataclass, every default with its reason.

The numbers of the paper (β, λ, learning rate) are not public; ours are recorded with their
reasons in docs/decisions.md (Training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError

__all__ = ["TrainConfig"]

# Attention projections, the names Llama, Qwen2, Mistral and SmolLM use (and vLLM serves).
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig:
    """One DPO (+ SFT) run on a LoRA adapter. ``model`` and ``out_dir`` are required."""

    model: str  # an HF model directory, or a .gguf file (dequantized once, cached: dense.py)
    out_dir: str  # where the adapter, report.json, metrics.jsonl, loss.png and checkpoints go
    # --- the objective: L = sft_weight·L_SFT + λ·L_DPO, per pair, averaged over the step
    beta: float = 0.1  # DPO temperature: the usual 0.1 keeps the policy near the frozen copy
    dpo_weight: float = 1.0  # λ: DPO and SFT on equal footing, as in RPO (Pang et al. 2024)
    sft_weight: float = 1.0  # L_SFT = mean token NLL of the chosen rewrite; 0 gives pure DPO
    # --- LoRA
    lora_r: int = 16  # rank 16: the baseline's, and within vLLM's --max-lora-rank 16
    lora_alpha: int = 32  # alpha = 2r, the common scaling (update scale alpha/r = 2)
    lora_dropout: float = 0.0  # 0 keeps a resumed run bit-identical (no dropout RNG in forward)
    lora_targets: tuple[str, ...] | str = _ATTENTION  # or "all-linear" (peft's shorthand)
    use_rslora: bool = False  # rank-stabilised LoRA (scale alpha/sqrt(r)), Betley et al.'s recipe
    # Warm start: continue from this adapter (the one served now) instead of a fresh one, so a
    # night adds to what earlier nights learned; its rank, alpha and targets win over the above.
    # The reference stays the base model (adapter off), as for a fresh adapter.
    init_adapter: str | None = None
    # --- optimisation
    lr: float = 5e-5  # peak AdamW lr; LoRA wants ~10x the 5e-7..5e-6 of full-weight DPO
    weight_decay: float = 0.0  # decay would only pull the adapter towards the base model
    warmup_ratio: float = 0.1  # linear warm-up over this share of steps, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine ends at lr·min_lr_ratio, not at 0
    max_grad_norm: float = 1.0  # clip: one odd pair must not blow the adapter away
    batch_size: int = 4  # pairs per micro-batch (each pair is two sequences in the forward)
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: int = 1  # nightly pairs are few and fresh: one pass avoids memorising them
    max_steps: int | None = None  # cap on optimizer steps (the lr schedule spans the cap)
    max_length: int = 1024  # prompt + answer tokens; longer pairs are skipped, never truncated
    max_minutes: float | None = None  # wall-clock budget: stop at the step boundary that fits it
    # --- reference, precision, memory
    precompute_ref: bool = True  # reference log-probs once per run: a forward saved every step
    dtype: str = "auto"  # "auto" = bf16 on CUDA and on CPUs with native bf16, else fp32
    device: str = "auto"  # "auto" = cuda if available, else cpu
    gradient_checkpointing: bool = False  # trade compute for memory on long pairs / big models
    # Under a launcher: the frozen base split over the processes (FSDP), for a model one device
    # cannot hold; the reference then runs live with each step (every pass is a collective).
    shard_base: bool = False
    dense_cache: str | None = None  # where a GGUF's dense checkpoint is kept (None: model cache)
    # --- bookkeeping
    seed: int = 0  # seeds LoRA init and the data order: the same seed, the same adapter
    checkpoint_every: int = 50  # optimizer steps between checkpoints; 0 = never
    resume: bool = False  # continue from out_dir/checkpoint if one is there
    progress: bool = True  # a tqdm bar on stderr

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ConfigError("batch_size, grad_accum and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if isinstance(self.lora_targets, list):
            self.lora_targets = tuple(self.lora_targets)
        self.model = str(self.model)
        self.out_dir = str(self.out_dir)

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (report.json, checkpoints)."""
        data = asdict(self)
        if isinstance(data["lora_targets"], tuple):
            data["lora_targets"] = list(data["lora_targets"])
        return data
