"""The losses against numbers worked out by hand, and against TRL's DPO on the same tensors."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest

torch = pytest.importorskip("torch")

from conscience.trainer.loss import (  # noqa: E402
    chunked_sequence_logps,
    combined_loss,
    dpo_loss,
    linear_head_logps,
    sequence_logps,
    sft_loss,
)


def test_sequence_logps_by_hand():
    # vocab 2, one sequence of 3 tokens [1, 0, 1].
    # position 0 logits [0, 0]      -> p = [1/2, 1/2]; it predicts token 0 (labels[1])
    # position 1 logits [ln 3, 0]   -> p = [3/4, 1/4]; it predicts token 1 (labels[2])
    # position 2 predicts nothing (no token after it): dropped by the shift.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, 1]])
    # mask on tokens 1 and 2: log(1/2) + log(1/4) = log(1/8) = -2.0794
    both = sequence_logps(logits, labels, torch.tensor([[0, 1, 1]]))
    assert both.shape == (1,)
    assert both.item() == pytest.approx(math.log(1 / 8), abs=1e-6)
    # mask on token 2 only: log(1/4) = -1.3863
    last = sequence_logps(logits, labels, torch.tensor([[0, 0, 1]]))
    assert last.item() == pytest.approx(math.log(1 / 4), abs=1e-6)
    # the mask on token 0 means nothing (no logits predict it)
    assert sequence_logps(logits, labels, torch.tensor([[1, 0, 0]])).item() == 0.0


def test_sequence_logps_ignores_padding_ids():
    # A padded position may hold any id, even -100 as in HF labels: masked, it must not index.
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[2, 3, -100]])
    out = sequence_logps(logits, labels, torch.tensor([[0, 1, 0]]))
    assert out.item() == pytest.approx(math.log(1 / 4), abs=1e-6)  # uniform over 4 tokens


def test_sequence_logps_bf16_logits_are_summed_in_fp32():
    logits = torch.randn(2, 5, 7).to(torch.bfloat16)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    out = sequence_logps(logits, labels, mask)
    assert out.dtype == torch.float32
    assert torch.allclose(out, sequence_logps(logits.float(), labels, mask))


def test_dpo_loss_by_hand():
    # pair 0: policy gained 1 nat on chosen (-1 vs ref -2) and lost 1 on rejected (-3 vs -2).
    #   β = 0.5: r_c = 0.5·(-1 - -2) = 0.5, r_r = 0.5·(-3 - -2) = -0.5
    #   L = -log sigmoid(0.5 - (-0.5)) = -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    # pair 1: policy equals the reference: r_c = r_r = 0, L = -log sigmoid(0) = log 2 = 0.6931472
    # pair 2: the policy prefers the rejected answer by 2 nats:
    #   r_c = 0.5·(-4 - -3) = -0.5, r_r = 0.5·(-1 - -2) = 0.5, L = log(1 + e^1) = 1.3132617
    losses, chosen, rejected = dpo_loss(
        torch.tensor([-1.0, -7.0, -4.0]),
        torch.tensor([-3.0, -9.0, -1.0]),
        torch.tensor([-2.0, -7.0, -3.0]),
        torch.tensor([-2.0, -9.0, -2.0]),
        beta=0.5,
    )
    assert losses.tolist() == pytest.approx([0.3132617, 0.6931472, 1.3132617], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.5, 0.0, -0.5])
    assert rejected.tolist() == pytest.approx([-0.5, 0.0, 0.5])


def test_dpo_rewards_carry_no_gradient():
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    losses, chosen, _ = dpo_loss(
        policy_chosen, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1
    )
    assert not chosen.requires_grad
    losses.sum().backward()
    # dL/dπ_c = -β·sigmoid(-β·Δ) with Δ = (-1 - -1.5) - (-2 - -1.5) = 1:
    #         = -0.1·sigmoid(-0.1) = -0.1 / (1 + e^0.1) = -0.0475021
    assert policy_chosen.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.1)), abs=1e-7)


def test_sft_loss_and_combined_by_hand():
    # -(-6)/3 = 2 nats per token; -(-2)/4 = 0.5; a zero-token row would not divide by zero.
    sft = sft_loss(torch.tensor([-6.0, -2.0, 0.0]), torch.tensor([3, 4, 0]))
    assert sft.tolist() == pytest.approx([2.0, 0.5, 0.0])
    # L = L_SFT + λ·L_DPO with λ = 0.5: 2 + 0.5·0.6 = 2.3; 0.5 + 0.5·0.2 = 0.6
    total = combined_loss(sft[:2], torch.tensor([0.6, 0.2]), dpo_weight=0.5)
    assert total.tolist() == pytest.approx([2.3, 0.6])


# --- against TRL -------------------------------------------------------------------------------
# TRL 1.x has no free dpo_loss any more: the sigmoid loss lives inside DPOTrainer._compute_loss,
# which reads per-token log-probs from the model's fused LM head. A minimal instance (no
# __init__: no model download, no dataset) with precomputed reference log-probs and a stand-in
# model returning one "token" per sequence whose log-prob is the sequence's sum runs exactly that
# code on our tensors.


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x

    def unwrap_model(self, model):
        return model


class _FusedHead(torch.nn.Module):
    def __init__(self, logps):
        super().__init__()
        self.logps = logps

    def forward(self, input_ids, **kwargs):
        n, t = input_ids.shape
        zeros = torch.zeros(n, t - 1)
        return types.SimpleNamespace(
            log_probs=self.logps.unsqueeze(1),
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
        )


def _trl_sigmoid_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    trl = pytest.importorskip("trl")
    trainer = trl.DPOTrainer.__new__(trl.DPOTrainer)
    model = _FusedHead(torch.cat([policy_chosen, policy_rejected]))
    fields = {
        "model": model,
        "accelerator": _Accelerator(),
        "ld_alpha": None,
        "precompute_ref_logps": True,
        "f_divergence_type": "reverse_kl",
        "loss_types": ["sigmoid"],
        "loss_weights": [1.0],
        "beta": beta,
        "use_weighting": False,
        "aux_loss_enabled": False,
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    for name, value in fields.items():
        object.__setattr__(trainer, name, value)
    n = 2 * len(policy_chosen)
    ones = torch.ones(n, 2, dtype=torch.long)
    inputs = {
        "input_ids": torch.zeros(n, 2, dtype=torch.long),
        "attention_mask": ones,
        "completion_mask": ones,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    try:
        loss = trainer._compute_loss(model, inputs, False)
    except (AttributeError, TypeError) as exc:  # TRL's internals moved: say so, don't guess
        pytest.skip(f"TRL's DPOTrainer._compute_loss changed shape: {exc!r}")
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_trl(beta):
    generator = torch.Generator().manual_seed(7)
    logps = [torch.randn(5, generator=generator, dtype=torch.float64) * 8 - 40 for _ in range(4)]
    ours, chosen, rejected = dpo_loss(*logps, beta=beta)
    for i in range(5):  # one pair at a time: TRL returns the batch mean
        loss, _ = _trl_sigmoid_dpo(*(x[i : i + 1] for x in logps), beta)
        assert loss.item() == pytest.approx(ours[i].item(), rel=1e-12, abs=1e-12)
    loss, metrics = _trl_sigmoid_dpo(*logps, beta)
    assert loss.item() == pytest.approx(ours.mean().item(), rel=1e-12)
    assert metrics["rewards/chosen"][0] == pytest.approx(chosen.mean().item(), rel=1e-9)
    assert metrics["rewards/rejected"][0] == pytest.approx(rejected.mean().item(), rel=1e-9)
    margin = (chosen - rejected).mean().item()
    assert metrics["rewards/margins"][0] == pytest.approx(margin, rel=1e-9)


def test_sequence_logps_matches_trl_selective_log_softmax():
    utils = pytest.importorskip("trl.trainer.utils")
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, 50, generator=generator)
    labels = torch.randint(0, 50, (4, 9), generator=generator)
    mask = (torch.rand(4, 9, generator=generator) > 0.4).long()
    theirs = (utils.selective_log_softmax(logits[:, :-1], labels[:, 1:]) * mask[:, 1:]).sum(-1)
    assert torch.allclose(sequence_logps(logits, labels, mask), theirs, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_sequence_logps_equal_the_whole_logits_and_their_gradients(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(3, 9, 8, requires_grad=True)
    labels = torch.randint(0, 11, (3, 9))
    mask = torch.zeros(3, 9)
    mask[0, 4:] = 1
    mask[1, 2:7] = 1  # padding after the answer
    mask[2, 8:] = 1
    labels[1, 7:] = -100  # padding ids: masked out, never gathered

    want = sequence_logps(head(hidden), labels, mask)
    want_grads = torch.autograd.grad(want.sum() * 2, (hidden, head.weight))
    got = chunked_sequence_logps(hidden, head, labels, mask, chunk)
    got_grads = torch.autograd.grad(got.sum() * 2, (hidden, head.weight))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(chunked_sequence_logps(hidden, head, labels, mask, chunk), want)


def test_chunked_sequence_logps_skip_chunks_without_an_answer_token():
    calls = []

    def head(hidden):
        calls.append(hidden.shape[1])
        return hidden

    hidden = torch.randn(2, 10, 4)
    mask = torch.zeros(2, 10)
    mask[:, 8:] = 1  # only the last two positions are answer tokens
    chunked_sequence_logps(hidden, head, torch.zeros(2, 10, dtype=torch.long), mask, 3)
    assert calls == [3]  # positions 0..8 predict 1..9: only the chunk [6, 9) predicts answer tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_linear_head_logps_equal_the_whole_logits_and_their_gradients(chunk, dtype):
    torch.manual_seed(0)
    weight = torch.randn(13, 8).to(dtype)  # a frozen head: (vocab, dim)
    hidden = torch.randn(3, 9, 8).to(dtype).requires_grad_()
    labels = torch.randint(0, 13, (3, 9))
    mask = torch.zeros(3, 9)
    mask[0, 4:] = 1
    mask[1, 2:7] = 1
    mask[2, 8:] = 1
    labels[1, 7:] = -100
    upstream = torch.tensor([1.0, -2.0, 0.5])  # any loss: each row's gradient scaled apart

    want = sequence_logps(hidden @ weight.T, labels, mask)
    (want_grad,) = torch.autograd.grad((want * upstream).sum(), hidden)
    got = linear_head_logps(hidden, weight, labels, mask, chunk)
    (got_grad,) = torch.autograd.grad((got * upstream).sum(), hidden)
    tolerance = {"rtol": 0, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0, "atol": 0.05}
    torch.testing.assert_close(got, want, **tolerance)
    grad_tolerance = (
        {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0.02, "atol": 0.02}
    )
    torch.testing.assert_close(got_grad, want_grad, **grad_tolerance)
    assert got.dtype == torch.float32 and got_grad.dtype == dtype
