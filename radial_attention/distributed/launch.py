"""Starting torch.distributed: under ``torchrun`` (GPUs, NCCL) or as local CPU workers (gloo).

- :func:`init_distributed` reads the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), picks this process's device (one GPU per
  process when CUDA is there, else the CPU) and the backend that fits it (NCCL / gloo), and
  returns where this process runs. The one process bootstrap of the package: sequence-parallel
  attention, ``generate --sequence-parallel`` and data-parallel ``train-lora`` all start here.
- :func:`run_workers` starts ``N`` local processes (forkserver) that join a gloo group on a free port
  and run one function: what the CPU tests and the benchmarks' ``--smoke`` mode use. A worker that
  fails or hangs past the timeout fails the whole run (no silent hang).

This module sets no NCCL or other workplace environment variables: the launch scripts and the
docs do (``examples/*.sh``, ``docs/multi-gpu.md``: e.g. NVLink multicast off with
``NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` where the machines need it).
"""

from __future__ import annotations

import datetime
import io
import os
import socket
import traceback
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

# What every forkserver of run_workers imports once, for all its workers.
DEFAULT_PRELOAD = ("torch", "torch.distributed", "radial_attention.distributed")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: its rank, the world size, the local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]  # "nccl" / "gloo", or None for a single process without a group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: collectives (DDP, all-reduce, barriers) have work to do."""
        return self.world_size > 1


def init_distributed(backend: Optional[str] = None, timeout_s: float = 1800.0, *, device=None) -> DistributedContext:
    """Join the process group that ``torchrun`` set up (or run alone when it did not).

    Args:
        backend: ``"nccl"`` / ``"gloo"``; default NCCL when this process's device is a GPU, else gloo.
        timeout_s: collective timeout (a hung collective raises after it).
        device: this process's device: ``None`` (``cuda:LOCAL_RANK`` when CUDA is available and
            the backend is not gloo, else the CPU) or an explicit one; a bare ``"cuda"`` becomes
            ``cuda:LOCAL_RANK`` under torchrun (the current GPU in a single process).

    Returns:
        the :class:`DistributedContext`. Without ``WORLD_SIZE`` in the environment (a plain
        ``python`` run) no group is created and the context says ``world_size=1``.

    Raises:
        RuntimeError: NCCL without a visible GPU; ``WORLD_SIZE`` set but ``MASTER_ADDR`` /
            ``MASTER_PORT`` not (not a torchrun launch).
        ValueError: an unknown backend, or NCCL with a CPU device.
    """
    torchrun = "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available()
    if backend not in (None, "nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None (the device's), got {backend!r}")
    if backend == "nccl" and not cuda:
        raise RuntimeError("backend 'nccl' needs CUDA GPUs; none is visible (use gloo on CPUs)")
    if device is None:
        device = "cuda" if cuda and backend != "gloo" else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if torchrun else torch.cuda.current_device())
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"backend 'nccl' runs on GPUs; this process's device is {device}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torchrun:
        return DistributedContext(0, 1, 0, device, None)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {var} is not set: launch with torchrun")
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue, timeout_s: float, threads: int):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Tensors travel as torch.save bytes, not as shared-memory handles that die with the worker.
        buffer = io.BytesIO()
        torch.save(result, buffer)
        queue.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # report every failure to the parent, then exit
        queue.put((rank, "error", traceback.format_exc()))


def run_workers(
    fn: Callable,
    world_size: int,
    *args,
    timeout_s: float = 120.0,
    threads: int = 1,
    preload: Optional[Sequence[str]] = None,
) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new CPU processes joined by gloo.

    ``fn`` must be importable by name (a module-level function) and its result savable with
    ``torch.save`` (tensors, numbers, strings, lists, dicts). ``preload``: modules the forkserver
    imports once for all workers (default: torch and this package; a caller whose workers need a
    heavy library, a model library say, adds it so that no worker imports it again); only the
    first call in a process starts the forkserver, so only its ``preload`` counts.
    Returns the results ordered by rank. Raises ``RuntimeError`` with the worker's traceback if one
    fails, or ``TimeoutError`` (after terminating them) if they do not all finish in
    ``timeout_s`` seconds.
    """
    import queue as queue_mod

    import torch.multiprocessing as mp

    # forkserver: torch is imported once in the server and each worker is a fork of it (a few
    # hundred ms instead of a fresh interpreter importing torch; the server has started no threads).
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(DEFAULT_PRELOAD if preload is None else preload))
    else:
        ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue, timeout_s, threads), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict = {}
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    try:
        while len(results) < world_size:
            left = (deadline - datetime.datetime.now()).total_seconds()
            if left <= 0:
                raise TimeoutError(
                    f"{world_size} workers running {getattr(fn, '__name__', fn)} did not finish in {timeout_s:.0f} s "
                    f"(finished ranks: {sorted(results)})"
                )
            try:
                rank, status, payload = queue.get(timeout=min(left, 1.0))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                if dead:
                    raise RuntimeError(
                        f"worker rank(s) {dead} died without a result (exit codes {[procs[r].exitcode for r in dead]})"
                    )
                continue
            if status == "error":
                raise RuntimeError(f"worker rank {rank} failed:\n{payload}")
            results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return [results[r] for r in range(world_size)]


def shutdown() -> None:
    """Destroy the process group if there is one (end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
