"""Multi-process training under ``torchrun``: joining the process group and the few
collective operations the training loop needs.

``torchrun --nproc_per_node N personachat train ...`` starts N copies of the same command
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment.
Without those variables (a plain ``personachat train``) everything here is a no-op, so the
single-process path has no distributed code in its way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes, its GPU index on
    this node, and whether it created the process group (and so must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and progress bars."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun launch (usable before setup)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it, so they find what it
    made (the tokenized training data in the cache) instead of all making it at once. A
    no-op without a joined process group. Every rank must enter it. If rank 0 fails in the
    block, the others are let go anyway (and make the result themselves)."""
    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if group and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if group and dist.get_rank() == 0:
            dist.barrier()


def setup(device_type: str) -> DistContext:
    """Join the torchrun process group, once; a single-process context without torchrun.

    On CUDA each process uses GPU ``LOCAL_RANK`` (set as the current device, so a plain
    ``"cuda"`` device means that GPU) and talks over NCCL; on the CPU over gloo. Calling it
    again (the CLI joins before loading the model, training joins in case the Python API is
    run under torchrun) returns the existing group without owning it.
    """
    if not launched_by_torchrun():
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if device_type == "cuda":
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if ``ctx`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (unchanged with one process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(value: int, ctx: DistContext, device: torch.device) -> int:
    """The smallest ``value`` over all processes (e.g. the micro-batch every GPU can take)."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process, so that decisions such as early stopping cannot
    differ between processes (one stopping while the others wait would hang them all)."""
    if not ctx.enabled:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.long, device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def joined_context() -> DistContext:
    """The process group this process has joined, or a single-process context."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


def gather_objects(obj, ctx: DistContext) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process. Collective."""
    if not ctx.enabled:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_rng_states(ctx: DistContext) -> dict[str, torch.Tensor]:
    """Every process's torch generators (CPU, and its own GPU's), keyed ``rank{r}_cpu`` and
    ``rank{r}_cuda``, on every process: what rank 0 saves with a checkpoint so that each rank
    resumes with its own dropout stream. Collective: all ranks call it at the same point."""
    if not ctx.enabled:
        return {}
    mine = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["cuda"] = torch.cuda.get_rng_state()  # the current device: this rank's GPU
    return {
        f"rank{rank}_{kind}": state.cpu()
        for rank, states in enumerate(gather_objects(mine, ctx))
        for kind, state in states.items()
    }


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
