"""Checkpoints: everything a killed run needs to finish with the weights it would have had.

A checkpoint is the folder ``<out_dir>/checkpoint`` holding the adapter's trainable tensors
(fp32, safetensors), the optimizer state, the RNG states, the step, the data order (the plan of
every step's pair indices), the precomputed reference log-probs and, for a warm start, the
starting adapter's log-probs on the gate's pairs (``Start``). It is written to a
temporary folder and renamed into place, so a kill while saving leaves the previous one whole.

Both loops (the nightly ``loop`` and the ``online`` run) keep their place the same way: a
:func:`fingerprint` of their data and settings, :func:`start_or_resume` at the start, then
:meth:`Progress.save_if_due` after every step.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conscience.errors import ConfigError
from conscience.trainer.config import TrainConfig

__all__ = [
    "Checkpoint",
    "Progress",
    "Start",
    "fingerprint",
    "load_checkpoint",
    "remove_checkpoint",
    "restore",
    "resume_checkpoint",
    "save_checkpoint",
    "start_or_resume",
]

_NAME = "checkpoint"


@dataclass
class Start:
    """A warm-started run's adapter before its first step, measured on the pairs the gate will
    read (``indices``): the summed answer log-probs (chosen, rejected) of each."""

    indices: list[int]
    chosen: torch.Tensor
    rejected: torch.Tensor


@dataclass
class Checkpoint:
    step: int  # optimizer steps done
    plan: list[list[list[int]]]  # step -> micro-batch -> pair indices
    fingerprint: str  # of the data and the settings that shape the plan
    ref: tuple[torch.Tensor, torch.Tensor] | None  # precomputed (chosen, rejected) ref logps
    warm: Start | None  # a warm start's log-probs before its first step
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    plan: list[list[list[int]]],
    fingerprint: str,
    ref: tuple[torch.Tensor, torch.Tensor] | None,
    warm: Start | None = None,
) -> None:
    from safetensors.torch import save_file

    tmp, final = out_dir / f"{_NAME}.tmp", out_dir / _NAME
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable(model), str(tmp / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = {"step": step, "plan": plan, "fingerprint": fingerprint, "ref": ref}
    if warm is not None:
        state["warm"] = (warm.indices, warm.chosen, warm.rejected)
    torch.save({**state, "rng": _rng_state()}, tmp / "state.pt")
    swap_in(tmp, final)


def swap_in(written: Path, final: Path) -> None:
    """Put the folder ``written`` in place of ``final``, keeping the previous ``final`` (as
    ``final.old``) until the new one is there: a kill at any point leaves one whole folder."""
    old = final.with_name(f"{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    written.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def whole_folder(final: Path, marker: str) -> Path | None:
    """The folder ``swap_in`` left whole: ``final``, or ``final.old`` when a kill came between
    its two renames; the one holding ``marker`` (written last), or None."""
    for folder in (final, final.with_name(f"{final.name}.old")):
        if (folder / marker).exists():
            return folder
    return None


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The latest checkpoint under ``out_dir``, or ``None`` when there is none."""
    from safetensors.torch import load_file

    folder = whole_folder(out_dir / _NAME, "state.pt")
    if folder is None:
        return None
    state = torch.load(folder / "state.pt", weights_only=True)
    return Checkpoint(
        step=state["step"],
        plan=state["plan"],
        fingerprint=state["fingerprint"],
        ref=state["ref"],
        warm=Start(*state["warm"]) if "warm" in state else None,
        adapter=load_file(str(folder / "adapter.safetensors")),
        optimizer=torch.load(folder / "optimizer.pt", weights_only=True),
        rng=state["rng"],
    )


def restore(
    checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Put the adapter weights, the optimizer state and the RNGs back as they were saved."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in checkpoint.adapter.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(checkpoint.optimizer)
    torch.set_rng_state(checkpoint.rng["torch"])
    if "cuda" in checkpoint.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint.rng["cuda"])


def resume_checkpoint(
    out_dir: Path, fingerprint: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Checkpoint | None:
    """Restore the checkpoint under ``out_dir`` into ``model`` and ``optimizer`` (the RNGs too,
    so the same samples are drawn again); ``None`` when there is none. Raises ``ConfigError``
    when it was saved for other data or settings than ``fingerprint`` says."""
    checkpoint = load_checkpoint(out_dir)
    if checkpoint is not None:
        if checkpoint.fingerprint != fingerprint:
            raise ConfigError(f"the checkpoint in {out_dir} is for other data or settings")
        restore(checkpoint, model, optimizer)
    return checkpoint


def remove_checkpoint(out_dir: Path) -> None:
    """A finished run's adapter is its result; the checkpoint only served an unfinished one."""
    for name in (_NAME, f"{_NAME}.tmp", f"{_NAME}.old"):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def fingerprint(rows: Iterable[tuple[Any, ...]], config: TrainConfig, *shape: Any) -> str:
    """What a checkpoint must match to be resumed: the data and the settings that shape the plan.

    ``rows`` name the encoded data, a tuple per row (its id and token ids); ``shape`` is what a
    loop adds to the settings that shape its steps (the online run: its samples per step).
    """
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
    plan = (config.model, config.seed, config.batch_size, config.grad_accum, config.epochs)
    h.update(repr((plan, config.max_steps, config.max_length, *shape)).encode())
    return h.hexdigest()


@dataclass
class Progress:
    """Where a run stands in its plan, and the checkpoints that carry it across a kill."""

    out_dir: Path
    fingerprint: str
    every: int  # optimizer steps between checkpoints (0: never)
    plan: list[list[list[int]]]  # step -> micro-batch -> row indices
    start: int = 0  # optimizer steps done before this process began
    ref: tuple[torch.Tensor, torch.Tensor] | None = None  # precomputed reference, if any
    warm: Start | None = None  # a warm start's log-probs before its first step, if any

    def save_if_due(
        self, done: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        """Checkpoint every ``every`` steps; not after the last, whose result is the adapter."""
        if self.every and done % self.every == 0 and done < len(self.plan):
            self.save(done, model, optimizer)

    def save(self, done: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Checkpoint now, after ``done`` steps (a run that stops before its plan's end)."""
        save_checkpoint(
            self.out_dir, model, optimizer, step=done, plan=self.plan,
            fingerprint=self.fingerprint, ref=self.ref, warm=self.warm,
        )  # fmt: skip


def start_or_resume(
    out_dir: Path,
    config: TrainConfig,
    fingerprint: str,
    plan: list[list[list[int]]],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> Progress:
    """Step 0 of the fresh ``plan``; with ``config.resume``, where the checkpoint left off.

    Resuming restores the adapter, the optimizer and the RNGs into ``model`` and ``optimizer``
    and takes the checkpoint's plan, step and reference. Raises ``ConfigError`` when the
    checkpoint is for other data or settings than ``fingerprint`` says.
    """
    every = config.checkpoint_every
    checkpoint = (
        resume_checkpoint(out_dir, fingerprint, model, optimizer) if config.resume else None
    )
    if checkpoint is None:
        return Progress(out_dir, fingerprint, every, plan)
    return Progress(
        out_dir, fingerprint, every, checkpoint.plan, checkpoint.step, checkpoint.ref,
        checkpoint.warm,
    )  # fmt: skip
