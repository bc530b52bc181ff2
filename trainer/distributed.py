"""Training on several processes: ``torchrun`` / ``accelerate launch`` run ``conscience train``
unchanged, and the processes share each optimizer step.

Data parallel, as DDP: every process (rank) holds the whole model and the same pairs (rank 0's,
broadcast, so a pair logged between two ranks' reads cannot split them), and the same plan;
an optimizer step's micro-batches are dealt out by rank (micro-batch ``i`` of the step to rank
``i mod world``); after its share of the step, each rank's LoRA gradients are summed over all
ranks in one all-reduce, so every rank takes the same step and the adapters stay identical.
A step of ``grad_accum`` micro-batches per rank on ``world`` ranks is therefore the step of one
process with ``grad_accum x world`` (test: tests/trainer/test_distributed.py).

The gradients are reduced by hand, not through ``DistributedDataParallel``: the loop calls the
decoder and the LM head directly and runs the reference with the adapter off, neither of which
goes through a wrapper's ``forward``, and a LoRA's gradients are a few MB, one all-reduce a
step, with nothing for DDP's bucketing to overlap.

Only rank 0 writes (adapter, checkpoints, metrics, report), publishes and marks pairs consumed;
the launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...) says
whether and how to join. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["Ranks", "join", "leave"]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes, publishes and marks pairs consumed."""
        return self.rank == 0

    def share(self, micro_batches: list[list[int]]) -> list[list[int]]:
        """This rank's micro-batches of one optimizer step (maybe none, in a short last step)."""
        return micro_batches[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def sync_params(self, params: list[torch.nn.Parameter]) -> None:
        """Rank 0's values of ``params`` everywhere (the seeded init should agree; make sure)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Every rank's gradients of ``params`` summed, in place, in one all-reduce."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def sum_values(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Per-key sums over the ranks (a step's metrics: each rank saw part of its pairs)."""
        if self.world == 1:
            return values
        keys = sorted(values)
        flat = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(flat)
        return dict(zip(keys, flat.tolist(), strict=True))

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag`` on every rank (stop or go: the ranks must all do the same)."""
        if self.world == 1:
            return flag
        box = torch.tensor([int(flag)], device=device)
        torch.distributed.broadcast(box, src=0)
        return bool(box.item())

    def device(self, requested: str) -> torch.device | None:
        """The device of this rank: its own GPU under a launcher; None: the config decides."""
        cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        if self.world == 1 or not cuda:
            return None
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)


def join(environ: dict[str, str] | Any = os.environ) -> Ranks:
    """This process's ranks under a launcher, joining the process group the first time; one
    process (``Ranks()``) without one. The launcher's variables are its protocol with torch:
    they are read here and by ``init_process_group`` only."""
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    ranks = Ranks(int(environ["RANK"]), world, int(environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return ranks


def leave() -> Ranks:
    """Leave the process group (once every rank is done with it); this process's ranks."""
    ranks = join()
    if ranks.world > 1:
        torch.distributed.barrier()  # no rank tears the group down under another's last call
        torch.distributed.destroy_process_group()
    return ranks
