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

A model one device cannot hold (``shard_base``): the frozen base's weights are split over the
ranks with FSDP (``fully_shard``), each transformer block its own unit and the decoder's
embeddings and norm the root; a block's weights are gathered for its forward and again for its
backward, then dropped. The adapter stays whole on every rank (FSDP ignores it) and its
gradients are summed as above, so the step is the same one. Every forward and backward is then
a collective: the ranks must run as many of them, in the same order (``idle_passes``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["Ranks", "join", "leave", "shard_base", "shard_mesh"]

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

    def idle_passes(self, micro_batches: list[list[int]]) -> int:
        """Passes this rank runs without pairs of its own in a step, so that it runs as many as
        the busiest rank: with a sharded base every pass gathers weights from all ranks."""
        busiest = -(-len(micro_batches) // self.world)
        return busiest - len(self.share(micro_batches))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def in_turn(self) -> Iterator[None]:
        """The body on one rank after another, rank 0 first: rank r enters when ranks 0..r-1
        have left it (each rank passes ``world`` barriers, the r-th right after its body)."""
        for _ in range(self.rank):
            self.barrier()
        yield
        for _ in range(self.rank, self.world):
            self.barrier()

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


def _blocks(base: Any) -> list[torch.nn.Module]:
    """The decoder's transformer blocks: the classes the model names as never to be split
    (``_no_split_modules``, what accelerate wraps for FSDP too)."""
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.get_decoder().modules() if type(m).__name__ in names]


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def shard_mesh(ranks: Ranks, device: torch.device) -> Any:
    """The ranks as FSDP's one-dimensional mesh; made by every rank at once (a collective)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (ranks.world,))


def shard_base(model: Any, device: torch.device, mesh: Any) -> tuple[int, int]:
    """Split the frozen base of ``model`` (a peft model, on the CPU) over the ranks of
    ``mesh`` (``shard_mesh``), and move it to ``device``: each block its own FSDP unit, the
    decoder the root; the adapter's parameters (the trainable ones) stay whole and are moved as
    they are. An LM head outside the decoder stays whole too (with tied embeddings it keeps the
    full matrix the decoder shards). Returns the base's bytes held on this rank and the whole
    base's. No collective: the ranks may call it in turn (``Ranks.in_turn``), so that only one
    whole copy of the base is in host memory at a time.

    Call it after the adapter exists and before the first forward, on every rank.
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    base = model.get_base_model()
    blocks = _blocks(base)
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no transformer block to shard")
    whole = _bytes([p for p in model.parameters() if not p.requires_grad])
    adapter = {p for p in model.parameters() if p.requires_grad}
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=adapter)
    fully_shard(base.get_decoder(), mesh=mesh, ignored_params=adapter)
    # What FSDP does not manage (the adapter, a head outside the decoder) goes whole, in memory
    # of its own: a tensor still in the loaded checkpoint's memory map would keep the whole
    # file mapped, and every page the sharding read resident.
    for tensor in [*model.parameters(), *model.buffers()]:
        if not isinstance(tensor, DTensor):
            tensor.data = tensor.data.to(device, copy=True)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return _bytes([p.to_local() if isinstance(p, DTensor) else p for p in frozen]), whole
