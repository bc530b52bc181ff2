"""Answers sampled from the current policy (adapter on), for the conscience to review.

The online run's pairs are "sampled online from the policy": the answers the model being trained
would give now, not the task set's fixed targets. One batched ``generate`` per step: prompts are
left-padded so every row's answer starts at the same column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["sample_answers"]


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the generation config's (a list
    for chat models whose turn-end token is not the tokenizer's EOS)."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def sample_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> list[str]:
    """One sampled answer per prompt (token ids, as training renders them), as plain text.

    ``temperature`` 0 is greedy. The text ends at the first stop token; special tokens are
    dropped, so the conscience reviews what a user would read.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[i, width - len(ids) :] = 1
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    was_training = model.training
    model.eval()  # LoRA dropout (if any) off: the sample is the policy's, not a noisy variant
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                # The model was loaded with use_cache=False for training; generation wants it.
                use_cache=True,
                **sampling,
            )
    finally:
        model.train(was_training)
    stops = _stop_ids(model, tokenizer)
    answers = []
    for row in out[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), len(row))
        answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return answers
