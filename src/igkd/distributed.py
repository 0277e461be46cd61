"""Data-parallel runs over ``torch.distributed``, launched by ``torchrun``: who this process is, what it shares.

``torchrun --nproc_per_node N -m igkd.cli distill ...`` starts N copies of the same command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`session` joins
them into one process group (gloo on the CPU, NCCL on CUDA, chosen from the device); the training loop
reads the group from :func:`current` and trains data-parallel with PyTorch's
``DistributedDataParallel``. Without ``WORLD_SIZE`` (or with 1) nothing here changes anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, IgkdError

T = TypeVar("T")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torchrun's ``RANK``/``WORLD_SIZE``, else 0 of 1."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process launched alone: the one that prints and writes."""
    return resolve_rank(None, None)[0] == 0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part [lo, hi) of n items; parts differ in size by at most one."""
        q, r = divmod(n, self.world_size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or max) ``t`` over the ranks in place; every rank gets the same bits."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


def current() -> DistContext:
    """The process group this process has joined, if any."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def session(device: torch.device) -> Iterator[DistContext]:
    """Join torchrun's process group for the block when ``WORLD_SIZE`` > 1; leave it at the end.

    A group that is already initialised (by the caller) is used as it is and left alone.
    """
    rank, world_size = resolve_rank(None, None)
    if world_size == 1 or dist.is_initialized():
        yield current()
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world_size} is set but {' and '.join(missing)} not: launch data-parallel "
                          "runs with torchrun (README: multi-GPU runs)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), rank=rank, world_size=world_size,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def on_main(ctx: DistContext, fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result (or its error) shared with every rank.

    So a file only rank 0 need see (a checkpoint to resume from) is read once, and a failure is raised
    on every rank instead of leaving the others waiting for rank 0 in their next collective.
    """
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as e:  # shared below, then raised here as it was
            error = e
    if ctx.enabled:
        shared = error if error is None or isinstance(error, IgkdError) else \
            RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")
        result, shared = ctx.broadcast_object((result, shared))
        error = error if ctx.is_main else shared
    if error is not None:
        raise error
    return result


@contextmanager
def main_only(ctx: DistContext, make: Callable[[], AbstractContextManager]) -> Iterator[None]:
    """Enter ``make()`` on rank 0 only (a run directory's lock, say) for the block; failing to enter it
    is an error on every rank."""
    with ExitStack() as stack:

        def enter() -> None:
            stack.enter_context(make())

        on_main(ctx, enter)
        yield


def resolve_sync_bn(setting: bool | None, ctx: DistContext, device: torch.device) -> bool:
    """Whether the student's batch norm uses statistics over the whole global batch (``train.sync_bn``).

    None: yes when data-parallel on CUDA. PyTorch's ``SyncBatchNorm`` runs on GPUs only, so on the CPU
    each process normalises its own part of the batch (and asking for it there is an error).
    """
    if setting and ctx.enabled and device.type != "cuda":
        raise ConfigError(f"bad value for train.sync_bn: {setting!r} (allowed: false or null on {device.type}: "
                          "PyTorch's SyncBatchNorm runs on GPUs only)")
    return ctx.enabled and device.type == "cuda" if setting is None else setting and ctx.enabled


def average_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks, in place."""
    if not ctx.enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            ctx.all_reduce_(buf).div_(ctx.world_size)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel: gradients averaged over the ranks during backward.

    Rank 0's parameters and buffers are copied to every rank once, here, not before every forward: the
    frozen teacher's buffers never change, and the student's are either synchronised batch norm's or
    averaged by the training loop before they are evaluated or saved.
    """
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


__all__ = ["DistContext", "average_buffers", "backend_for", "current", "data_parallel", "is_main_process",
           "main_only", "on_main", "resolve_rank", "resolve_sync_bn", "session"]
