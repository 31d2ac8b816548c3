"""Sequence-parallel (Ulysses) radial attention on torch.distributed (NCCL on GPUs, gloo on CPUs).

::

    from radial_attention.distributed import init_distributed, shard_sequence, ulysses_attention

    ctx = init_distributed()                               # under torchrun
    q_local = shard_sequence(q, dim=1)                     # [B, S, H, D] -> [B, ceil(S/N), H, D]
    out_local = ulysses_attention(q_local, k_local, v_local, global_mask, layout="BSHD", seq_len=S)

- :mod:`.exchange`: the all-to-all between sequence-sharded and head-sharded tensors (autograd).
- :mod:`.ulysses`: :func:`ulysses_attention` / :func:`ulysses_radial_attention`.
- :mod:`.sharding`: :func:`shard_sequence` / :func:`gather_sequence` (tail padding).
- :mod:`.launch`: :func:`init_distributed` (torchrun) and :func:`run_workers` (local gloo workers).
- :mod:`.diffusers_cp`: radial attention under diffusers' own context parallelism
  (``transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))``).
- :mod:`.generate`: ``radial-attention generate --sequence-parallel N`` under torchrun.

Guide: ``docs/multi-gpu.md``. ``.diffusers_cp`` and ``.generate`` need diffusers when used; import
them by their module path.
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
