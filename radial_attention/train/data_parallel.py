"""Data-parallel training through ``torch.distributed``: one process per GPU, launched by
``torchrun``; every process holds the whole model and a different shard of each batch; DDP
averages the LoRA gradients. The process group itself comes from the package's one bootstrap,
:func:`radial_attention.distributed.init_distributed` (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from radial_attention.distributed.launch import DistributedContext, init_distributed, shutdown

# The trainer's name for where a process runs (rank, world size, device, is_main, distributed).
ProcessInfo = DistributedContext


def setup(device=None, timeout_s: float = 1800.0) -> ProcessInfo:
    """Join torchrun's process group (a single process without one) and pick this process's device.

    Args:
        device: ``None`` (``cuda:LOCAL_RANK`` if CUDA is available, else CPU) or an explicit
            device; under torchrun a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout of the process group (a hung all-reduce raises after it).
    """
    return init_distributed(timeout_s=timeout_s, device=device)


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
    """Leave the process group (if this process joined one)."""
    shutdown()
