"""Scale-out under ``torchrun``: detect the environment, shard items, synchronise ranks.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR`` /
``MASTER_PORT``). With ``WORLD_SIZE > 1`` :func:`init` starts ``torch.distributed`` (NCCL
when the run uses CUDA, Gloo otherwise); each rank then takes ``items[rank::world_size]``
(disjoint, no padding duplicates) and uses ``cuda:LOCAL_RANK`` when the device is ``cuda``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

__all__ = ["DistContext", "detect", "init", "shard"]

T = TypeVar("T")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialised: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if not self.initialised:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.initialised:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_sum(self, value: int) -> int:
        if not self.initialised:
            return value
        import torch.distributed as dist

        objs: list[Any] = [None] * self.world_size
        dist.all_gather_object(objs, value)
        return int(sum(objs))

    def close(self) -> None:
        if self.initialised:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            finally:
                self.initialised = False


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def detect() -> DistContext:
    """The torchrun environment (a single process when ``WORLD_SIZE`` is unset or 1)."""
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local = _int_env("LOCAL_RANK", 0)
    if world <= 1:
        return DistContext()
    return DistContext(rank=rank, world_size=world, local_rank=local)


def local_device(device: str, ctx: DistContext) -> str:
    """``auto`` → its device here (``cuda``, ``mps`` or ``cpu``); ``cuda`` → ``cuda:LOCAL_RANK``
    under torchrun; anything else unchanged."""
    if device == "auto":
        from .._runtime import auto_device

        device = auto_device()
    if ctx.enabled and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def init(ctx: DistContext, device: str, timeout_hours: float = 72.0) -> DistContext:
    """Start the process group (no-op for a single process)."""
    if not ctx.enabled:
        return ctx
    import torch.distributed as dist

    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(torch.device(local_device(device, ctx)))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=timeout_hours))
    ctx.backend = backend
    ctx.initialised = True
    return ctx


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """``items[rank::world_size]``: a disjoint share, every item in exactly one share."""
    return list(items[ctx.rank :: ctx.world_size])
