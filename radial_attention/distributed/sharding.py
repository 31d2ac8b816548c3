"""Split a sequence across ranks (padding its tail so every rank holds the same number of tokens)
and gather it back.

::

    S = 10 tokens, N = 4 ranks -> S_local = ceil(10 / 4) = 3, padded length 12:
    rank 0: tokens 0 1 2    rank 1: 3 4 5    rank 2: 6 7 8    rank 3: 9 pad pad

The padding sits at the global tail, which is what :func:`ulysses_attention` expects
(``seq_len=S``): the padded tokens are cut off before attention and come back as zero rows.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .exchange import group_rank, group_size


def local_length(seq_len: int, world_size: int) -> int:
    """Tokens per rank, ``ceil(seq_len / world_size)`` (the last ranks' slices are tail-padded)."""
    if seq_len < 1 or world_size < 1:
        raise ValueError(f"seq_len and world_size must be >= 1, got {seq_len} and {world_size}")
    return math.ceil(seq_len / world_size)


def shard_sequence(x: torch.Tensor, *, dim: int = 1, group=None) -> torch.Tensor:
    """This rank's slice of the full tensor ``x`` along ``dim``, zero-padded to ``ceil(S / N)`` tokens.

    ``x`` is the whole sequence (the same on every rank), e.g. ``[B, S, C]`` with ``dim=1``;
    returns ``[B, ceil(S/N), C]`` (a view when no padding is needed, else a copy). Differentiable:
    the gradient of the slice goes back to those positions of ``x``.
    """
    n, rank = group_size(group), group_rank(group)
    S = x.shape[dim]
    s_local = local_length(S, n)
    start = rank * s_local
    stop = min(S, start + s_local)
    part = x.narrow(dim, min(start, S), max(0, stop - start))
    missing = s_local - part.shape[dim]
    if missing:
        pad_shape = list(x.shape)
        pad_shape[dim] = missing
        part = torch.cat([part, x.new_zeros(pad_shape)], dim=dim)
    return part


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group, seq_len):
        n = group_size(group)
        ctx.dim, ctx.rank, ctx.s_local = dim, group_rank(group), x.shape[dim]
        x = x.contiguous()
        if n == 1:
            full = x
        else:
            parts = [torch.empty_like(x) for _ in range(n)]
            dist.all_gather(parts, x, group=group)
            full = torch.cat(parts, dim=dim)
        return full.narrow(dim, 0, seq_len).clone() if seq_len < full.shape[dim] else full

    @staticmethod
    def backward(ctx, grad):
        # Every rank computes the same function of the gathered tensor (replicated), so the
        # gradient of this rank's slice is that slice of the gradient (padding: no gradient).
        S = grad.shape[ctx.dim]
        start = ctx.rank * ctx.s_local
        stop = min(S, start + ctx.s_local)
        part = grad.narrow(ctx.dim, min(start, S), max(0, stop - start))
        missing = ctx.s_local - part.shape[ctx.dim]
        if missing:
            pad_shape = list(grad.shape)
            pad_shape[ctx.dim] = missing
            part = torch.cat([part, grad.new_zeros(pad_shape)], dim=ctx.dim)
        return part, None, None, None


def gather_sequence(x_local: torch.Tensor, *, dim: int = 1, group=None, seq_len=None) -> torch.Tensor:
    """All ranks' slices concatenated along ``dim`` and cut to ``seq_len`` tokens (default all).

    The inverse of :func:`shard_sequence`: ``[B, S_local, C]`` on each rank -> ``[B, seq_len, C]``
    on every rank. Differentiable (for a loss computed identically on every rank).
    """
    dim = dim % x_local.dim()
    total = group_size(group) * x_local.shape[dim]
    seq_len = total if seq_len is None else int(seq_len)
    if not 0 < seq_len <= total:
        raise ValueError(f"seq_len must be in 1..{total} (N * S_local), got {seq_len}")
    return _GatherSequence.apply(x_local, dim, group, seq_len)
