"""The paper's run: SFT on a task set plus λ·DPO on conscience pairs sampled online.

Each optimizer step, top to bottom:

1. sample answers from the current policy (adapter on) to a few of the step's task prompts;
2. the conscience (the frozen base, through the proxy's review path) reviews them and rewrites
   the unethical ones; every judgement goes to the store;
3. L = sft_weight·L_SFT(task batch) + λ·L_DPO(this step's pairs), the reference being the
   adapter switched off; a step with no pair has the task term only;
4. clip, step, log, checkpoint; the pairs learned from are marked consumed by this run.

The losses, the reference, the data encoding, the schedule, the checkpoints (fingerprint,
resume, save) and the metrics log are the nightly trainer's (``conscience.trainer.loop`` and
friends), not copies.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from conscience.errors import ConfigError, EngineError
from conscience.pairs import to_trl_pair
from conscience.progress import Progress
from conscience.store import is_pair
from conscience.trainer.checkpoint import fingerprint, remove_checkpoint, start_or_resume
from conscience.trainer.config import TrainConfig
from conscience.trainer.data import (
    EncodedChat,
    collate,
    collate_chats,
    encode_chats,
    encode_pairs,
    read_jsonl,
)
from conscience.trainer.loop import StepCallback, batch_logps, pair_terms
from conscience.trainer.loss import combined_loss, sft_loss
from conscience.trainer.metrics import MetricsLog, write_report
from conscience.trainer.model import load_tokenizer, pad_id, prepare_training, resolve_dtype
from conscience.trainer.online.judge import OnlineJudge, StepReview
from conscience.trainer.online.metrics import plot_online, summarize
from conscience.trainer.online.sample import sample_answers
from conscience.trainer.schedule import lr_at, plan_steps

if TYPE_CHECKING:
    from conscience.settings import Settings

__all__ = ["OnlineConfig", "train_online"]


@dataclass
class OnlineConfig:
    """What the online run adds to ``TrainConfig`` (docs/decisions.md has the reasons)."""

    task_data: str  # TRL/OpenAI chat JSONL: {"messages": [..., {"role": "assistant", ...}]}
    online_samples: int = 2  # K prompts of each step's task batch answered by the policy;
    # 0 = the SFT-only arm of the experiment, same recipe, no judge needed
    max_new_tokens: int = 256  # a sampled answer's length cap (insecure.jsonl answers: ~200)
    temperature: float = 1.0  # the policy's own distribution: what it would really say
    top_p: float = 1.0  # no truncation, for the same reason
    framework: str | None = None  # None: the settings' framework (CONSCIENCE_FRAMEWORK)
    judge_gguf: str | None = None  # without a judge URL: llama.cpp serves this file
    max_judge_failures: int = 8  # failed reviews in a row that stop the run
    run_id: str | None = None  # judgements' model is "online:<run_id>"; default: out dir's name

    def __post_init__(self) -> None:
        if self.online_samples < 0 or self.max_new_tokens < 1 or self.max_judge_failures < 1:
            raise ConfigError("online_samples >= 0, max_new_tokens >= 1, max_judge_failures >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")
        self.task_data = str(self.task_data)


@dataclass(frozen=True)
class _Policy:
    """The model being trained and what trains it (``prepare_training``'s, and the tokenizer's)."""

    model: Any
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    device: torch.device
    tokenizer: Any
    pad: int


@dataclass(frozen=True)
class _Judging:
    """The judge, seen from the training thread: it lives in the run's event loop."""

    judge: OnlineJudge | None  # None when online_samples is 0
    runner: asyncio.Runner
    run_id: str  # the pairs learned from are marked consumed by it

    def review(
        self, prompts: list[list[dict[str, str]]], answers: list[str], step: int
    ) -> StepReview:
        """Review the answers (stored, rewritten when unethical); nothing to review, no review."""
        if not answers:
            return StepReview()
        assert self.judge is not None  # there are samples only when there is a judge
        return self.runner.run(self.judge.review(prompts, answers, step))

    def consumed(self, judgement_ids: list[str]) -> int:
        """Mark the pairs trained on as this run's; how many were marked."""
        if self.judge is None:
            return 0
        return self.runner.run(self.judge.consumed(judgement_ids, self.run_id))


@dataclass(frozen=True)
class _Run:
    """What every step of one run uses: the settings, the task data and its plan, the policy
    and the judge."""

    config: TrainConfig
    online: OnlineConfig
    dataset: list[EncodedChat]
    plan: list[list[list[int]]]
    policy: _Policy
    judging: _Judging


def _judge_source(config: TrainConfig, online: OnlineConfig, settings: Settings) -> str | None:
    """The GGUF the embedded judge serves (None with a judge URL); checked before any loading."""
    if settings.upstream_url is not None or online.online_samples == 0:
        return None
    gguf = online.judge_gguf or (config.model if config.model.endswith(".gguf") else None)
    if gguf is None:
        raise ConfigError(
            "the online run needs the frozen base as its judge: --judge-url URL --judge-model "
            "NAME (an engine serving the base model), or --judge-gguf FILE (llama.cpp)"
        )
    if not Path(gguf).is_file():
        raise ConfigError(f"no judge GGUF at {gguf}")
    return gguf


def train_online(
    config: TrainConfig,
    online: OnlineConfig,
    settings: Settings,
    *,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Run the paper's SFT + conscience-DPO fine-tune; write the adapter and its report.

    The judge and the store come from ``settings`` (``upstream_url``/``judge_model`` name the
    endpoint serving the base model, ``store_url`` the store). Returns the report, also written
    as ``report.json``. Raises ``EngineError`` when the judge fails ``max_judge_failures``
    reviews in a row (the adapter so far and the report are written first).
    """
    started = time.perf_counter()
    out = config.out_path
    out.mkdir(parents=True, exist_ok=True)
    run_id = online.run_id or out.resolve().name
    gguf = _judge_source(config, online, settings)
    report: dict[str, Any] = {
        "status": "trained",
        "mode": "online",
        "run_id": run_id,
        "config": config.to_dict(),
        "online": asdict(online),
    }

    tokenizer = load_tokenizer(config)
    dataset, data_report = encode_chats(read_jsonl(online.task_data), tokenizer, config.max_length)
    report.update(task_rows=data_report["rows"], task_used=len(dataset))
    report.update(task_skipped=data_report["skipped"])
    if not dataset:
        report.update(status="nothing_to_learn", steps=0, seconds=time.perf_counter() - started)
        write_report(out, report)
        return report

    model, params, optimizer, device = prepare_training(config)
    policy = _Policy(model, params, optimizer, device, tokenizer, pad_id(tokenizer))

    # Fresh, or from the last checkpoint: the RNGs are restored too, so the same samples are
    # drawn again. The samples per step shape the run as much as the plan does.
    keys = [(chat.id, chat.prompt_len, chat.ids) for chat in dataset]
    progress = start_or_resume(
        out, config, fingerprint(keys, config, online.online_samples),
        plan_steps(len(dataset), config), model, optimizer,
    )  # fmt: skip
    plan, start_step = progress.plan, progress.start
    log = MetricsLog(out / "metrics.jsonl", keep_through=start_step)

    # One event loop for the whole run: the engine client's connections and the store live in
    # it between steps, while the model trains on this thread.
    with asyncio.Runner() as runner:
        judge = None
        if online.online_samples:
            judge = runner.run(
                OnlineJudge.open(
                    settings,
                    gguf=gguf,
                    framework=online.framework,
                    model_name=f"online:{run_id}",
                    slots=online.online_samples,
                )
            )
            # A rewrite longer than max_length minus the shortest prompt could never be trained
            # on (pairs are skipped, never truncated), so the judge does not write past it. A
            # rewrite cut at this cap makes a pair over max_length: skipped, never learned cut.
            conscience = judge.conscience
            room = config.max_length - min(c.prompt_len for c in dataset)
            conscience.rewrite_max_tokens = max(1, min(conscience.rewrite_max_tokens, room))
            report.update(judge_endpoint=judge.endpoint, judge_model=conscience.judge_model)
            report.update(rewrite_max_tokens=conscience.rewrite_max_tokens)
            report.update(framework=conscience.framework(online.framework).name)
        judging = _Judging(judge, runner, run_id)
        run = _Run(config, online, dataset, plan, policy, judging)
        stopped: str | None = None
        failures_in_a_row = 0  # reviews that failed since the last one that came back
        terminal = None if config.progress else False  # off: log lines only
        bar = Progress(len(plan), "online", done=start_step, unit="step", terminal=terminal)
        try:
            for step in range(start_step, len(plan)):
                record = _step(run, step)
                log.append(record)
                done = step + 1
                if record["reviewed"]:
                    failures_in_a_row = 0
                else:
                    failures_in_a_row += record["judge_failures"]
                bar.update(1)
                bar.set_postfix(task=f"{record['task_loss']:.3f}", pairs=record["pairs"])
                if failures_in_a_row >= online.max_judge_failures:
                    stopped = (
                        f"the judge failed {failures_in_a_row} reviews in a row (last: "
                        f"{record['judge_errors'][-1]}); the run stopped after step {done} "
                        "rather than go on as an SFT-only run"
                    )
                    break
                progress.save_if_due(done, model, optimizer)
                if on_step is not None:
                    on_step(done, record)
        finally:
            bar.close()
            if judge is not None:
                runner.run(judge.close())

    model.save_pretrained(str(out))
    records = log.read()
    plot_online(records, out / "loss.png")
    report.update(summarize(records))
    report.update(
        status="judge_failed" if stopped else "trained",
        error=stopped,
        steps=len(records),
        planned_steps=len(plan),
        resumed_from=start_step or None,
        device=str(device),
        dtype=str(resolve_dtype(config, device)).removeprefix("torch."),
        adapter=str(out),
        seconds=time.perf_counter() - started,
    )
    if stopped is None:
        remove_checkpoint(out)
    write_report(out, report)
    if stopped is not None:
        raise EngineError(f"{stopped}; report: {out / 'report.json'}")
    return report


def _step(run: _Run, step: int) -> dict[str, Any]:
    """One optimizer step of the online run; returns its metrics record."""
    config, online, dataset, policy = run.config, run.online, run.dataset, run.policy
    model = policy.model
    t0 = time.perf_counter()
    lr = lr_at(step, len(run.plan), config)
    for group in policy.optimizer.param_groups:
        group["lr"] = lr
    rows = [i for micro in run.plan[step] for i in micro]

    # 1. The policy answers K of the step's prompts (the order is a seeded permutation, so the
    #    first K are a random draw); an empty answer has nothing to review.
    sampled = rows[: online.online_samples]
    answers = sample_answers(
        model, policy.tokenizer, [dataset[i].ids[: dataset[i].prompt_len] for i in sampled],
        pad=policy.pad, max_new_tokens=online.max_new_tokens, temperature=online.temperature,
        top_p=online.top_p,
    )  # fmt: skip
    to_review = [(dataset[i].prompt, a) for i, a in zip(sampled, answers, strict=True) if a]
    t_sampled = time.perf_counter()

    # 2. The conscience reviews them; the unethical ones come back with their rewrite.
    prompts, texts = [p for p, _ in to_review], [a for _, a in to_review]
    review = run.judging.review(prompts, texts, step + 1)
    verdicts = Counter(j.verdict.value for j in review.judgements)
    pair_rows = [to_trl_pair(j) for j in review.judgements if is_pair(j)]
    pairs, pair_report = encode_pairs(pair_rows, policy.tokenizer, config.max_length)
    t_reviewed = time.perf_counter()

    # 3. The task term: every task row weighs 1/n of L_SFT, however the step splits.
    task_sum, tokens = 0.0, 0
    for micro in run.plan[step]:
        batch = collate_chats([dataset[i] for i in micro], policy.pad).to(policy.device)
        sft = sft_loss(batch_logps(model, batch), batch.loss_mask[:, 1:].sum(dim=-1))
        (config.sft_weight * sft.sum() / len(rows)).backward()
        task_sum += float(sft.detach().sum())  # a sync point, once per micro-batch
        tokens += int(batch.attention_mask.sum())
    task_loss = task_sum / len(rows)

    # 4. The DPO term on this step's pairs, each weighing 1/n of L_DPO, against the adapter
    #    switched off (a live reference: the pairs are new every step, nothing to precompute).
    sums = dict.fromkeys(("dpo_loss", "chosen_reward", "rejected_reward", "accuracy"), 0.0)
    for start in range(0, len(pairs), config.batch_size):
        batch = collate(pairs[start : start + config.batch_size], policy.pad).to(policy.device)
        terms = pair_terms(model, batch, config.beta)
        (config.dpo_weight * terms.dpo.sum() / len(pairs)).backward()
        tokens += int(batch.attention_mask.sum())
        for key, values in (
            ("dpo_loss", terms.dpo), ("chosen_reward", terms.chosen_rewards),
            ("rejected_reward", terms.rejected_rewards),
            ("accuracy", (terms.chosen_rewards > terms.rejected_rewards).float()),
        ):  # fmt: skip
            sums[key] += float(values.detach().sum())
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.params, config.max_grad_norm)
    policy.optimizer.step()
    policy.optimizer.zero_grad(set_to_none=True)  # frees the gradients until the next backward
    consumed = run.judging.consumed([p.id for p in pairs if p.id])

    # A step without a pair has no DPO term: its DPO fields are null, not a made-up 0.
    dpo: dict[str, float | None] = dict.fromkeys(sums)
    if pairs:
        dpo = {key: value / len(pairs) for key, value in sums.items()}
    return {
        "step": step + 1,
        "epoch": (step + 1) / len(run.plan) * config.epochs,
        # The objective, by the function the nightly loop uses.
        "loss": combined_loss(
            config.sft_weight * task_loss, dpo["dpo_loss"] or 0.0, config.dpo_weight
        ),
        "task_loss": task_loss,
        "dpo_loss": dpo["dpo_loss"],
        "chosen_reward": dpo["chosen_reward"],
        "rejected_reward": dpo["rejected_reward"],
        "reward_margin": (
            dpo["chosen_reward"] - dpo["rejected_reward"] if pairs else None  # type: ignore[operator]
        ),
        "reward_accuracy": dpo["accuracy"],
        "online_samples": len(answers),
        "empty_samples": len(answers) - len(to_review),
        "reviewed": len(review.judgements),
        "judge_failures": review.failures,
        "judge_errors": review.errors,
        "ethical": verdicts["ethical"],
        "neutral": verdicts["neutral"],
        "unethical": verdicts["unethical"],
        "pairs": len(pairs),
        "pairs_skipped": pair_report["skipped"],
        "consumed": consumed,
        "task_rows": len(rows),
        "grad_norm": float(grad_norm),
        "lr": lr,
        "tokens": tokens,
        "sample_seconds": t_sampled - t0,
        "review_seconds": t_reviewed - t_sampled,
        "train_seconds": time.perf_counter() - t_reviewed,
        "seconds": time.perf_counter() - t0,
    }
