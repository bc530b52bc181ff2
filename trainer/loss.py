"""The losses, as pure functions on tensors: no model, no config, no state.

Shapes: ``logits`` is (batch, seq, vocab), ``labels`` and ``mask`` are (batch, seq); every
per-sequence quantity is (batch,). The DPO functions take the chosen and the rejected halves
separately, as TRL's older ``dpo_loss`` did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "chunked_sequence_logps",
    "combined_loss",
    "dpo_loss",
    "linear_head_logps",
    "sequence_logps",
    "sft_loss",
]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(labels[t] | tokens < t) over the positions where ``mask`` is 1.

    The logits at position t predict the token at t+1, so logits drop their last position and
    labels and mask drop their first (the shift). Computed in float32 whatever the model's
    dtype: a bf16 log-softmax over a large vocabulary loses the small differences DPO feeds on.
    Returns (batch,).
    """
    return _predicted_logps(logits[:, :-1, :], labels[:, 1:], mask[:, 1:])


def chunked_sequence_logps(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    mask: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``sequence_logps(head(hidden), labels, mask)`` without the whole (batch, seq, vocab) logits.

        logps[b] = Σ_t mask[b, t+1] · log softmax(head(hidden[b, t]))[labels[b, t+1]]

    ``hidden`` is (batch, seq, dim), the states the LM head reads. The positions go through the
    head ``chunk`` at a time; with gradients on, each chunk runs under
    ``torch.utils.checkpoint``, so its logits are freed after its forward and recomputed in the
    backward: at most one chunk's logits (and their gradient) exist at any moment. A chunk with
    no masked-in position is skipped (it adds exactly 0). Returns (batch,), float32.
    """
    hidden, labels, mask = hidden[:, :-1], labels[:, 1:], mask[:, 1:]
    total = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk):
        part = slice(start, start + chunk)
        if not bool(mask[:, part].any()):  # a sync point, once per chunk
            continue
        args = (head, hidden[:, part], labels[:, part], mask[:, part])
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(_head_logps, *args, use_reentrant=False)
        else:
            total = total + _head_logps(*args)
    return total


def linear_head_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``chunked_sequence_logps`` for a frozen bias-free linear head ``logits = hidden @ weightᵀ``,
    with the gradient computed in the forward instead of recomputing the logits in the backward.

        logps[b] = Σ_t m[b,t+1] · (z[b,t, y] - logsumexp(z[b,t]))      z = h Wᵀ, y = labels[b,t+1]
        ∂logps[b] / ∂h[b,t] = m[b,t+1] · (onehot(y) - softmax(z[b,t])) W

    Each chunk's logits give its log-probs and its share of ∂logps/∂hidden, then are freed; the
    backward only scales that (batch, seq, dim) tensor by the upstream gradient per row. So no
    logits outlive their chunk and none are computed twice (the fused linear + cross-entropy of
    Liger's kernels, in plain torch). Returns (batch,), float32; ``weight`` gets no gradient.
    """
    return _LinearHeadLogps.apply(hidden[:, :-1], weight, labels[:, 1:], mask[:, 1:], chunk)


class _LinearHeadLogps(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        grad = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        total = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
        for start in range(0, hidden.shape[1], chunk):
            part = slice(start, start + chunk)
            m = mask[:, part].to(torch.float32)
            if not bool(m.any()):  # a sync point, once per chunk
                continue
            logits = (hidden[:, part] @ weight.T).float()
            safe = torch.where(m.bool(), labels[:, part], torch.zeros_like(labels[:, part]))
            logz = torch.logsumexp(logits, dim=-1, keepdim=True)
            picked = logits.gather(-1, safe.unsqueeze(-1))
            total += ((picked - logz).squeeze(-1) * m).sum(dim=-1)
            if grad is not None:
                # onehot(y) - softmax(z), masked: the logits' gradient, built in their buffer.
                delta = logits.sub_(logz).exp_().neg_()
                delta.scatter_add_(-1, safe.unsqueeze(-1), torch.ones_like(picked))
                delta.mul_(m.unsqueeze(-1))
                grad[:, part] = delta.to(weight.dtype) @ weight
        if grad is not None:
            ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        scaled = grad * upstream.to(grad.dtype)[:, None, None]
        return scaled, None, None, None, None


def _head_logps(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    return _predicted_logps(head(hidden), labels, mask)


def _predicted_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Σ_t mask[t] · log softmax(logits[t])[labels[t]]: logits already aligned with labels."""
    logits = logits.float()
    mask = mask.to(logits.dtype)
    # Padding may carry any id (even -100); mask it out, but gather needs a valid index.
    safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))
    token_logps = (
        torch.log_softmax(logits, dim=-1).gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    )
    return (token_logps * mask).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sigmoid DPO loss of Rafailov et al. (2023), per pair.

        r_c = β · (log π_θ(y_c|x) - log π_ref(y_c|x))          chosen reward
        r_r = β · (log π_θ(y_r|x) - log π_ref(y_r|x))          rejected reward
        L   = -log sigmoid(r_c - r_r)

    All four inputs are summed sequence log-probs, shape (batch,). Returns ``(losses,
    chosen_rewards, rejected_rewards)``, each (batch,); the rewards are detached (they are for
    logging; the gradient flows through ``losses`` alone). At the start of a run, when the policy
    equals the reference, every loss is log 2 ≈ 0.6931.
    """
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def sft_loss(logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean negative log-likelihood: ``-logps / n_tokens``, shape (batch,).

    ``logps`` are summed log-probs from :func:`sequence_logps` over ``n_tokens`` answer tokens.
    The mean per sequence (not per token over the batch) weighs every pair equally, as DPO does,
    so the two terms can be added pair by pair and accumulated over micro-batches alike.
    """
    return -logps / n_tokens.clamp(min=1).to(logps.dtype)


def combined_loss(sft: torch.Tensor, dpo: torch.Tensor, dpo_weight: float) -> torch.Tensor:
    """The paper's objective L = L_SFT + λ·L_DPO (elementwise; λ = ``dpo_weight``)."""
    return sft + dpo_weight * dpo
