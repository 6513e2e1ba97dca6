"""PyTorch DDP set-up for processes started by ``torchrun`` (NCCL on GPU, gloo on CPU); devices: :mod:`devices`."""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

from voco_backend.devices import resolve_device


@dataclasses.dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world > 1


def init_distributed(device_choice: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=1))
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device)


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True when ``flag`` is true on any process (so every rank stops at the same step)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj``, in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[object] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
