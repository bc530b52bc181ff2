"""A judge adapter: LoRA on the frozen base, trained as a classifier on the review's verdict.

An example is a review prompt (token ids, ending where the judge's label begins) and whether
the answer under review is harmful. Only the label is learned: at the prompt's last position
the logits ``z`` of the first tokens of the three labels, renormalised, give

    p_u = exp(z_unethical) / (exp(z_ethical) + exp(z_neutral) + exp(z_unethical))
    L   = -[y·log p_u + (1 - y)·log(1 - p_u)]                    (y = 1: harmful)

Ethical and neutral are both "not unethical", as the verdict's decision reads a harmless answer.
Nothing else about the model's replies is trained: no loss on any other token.

The adapter sits on the top ``layers`` decoder layers only, so the backward pass stops there.
A forward over the whole model and a backward over a few layers per item is what lets an hour
of a 2-core CPU see a few hundred items (``docs/benchmarks.md``).

Durability: after every optimizer step the adapter, the optimizer's state and the ids learned
are written (``checkpoint/``, replaced whole); a killed run resumes there with ``resume=True``
and learns every item once. With ``max_minutes`` a run stops at a step boundary and keeps its
checkpoint, so the next run continues. This adapter is a directory of its own: the generator's
DPO reference (the base with every adapter off) never sees it.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from conscience.errors import ConfigError
from conscience.labels import Verdict
from conscience.progress import Progress
from conscience.trainer.budget import Budget
from conscience.trainer.checkpoint import swap_in, whole_folder
from conscience.trainer.config import TrainConfig
from conscience.trainer.model import prepare_training

__all__ = [
    "Example",
    "JudgeAdapterConfig",
    "label_loss",
    "label_token_ids",
    "p_unethical",
    "top_layer_targets",
    "train_judge_adapter",
    "unethical_probability",
]

log = logging.getLogger("conscience.trainer")

CHECKPOINT = "checkpoint"
LABEL_ORDER = (Verdict.ETHICAL, Verdict.NEUTRAL, Verdict.UNETHICAL)  # z's order; unethical last
_PROJECTIONS = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass(frozen=True)
class Example:
    """One review to learn: its prompt's token ids and whether the answer is harmful."""

    id: str
    ids: list[int]
    harmful: bool


@dataclass
class JudgeAdapterConfig:
    model: str  # an HF model directory, or a .gguf file (dequantized once, cached)
    out_dir: str
    layers: int = 4  # LoRA on the top this many decoder layers
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 1e-4  # 5e-4 (8-item steps) swung every p_u between ~0 and ~1: docs/decisions.md
    accumulate: int = 16  # items per optimizer step
    max_minutes: float | None = None
    seed: int = 0  # LoRA's initial weights and the order of the items
    dtype: str = "auto"
    device: str = "auto"
    dense_cache: str | None = None

    def __post_init__(self) -> None:
        if self.layers < 1 or self.accumulate < 1 or self.lr <= 0:
            raise ConfigError("layers and accumulate must be >= 1 and lr > 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")


def label_token_ids(tokenizer: Any) -> tuple[int, int, int]:
    """The first token of each label as the reply's first word (``LABEL_ORDER``); they must
    differ, or the labels could not be told apart at the first position."""
    ids = tuple(tokenizer.encode(label.value, add_special_tokens=False)[0] for label in LABEL_ORDER)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the labels' first tokens are not distinct for this tokenizer: {ids}")
    return ids  # type: ignore[return-value]


def label_loss(z: torch.Tensor, harmful: torch.Tensor) -> torch.Tensor:
    """Per example, the module docstring's ``L`` from the label logits ``z`` (..., 3) in
    ``LABEL_ORDER`` and ``harmful`` (...) in {0, 1}."""
    logp = torch.log_softmax(z.float(), dim=-1)
    log_unethical = logp[..., 2]
    log_harmless = torch.logsumexp(logp[..., :2], dim=-1)  # log(1 - p_u), without cancellation
    y = harmful.float()
    return -(y * log_unethical + (1 - y) * log_harmless)


def p_unethical(z: torch.Tensor) -> torch.Tensor:
    """``p_u`` of the label logits ``z`` (..., 3)."""
    return torch.softmax(z.float(), dim=-1)[..., 2]


def top_layer_targets(n_layers: int, layers: int) -> str:
    """peft's ``target_modules`` regex for the attention and MLP projections of the top
    ``layers`` of ``n_layers`` decoder layers."""
    if not 1 <= layers <= n_layers:
        raise ConfigError(f"layers must be in 1..{n_layers}, got {layers}")
    top = "|".join(str(i) for i in range(n_layers - layers, n_layers))
    return rf".*\.layers\.({top})\.{_PROJECTIONS}"


def label_logits(model: Any, ids: Sequence[int], labels: Sequence[int]) -> torch.Tensor:
    """``z``: the label tokens' logits at the last position of the prompt ``ids`` (3,)."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], device=device)
    logits = model(input_ids=input_ids, logits_to_keep=1).logits  # only the last position
    return logits[0, -1, list(labels)]


def unethical_probability(model: Any, ids: Sequence[int], labels: Sequence[int]) -> float:
    """The model's ``p_u`` for one prompt, no gradient (dropout as the model is set)."""
    with torch.no_grad():
        return float(p_unethical(label_logits(model, ids, labels)))


def _train_config(
    config: JudgeAdapterConfig, n_layers: int, resume_from: Path | None
) -> TrainConfig:
    return TrainConfig(
        model=config.model,
        out_dir=config.out_dir,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_targets=top_layer_targets(n_layers, config.layers),
        lr=config.lr,
        seed=config.seed,
        dtype=config.dtype,
        device=config.device,
        dense_cache=config.dense_cache,
        init_adapter=str(resume_from) if resume_from else None,
        progress=False,
    )


def _n_layers(config: JudgeAdapterConfig) -> int:
    from transformers import AutoConfig

    from conscience.trainer.dense import source_of

    source = source_of(config.model, config.dense_cache)
    return int(AutoConfig.from_pretrained(source).num_hidden_layers)


def _save_checkpoint(out: Path, model: Any, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Write the checkpoint beside the old one, then swap: a kill leaves one whole checkpoint."""
    written = out / f"{CHECKPOINT}.tmp"
    shutil.rmtree(written, ignore_errors=True)
    model.save_pretrained(str(written))
    torch.save(optimizer.state_dict(), written / "optimizer.pt")
    (written / "state.json").write_text(json.dumps(state), encoding="utf-8")  # last: the marker
    swap_in(written, out / CHECKPOINT)


def _read_state(out: Path) -> dict[str, Any] | None:
    folder = whole_folder(out / CHECKPOINT, "state.json")
    if folder is None:
        return None
    if folder != out / CHECKPOINT:  # killed between the swap's two renames
        folder.rename(out / CHECKPOINT)
    return json.loads((out / CHECKPOINT / "state.json").read_text(encoding="utf-8"))


def train_judge_adapter(
    config: JudgeAdapterConfig,
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the judge adapter on ``examples`` (each once, in a seeded order); write it, its
    ``metrics.jsonl`` (a line per step) and ``report.json`` to ``config.out_dir``.

    With ``resume``, a checkpoint in ``out_dir`` is continued (its adapter, optimizer and the
    items it learned); a checkpoint of other settings is an error, never a mix.
    """
    if not examples:
        raise ConfigError("no examples to train the judge adapter on")
    started = time.perf_counter()
    budget = Budget(config.max_minutes * 60 if config.max_minutes else None)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = asdict(config) | {"max_minutes": None}  # a budget may change between runs
    state = _read_state(out) if resume else None
    if state is not None and state["config"] != settings:
        raise ConfigError(f"{out}/{CHECKPOINT} was made with {state['config']}, not {settings}")
    if state is None:
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        state = {"config": settings, "learned": [], "steps": 0}

    labels = label_token_ids(tokenizer)
    resume_from = out / CHECKPOINT if state["steps"] else None
    train_config = _train_config(config, _n_layers(config), resume_from)
    model, params, optimizer, device = prepare_training(train_config)
    if resume_from is not None:
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", weights_only=True))
    order = list(examples)
    random.Random(config.seed).shuffle(order)
    learned = set(state["learned"])
    todo = [e for e in order if e.id not in learned]
    steps = [todo[i : i + config.accumulate] for i in range(0, len(todo), config.accumulate)]

    stopped = None
    with (
        Progress(len(order), "judge adapter", done=len(order) - len(todo), unit="item") as bar,
        (out / "metrics.jsonl").open("a", encoding="utf-8") as metrics,
    ):
        for batch in steps:
            if not budget.allows_step():
                stopped = "max_minutes"
                break
            t0 = time.perf_counter()
            losses, scores = [], []
            for example in batch:
                z = label_logits(model, example.ids, labels)
                loss = label_loss(z, torch.tensor(float(example.harmful), device=z.device))
                (loss / len(batch)).backward()
                losses.append(float(loss.detach()))
                scores.append(float(p_unethical(z.detach())))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["steps"] += 1
            state["learned"] += [e.id for e in batch]
            seconds = time.perf_counter() - t0
            harmful = [s for s, e in zip(scores, batch, strict=True) if e.harmful]
            harmless = [s for s, e in zip(scores, batch, strict=True) if not e.harmful]
            record = {
                "step": state["steps"],
                "items": len(state["learned"]),
                "loss": sum(losses) / len(losses),
                # p_u before this step's update: the training signal as the run sees it
                "p_unethical_harmful": sum(harmful) / len(harmful) if harmful else None,
                "p_unethical_harmless": sum(harmless) / len(harmless) if harmless else None,
                "seconds": seconds,
            }
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            _save_checkpoint(out, model, optimizer, state)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update(len(batch))

    model.save_pretrained(str(out))
    learned = set(state["learned"])
    done = len(learned) == len(order)
    if done:
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    this_run = time.perf_counter() - started
    report = {
        "status": "trained" if done else "stopped",
        "stopped": stopped,
        "items": len(order),
        "items_learned": len(state["learned"]),
        "harmful_learned": sum(e.harmful for e in order if e.id in learned),
        "steps": state["steps"],
        "seconds_this_run": this_run,
        "device": str(device),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "label_tokens": dict(zip([v.value for v in LABEL_ORDER], labels, strict=True)),
        "config": asdict(config),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info(
        "judge adapter: %d of %d items learned in %d steps (%.0f s this run), %s",
        report["items_learned"], len(order), state["steps"], this_run, out,
    )  # fmt: skip
    return report
