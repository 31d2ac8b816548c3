"""Data-parallel training through ``torch.distributed``: the process group comes from the
environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); NCCL on CUDA, gloo on CPU. One process per GPU; every process holds the whole
model and a different shard of each batch; DDP averages the LoRA gradients.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device=None, timeout_s: float = 1800.0) -> ProcessInfo:
    """Join the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1`` (else a
    single process), and pick this process's device.

    Args:
        device: ``None`` (``cuda:LOCAL_RANK`` if CUDA is available, else CPU) or an explicit
            device; with several processes an explicit ``"cuda"`` becomes ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout of the process group (a hung all-reduce raises after it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return ProcessInfo(rank, world, local, device)


def wrap(model: torch.nn.Module, info: ProcessInfo) -> torch.nn.Module:
    """DDP around the model when there are several processes, else the model itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def mean_across(value: torch.Tensor, info: ProcessInfo) -> torch.Tensor:
    """The mean of a tensor over all processes (the tensor itself in a single process)."""
    if not info.distributed:
        return value
    v = value.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


def barrier(info: ProcessInfo) -> None:
    if info.distributed:
        dist.barrier()


def teardown(info: ProcessInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
