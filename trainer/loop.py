"""The training loop: DPO (+ SFT on the chosen answer) on a LoRA adapter.

Reads top to bottom: tokenize the pairs, load the model with a fresh adapter, compute the
reference log-probs, loop over the planned steps (forward chosen and rejected together, loss,
backward, clip, step, log, checkpoint), save the adapter, plot, report.

The reference π_ref is the frozen copy of the paper: the same weights with the adapter switched
off (``model.disable_adapter()``), so there is never a second model in memory.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from conscience.errors import ConfigError
from conscience.progress import Progress
from conscience.trainer.budget import Budget
from conscience.trainer.checkpoint import (
    Start,
    fingerprint,
    remove_checkpoint,
    start_or_resume,
)
from conscience.trainer.config import TrainConfig
from conscience.trainer.data import Batch, EncodedPair, collate, encode_pairs, read_jsonl
from conscience.trainer.distributed import join, shard_base, shard_mesh
from conscience.trainer.loss import (
    chunked_sequence_logps,
    combined_loss,
    dpo_loss,
    linear_head_logps,
    sequence_logps,
    sft_loss,
)
from conscience.trainer.metrics import MetricsLog, plot_metrics, write_report
from conscience.trainer.model import (
    load_tokenizer,
    pad_id,
    prepare_training,
    resolve_device,
    resolve_dtype,
)
from conscience.trainer.schedule import lr_at, plan_steps

logger = logging.getLogger("conscience.trainer")

__all__ = [
    "LOGITS_PER_CHUNK",
    "PairTerms",
    "StepCallback",
    "answer_logps",
    "batch_logps",
    "pair_terms",
    "policy_logps",
    "reference_logps",
    "train",
]

# Called after every optimizer step with (steps done, that step's metrics). Raising from it
# stops the run where it stands: the last checkpoint stays, and ``resume=True`` continues.
StepCallback = Callable[[int, dict[str, Any]], None]


# Logits elements (rows x positions x vocabulary) per chunk of the answer log-probs: 64 MB in
# fp32, whatever the vocabulary; the full (2B, T, vocab) logits never exist at once.
LOGITS_PER_CHUNK = 1 << 24


@functools.cache
def _keeps_logits(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def _plain_head(base: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The LM head, when the model's logits are just ``head(decoder(...).last_hidden_state)``.

    None for models that change the logits after the head (Gemma 2's soft-capping, Cohere's and
    Granite's scaling): those take the full forward.
    """
    config = base.config
    for attribute in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, attribute, None) not in (None, 1, 1.0):
            return None
    head = base.get_output_embeddings()
    return head if isinstance(head, torch.nn.Module) else None


def batch_logps(model: Any, batch: Batch, chunk: int | None = None) -> torch.Tensor:
    """Summed log-probs of every row's answer tokens, (rows,): pairs or single conversations.

    Only positions that predict an answer token need the LM head, and never all at once: the
    decoder gives the hidden states, and the head, log-softmax and gather run over chunks of
    positions from the shortest prompt's end on (``chunk`` positions, by default as many as
    make ``LOGITS_PER_CHUNK`` logits). With a 50-150k vocabulary the (2B, T, vocab) logits
    would be the step's biggest tensor, and their gradient another as big; a chunk's are freed
    before the next chunk's exist. A frozen linear head (the usual case: LoRA does not train
    it) takes ``linear_head_logps``, which computes each chunk's gradient as it goes; any other
    head, ``chunked_sequence_logps``, which recomputes each chunk's logits in the backward.
    """
    base = model.get_base_model()
    start = max(batch.answer_start - 1, 0)  # the position that predicts the first answer token
    head = _plain_head(base)
    if head is None:
        return _full_logps(model, batch, start)
    hidden = base.get_decoder()(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state[:, start:]
    if chunk is None:
        chunk = max(1, LOGITS_PER_CHUNK // (hidden.shape[0] * base.config.vocab_size))
    labels, mask = batch.input_ids[:, start:], batch.loss_mask[:, start:]
    weight = _frozen_linear_weight(head)
    if weight is not None:  # the usual case: the gradient in the forward, no recomputation
        return linear_head_logps(hidden, weight, labels, mask, chunk)
    return chunked_sequence_logps(hidden, head, labels, mask, chunk)


def _frozen_linear_weight(head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """The weight of a head that is a frozen, bias-free ``nn.Linear`` (not one LoRA wraps)."""
    if type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad:
        return head.weight
    return None


def _full_logps(model: Any, batch: Batch, start: int) -> torch.Tensor:
    """The answer log-probs through the model's own forward: the whole logits at once.

    Models that take ``logits_to_keep`` (Llama, Qwen2, Mistral, GPT-2 in transformers 5)
    compute them from ``start`` on; others compute them all.
    """
    kwargs = {}
    if _keeps_logits(type(model.get_base_model())):
        kwargs["logits_to_keep"] = batch.input_ids.shape[1] - start
    else:
        start = 0
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs).logits
    return sequence_logps(logits, batch.input_ids[:, start:], batch.loss_mask[:, start:])


def answer_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of the answers, each (B,)."""
    return batch_logps(model, batch).chunk(2)


def reference_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs under the frozen copy: the adapter switched off."""
    with model.disable_adapter(), torch.no_grad():
        return answer_logps(model, batch)


@dataclass
class PairTerms:
    """The DPO terms of one micro-batch of pairs, each (B,)."""

    dpo: torch.Tensor  # per-pair DPO loss (carries the gradient)
    chosen_rewards: torch.Tensor  # detached, for logging
    rejected_rewards: torch.Tensor
    policy_chosen: torch.Tensor  # summed answer log-probs under the policy (with gradient)
    policy_rejected: torch.Tensor


def pair_terms(
    model: Any,
    batch: Batch,
    beta: float,
    ref: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> PairTerms:
    """Policy forward, reference (given, else the adapter switched off now) and the DPO loss.

    Both loops call this: the nightly one with precomputed reference log-probs, the online one
    (fresh pairs every step) with a live reference.
    """
    policy_chosen, policy_rejected = answer_logps(model, batch)
    ref_chosen, ref_rejected = ref if ref is not None else reference_logps(model, batch)
    dpo, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta
    )
    return PairTerms(dpo, chosen_rewards, rejected_rewards, policy_chosen, policy_rejected)


def _fill_reference(
    model: Any,
    pairs: list[EncodedPair],
    indices: Sequence[int],
    ref: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    pad: int,
    device: torch.device,
    *,
    progress: bool = False,
) -> None:
    """Reference log-probs of the pairs among ``indices`` that have none yet (NaN), in place.

    Run over every pair before the loop (the default), or over each micro-batch when it first
    comes up (a run with a budget: no reference pass for pairs it may never reach).
    """
    missing = [i for i in indices if torch.isnan(ref[0][i])]
    starts = range(0, len(missing), config.batch_size)
    for start in tqdm(starts, desc="reference", disable=not progress):
        chunk = missing[start : start + config.batch_size]
        c, r = reference_logps(model, collate([pairs[i] for i in chunk], pad).to(device))
        ref[0][chunk] = c.float().cpu()
        ref[1][chunk] = r.float().cpu()


AFTER_PAIRS = 64  # the most trained pairs the finished adapter is measured on


def pairs_reached(plan: Sequence[Sequence[Sequence[int]]]) -> list[int]:
    """For each step of ``plan`` (micro-batches of pair indices), how many distinct pairs the
    run has trained on once that step is done."""
    seen: set[int] = set()
    reached = []
    for micro_batches in plan:
        seen.update(i for indices in micro_batches for i in indices)
        reached.append(len(seen))
    return reached


def policy_logps(
    model: Any,
    pairs: list[EncodedPair],
    indices: Sequence[int],
    config: TrainConfig,
    pad: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed answer log-probs of ``pairs[indices]`` under the adapter as it
    is now (dropout off, no gradient), on the CPU; the model is left in training mode."""
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(indices), config.batch_size):
            part = [pairs[i] for i in indices[start : start + config.batch_size]]
            c, r = answer_logps(model, collate(part, pad).to(device))
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    model.train()
    return torch.cat(chosen), torch.cat(rejected)


def after_training(
    model: Any,
    pairs: list[EncodedPair],
    indices: Sequence[int],
    ref: tuple[torch.Tensor, torch.Tensor] | None,
    config: TrainConfig,
    pad: int,
    device: torch.device,
    start: Start | None = None,
) -> dict[str, float | int]:
    """The finished adapter on (up to ``AFTER_PAIRS`` of) the pairs it trained on: reward
    accuracy (the share of pairs whose chosen answer gained more than the rejected one,
    ``β·(Δ log π_chosen - Δ log π_rejected) > 0`` against the reference) and the mean margin.

    With ``start`` (a warm start), the same against the adapter the run started from, on the
    trained ones of ``start.indices``: ``start_reward_accuracy`` and ``start_reward_margin``,
    ``Δ = log π_finished - log π_start``. The reference (the base) is the wrong bar for a warm
    start: an adapter served yesterday may sit far from the base on these answers, and a night
    that moves it the right way would still score below the base's preference.

    A step's own metrics are taken before its update — a one-step run always reports the
    untrained adapter (accuracy 0: both rewards are 0) — so the publishing gate reads these.
    Dropout off; the reference is the precomputed one, else the adapter switched off.
    """
    trained = set(indices)
    measured = [i for i in start.indices if i in trained] if start else list(indices[:AFTER_PAIRS])
    chosen, rejected = policy_logps(model, pairs, measured, config, pad, device)
    if ref is None:  # a live reference: the adapter switched off, for these pairs only
        ref = (torch.full((len(pairs),), torch.nan), torch.full((len(pairs),), torch.nan))
    _fill_reference(model, pairs, measured, ref, config, pad, device)
    gained = config.beta * ((chosen - ref[0][measured]) - (rejected - ref[1][measured]))
    result: dict[str, float | int] = {
        "pairs": len(measured),
        "reward_accuracy": float((gained > 0).float().mean()),
        "reward_margin": float(gained.mean()),
    }
    if start is not None:
        at = {index: k for k, index in enumerate(start.indices)}
        rows = [at[i] for i in measured]
        moved = config.beta * ((chosen - start.chosen[rows]) - (rejected - start.rejected[rows]))
        result["start_reward_accuracy"] = float((moved > 0).float().mean())
        result["start_reward_margin"] = float(moved.mean())
    return result


def train(
    config: TrainConfig,
    pairs: Sequence[dict[str, Any]] | str | Path,
    *,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on preference pairs; write it and its report to ``config.out_dir``.

    ``pairs`` are TRL-style rows (a list of dicts, or the path of a JSONL file). Returns the
    report, also written as ``report.json``. With no usable pair it trains nothing and says so
    (``status: "nothing_to_learn"``).

    With ``max_minutes``, the run stops at the first step boundary where the next step would
    not fit (``stopped: "max_minutes"``): it saves the adapter of the steps done, and a
    checkpoint from which ``resume=True`` finishes the plan. ``used_ids`` are the pairs of the
    steps done, whatever the plan held (a budget or ``max_steps`` leaves the rest unlearned).

    Under ``torchrun`` / ``accelerate launch`` every process runs this with its share of each
    step (``trainer/distributed.py``); only rank 0 writes anything. With ``shard_base`` the
    processes split the frozen base between them, and the reference runs with each step.
    """
    started = time.perf_counter()
    budget = Budget(config.max_minutes * 60 if config.max_minutes else None)
    ranks = join()
    sharded = config.shard_base
    if sharded and ranks.world == 1:
        raise ConfigError("shard_base splits the model over processes: run under torchrun")
    out = config.out_path
    out.mkdir(parents=True, exist_ok=True)
    rows = read_jsonl(pairs) if isinstance(pairs, str | Path) else list(pairs)
    rows = ranks.broadcast(rows)  # rank 0's pairs, whatever the others read
    report: dict[str, Any] = {"status": "trained", "config": config.to_dict()}
    if ranks.world > 1:
        report["processes"] = ranks.world

    # --- data: the tokenizer first, so an empty run never loads the model
    if ranks.world > 1:  # one rank builds a GGUF's dense checkpoint, the others then read it
        if ranks.main:
            load_tokenizer(config)
        ranks.barrier()
    tokenizer = load_tokenizer(config)
    dataset, data_report = encode_pairs(rows, tokenizer, config.max_length)
    report.update(
        pairs_total=data_report["rows"],
        pairs_used=len(dataset),
        skipped=data_report["skipped"],
        skipped_ids=data_report["skipped_ids"],
    )
    if not dataset:
        report.update(status="nothing_to_learn", steps=0, seconds=time.perf_counter() - started)
        if ranks.main:
            write_report(out, report)
        return report

    # --- model: base weights frozen, a fresh seeded LoRA adapter on top (the same on every rank)
    device = ranks.device(config.device) or resolve_device(config)
    if sharded:  # each rank in turn loads it whole on the CPU and keeps its part on its device
        mesh = shard_mesh(ranks, device)
        with ranks.in_turn():
            logger.info("rank %d of %d: loading the base to keep its part", ranks.rank, ranks.world)
            cpu = torch.device("cpu")
            model, params, optimizer, _ = prepare_training(config, device, load_on=cpu)
            held, whole = shard_base(model, device, mesh)
            logger.info("rank %d: holds %d of the base's %d bytes", ranks.rank, held, whole)
        report["base_bytes"] = {"whole": whole, "rank0": held}
    else:
        model, params, optimizer, _ = prepare_training(config, device)
    ranks.sync_params(params)
    pad = pad_id(tokenizer)

    # --- the data order and the reference, fresh or from the last checkpoint. A step of
    # grad_accum micro-batches on each of `world` ranks is one of grad_accum x world in the plan.
    keys = [(p.id, p.prompt_len, p.chosen_ids, p.rejected_ids) for p in dataset]
    shape = replace(config, grad_accum=config.grad_accum * ranks.world)
    progress = start_or_resume(
        out, shape, fingerprint(keys, shape), plan_steps(len(dataset), shape), model, optimizer
    )
    plan, start_step = progress.plan, progress.start
    ref_seconds = 0.0
    if sharded:  # a pass per pair ahead would differ between ranks: the reference runs live
        progress.ref = None
    elif config.precompute_ref and progress.ref is None:
        progress.ref = (
            torch.full((len(dataset),), torch.nan),
            torch.full((len(dataset),), torch.nan),
        )
    ref = progress.ref
    if ref is not None and config.max_minutes is None:  # all at once, before the loop
        t0 = time.perf_counter()
        mine = sorted({i for step in plan[start_step:] for b in ranks.share(step) for i in b})
        _fill_reference(
            model, dataset, mine, ref, config, pad, device, progress=config.progress and ranks.main
        )
        ref_seconds = time.perf_counter() - t0
    # A warm start's gate reads how far the night moved the adapter it was given: that
    # adapter's log-probs on the first step's pairs are the first step's own policy forward
    # (taken before its update, so free; with lora_dropout > 0 they carry its noise).
    measure_start = config.init_adapter is not None and progress.warm is None and start_step == 0
    first: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
    log = MetricsLog(out / "metrics.jsonl", keep_through=start_step) if ranks.main else None

    # --- the loop
    terminal = None if config.progress else False  # off: log lines only
    bar = (  # one rank tells the progress of all
        Progress(len(plan), "dpo", done=start_step, unit="step", terminal=terminal)
        if ranks.main
        else None
    )
    done = start_step
    # The finished adapter's measurement (after_training) is inside the budget: a policy
    # forward per measured pair (with a live reference, its forward too), priced at the
    # steps' own forwards so far. It measures the first step's pairs of a warm start, else
    # up to AFTER_PAIRS of those trained.
    reached = pairs_reached(plan)
    forward_seconds, forward_pairs = 0.0, 0
    for step in range(start_step, len(plan)):
        if progress.warm is not None:  # a warm start, once its first step has captured it
            measured = len(progress.warm.indices)
        else:
            measured = min(AFTER_PAIRS, reached[step])
        then = measured * forward_seconds / forward_pairs if forward_pairs else 0.0
        if not ranks.agree(budget.allows_step(then), device):  # rank 0's clock decides for all
            break
        t0 = time.perf_counter()
        lr = lr_at(step, len(plan), config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        n_pairs = sum(len(indices) for indices in plan[step])
        sums = dict.fromkeys(
            ("loss", "dpo_loss", "sft_loss", "chosen_reward", "rejected_reward",
             "reward_accuracy", "chosen_logps", "rejected_logps"),
            0.0,
        )  # fmt: skip
        sums["tokens"] = 0.0
        for indices in ranks.share(plan[step]):
            batch = collate([dataset[i] for i in indices], pad).to(device)
            given = None  # None: pair_terms runs the reference (adapter off) now
            if ref is not None:
                t1 = time.perf_counter()
                _fill_reference(model, dataset, indices, ref, config, pad, device)
                ref_seconds += time.perf_counter() - t1
                given = (ref[0][indices].to(device), ref[1][indices].to(device))
            t1 = budget.now()
            terms = pair_terms(model, batch, config.beta, given)
            forward_seconds += budget.now() - t1
            forward_pairs += batch.n_pairs
            if measure_start and step == 0:
                chosen_now, rejected_now = terms.policy_chosen, terms.policy_rejected
                first.append((list(indices), chosen_now.detach().float().cpu(),
                              rejected_now.detach().float().cpu()))  # fmt: skip
            chosen_tokens = batch.loss_mask[: batch.n_pairs, 1:].sum(dim=-1)
            sft = sft_loss(terms.policy_chosen, chosen_tokens)
            losses = combined_loss(config.sft_weight * sft, terms.dpo, config.dpo_weight)
            # Every pair weighs 1/n_pairs of the step, however the step splits into micro-batches.
            (losses.sum() / n_pairs).backward()

            sums["tokens"] += float(batch.attention_mask.sum())
            for key, values in (
                ("loss", losses), ("dpo_loss", terms.dpo), ("sft_loss", sft),
                ("chosen_reward", terms.chosen_rewards),
                ("rejected_reward", terms.rejected_rewards),
                ("reward_accuracy", (terms.chosen_rewards > terms.rejected_rewards).float()),
                ("chosen_logps", terms.policy_chosen), ("rejected_logps", terms.policy_rejected),
            ):  # fmt: skip
                sums[key] += float(values.detach().sum())  # a sync point, once per micro-batch
        for _ in range(ranks.idle_passes(plan[step]) if sharded else 0):
            # No pairs of its own left: a pass that moves nothing, for the others' collectives.
            batch = collate([dataset[i] for i in plan[step][0]], pad).to(device)
            (pair_terms(model, batch, config.beta).dpo.sum() * 0.0).backward()
        ranks.sum_gradients(params)  # every rank's share of the step: the step's gradient
        sums = ranks.sum_values(sums, device)
        tokens = int(sums.pop("tokens"))
        if measure_start and step == 0:  # the first step of a warm start: its start, once
            progress.warm = Start(
                [i for indices, _, _ in first for i in indices],
                torch.cat([chosen for _, chosen, _ in first]),
                torch.cat([rejected for _, _, rejected in first]),
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # frees the gradients until the next backward

        record: dict[str, Any] = {"step": step + 1, "epoch": (step + 1) / len(plan) * config.epochs}
        record.update({key: value / n_pairs for key, value in sums.items()})
        record["reward_margin"] = record["chosen_reward"] - record["rejected_reward"]
        record.update(
            grad_norm=float(grad_norm),
            lr=lr,
            pairs=n_pairs,
            tokens=tokens,
            seconds=time.perf_counter() - t0,
        )
        done = step + 1
        if log is not None:
            log.append(record)
            progress.save_if_due(done, model, optimizer)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", margin=f"{record['reward_margin']:.3f}")
        if on_step is not None:
            on_step(done, record)
    if bar is not None:
        bar.close()
    if sharded:  # the measurement's passes must be the same on every rank: rank 0's warm start
        progress.warm = ranks.broadcast(progress.warm)
    trained = sorted({i for micro in plan[:done] for indices in micro for i in indices})
    report.update(
        pairs_used=len(trained),
        used_ids=[dataset[i].id for i in trained if dataset[i].id is not None],
    )
    if done < len(plan):
        report.update(stopped="max_minutes", steps_planned=len(plan))
    if done == 0:  # the budget was gone before the first step: nothing to save
        report.update(status="out_of_time", steps=0, seconds=time.perf_counter() - started)
        if ranks.main:
            write_report(out, report)
        return report
    if log is None:  # not rank 0: rank 0 writes the result
        if sharded:  # the measurement's passes gather weights from every rank: run them too
            after_training(model, dataset, trained, ref, config, pad, device, progress.warm)
        report.update(steps=done, seconds=time.perf_counter() - started)
        return report

    # --- the result: the adapter first (vLLM loads it as it is), then the plot and the report
    model.save_pretrained(str(out))
    if done < len(plan):  # stopped for the budget: resume=True finishes the plan from here
        progress.save(done, model, optimizer)
    else:
        remove_checkpoint(out)
    records = log.read()
    plot_metrics(records, out / "loss.png")
    after = after_training(model, dataset, trained, ref, config, pad, device, progress.warm)
    log_line = "finished adapter on %d trained pairs: reward accuracy %.3f, margin %.4f"
    logger.info(log_line, after["pairs"], after["reward_accuracy"], after["reward_margin"])
    if "start_reward_accuracy" in after:
        log_line = "against the adapter it started from: reward accuracy %.3f, margin %.4f"
        logger.info(log_line, after["start_reward_accuracy"], after["start_reward_margin"])
    report.update(
        after=after,
        steps=done,
        resumed_from=start_step or None,
        first=records[0],
        final=records[-1],
        reference_seconds=ref_seconds,  # the reference passes, when precomputed
        budget_seconds_used=budget.used() if config.max_minutes else None,
        device=str(device),
        dtype=str(resolve_dtype(config, device)).removeprefix("torch."),
        adapter=str(out),
        seconds=time.perf_counter() - started,
    )
    write_report(out, report)
    return report
