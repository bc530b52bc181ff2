"""What each optimizer step sees (the data order) and at which learning rate."""

from __future__ import annotations

import math

import torch

from conscience.trainer.config import TrainConfig

__all__ = ["lr_at", "plan_steps"]


def plan_steps(n_pairs: int, config: TrainConfig) -> list[list[list[int]]]:
    """The whole run's data order: step → micro-batches → pair indices.

    Each epoch is a fresh permutation drawn from a generator seeded with ``seed + epoch`` (so the
    order depends on nothing but the seed and the data size), cut into micro-batches of
    ``batch_size`` pairs, grouped ``grad_accum`` to a step. An epoch's last micro-batch and step
    may be short; the loop weighs every pair the same regardless. ``max_steps`` cuts the plan.
    """
    plan: list[list[list[int]]] = []
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(config.seed + epoch)
        order = torch.randperm(n_pairs, generator=generator).tolist()
        micro = [order[i : i + config.batch_size] for i in range(0, n_pairs, config.batch_size)]
        plan += [micro[i : i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
    return plan[: config.max_steps] if config.max_steps else plan


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr · min_lr_ratio`` (nanoGPT's schedule).

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    warmup = int(config.warmup_ratio * total)
    if step < warmup:
        return config.lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - floor)
