"""Sequence-parallel (Ulysses) radial attention on torch.distributed (NCCL on GPUs, gloo on CPUs).

::

    from radial_attention.distributed import init_distributed, shard_sequence, ulysses_attention

    ctx = init_distributed()                               # under torchrun
    q_local = shard_sequence(q, dim=1)                     # [B, S, H, D] -> [B, ceil(S/N), H, D]
    out_local = ulysses_attention(q_local, k_local, v_local, global_mask, layout="BSHD", seq_len=S)

- :mod:`.exchange`: the all-to-all between sequence-sharded and head-sharded tensors (autograd).
- :mod:`.ulysses`: :func:`ulysses_attention` / :func:`ulysses_radial_attention`.
- :mod:`.sharding`: :func:`shard_sequence` / :func:`gather_sequence` (tail padding).
- :mod:`.launch`: :func:`init_distributed` (torchrun; the one process bootstrap, training's too)
  and :func:`run_workers` (local gloo workers).

torch only: this package knows no model library. Radial attention under a model library's own
context parallelism lives with that library's integration (``radial_attention.integrations``),
the multi-GPU ``generate`` driver in ``radial_attention.cli``. Guide: ``docs/multi-gpu.md``.
"""

from .exchange import heads_to_seq, seq_to_heads
from .launch import DistributedContext, init_distributed, run_workers, shutdown
from .sharding import gather_sequence, local_length, shard_sequence
from .ulysses import ulysses_attention, ulysses_radial_attention

__all__ = [
    "DistributedContext",
    "gather_sequence",
    "heads_to_seq",
    "init_distributed",
    "local_length",
    "run_workers",
    "seq_to_heads",
    "shard_sequence",
    "shutdown",
    "ulysses_attention",
    "ulysses_radial_attention",
]
