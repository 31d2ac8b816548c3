"""The Ulysses all-to-all: sequence-sharded tensors <-> head-sharded tensors, with autograd.

With ``N`` ranks, rank ``r`` holds tokens ``r*S_local .. (r+1)*S_local - 1`` of every head. One
all-to-all gives each rank *all* tokens of heads ``r*H_local .. (r+1)*H_local - 1``
(``H_local = H / N``)::

    before (sequence-sharded)        after (head-sharded)
    rank 0: [B, S_local, H, D]       rank 0: [B, H_local, S, D]   heads 0 .. H_local-1
    rank 1: [B, S_local, H, D]  -->  rank 1: [B, H_local, S, D]   heads H_local .. 2*H_local-1
    ...                              ...

The exchange only moves elements between ranks (a permutation of the global tensor), so its
adjoint is its inverse: the backward of :func:`seq_to_heads` is :func:`heads_to_seq` applied to
the gradients and vice versa.

Padding: ``N * S_local`` may exceed the real length ``seq_len`` (the last rank's slice is padded
at its tail so that every rank holds the same number of tokens). :func:`seq_to_heads` returns
exactly ``seq_len`` tokens (the padded tail is cut off, as a view, before attention sees it) and
:func:`heads_to_seq` sends zeros for the padded positions.

Collectives: ``torch.distributed.all_to_all_single`` with equal splits. NCCL supports it, and so
does gloo in the torch versions this project supports (checked on torch 2.13 CPU for float64,
float32, bfloat16 and float16), so both backends use the same code path. q, k and v travel in one
collective (one launch instead of three).

Buffers: the send buffer is ``[N, S_local, k, B, H_local, D]`` (``k`` = number of tensors
exchanged together). Received, it reads as ``[S_pad, k, B, H_local, D]``, so each head-sharded
``[B, H_local, S, D]`` result is a strided *view* of the receive buffer, no extra copy (the
attention op accepts any strides).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist

LAYOUTS = ("BHSD", "BSHD")


def group_size(group: Optional["dist.ProcessGroup"]) -> int:
    """Ranks in ``group`` (``None`` = the default group); 1 if torch.distributed is not initialized."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("a process group was given but torch.distributed is not initialized")
        return 1
    return dist.get_world_size(group)


def group_rank(group: Optional["dist.ProcessGroup"]) -> int:
    """This process's rank within ``group`` (0 when torch.distributed is not initialized)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def _all_to_all(send: torch.Tensor, group) -> torch.Tensor:
    """Equal-split all-to-all along dim 0 of a contiguous ``[N, ...]`` buffer (identity for N=1)."""
    if send.shape[0] == 1:
        return send
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def _as_bshd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A ``[B, S, H, D]`` view of a tensor in ``layout``."""
    return x if layout == "BSHD" else x.transpose(1, 2)


# ---------------------------------------------------------------------- packing
def _pack_seq_to_heads(xs: Sequence[torch.Tensor], layout: str, n: int) -> torch.Tensor:
    """Local sequence slices -> send buffer ``[N, S_local, k, B, H_local, D]``.

    Chunk ``r`` of dim 0 holds heads ``r*H_local ..`` of this rank's tokens: the part rank ``r``
    needs.
    """
    x0 = _as_bshd(xs[0], layout)
    B, s_local, H, D = x0.shape
    buf = x0.new_empty(n, s_local, len(xs), B, H // n, D)
    for i, x in enumerate(xs):
        # [B, S_local, H, D] -> [B, S_local, N, H_local, D] -> [N, S_local, B, H_local, D]
        buf[:, :, i].copy_(_as_bshd(x, layout).unflatten(2, (n, H // n)).permute(2, 1, 0, 3, 4))
    return buf


def _unpack_heads(recv: torch.Tensor, seq_len: int) -> list:
    """Receive buffer ``[N, S_local, k, B, H_local, D]`` -> ``k`` views ``[B, H_local, seq_len, D]``.

    Chunk ``r`` of dim 0 came from rank ``r``: tokens ``r*S_local ..``, so dims 0 and 1 together
    are the global token index, and the padded tail is cut by the slice ``[:seq_len]``.
    """
    n, s_local, k = recv.shape[:3]
    tokens = recv.view(n * s_local, *recv.shape[2:])[:seq_len]  # [S, k, B, H_local, D]
    return [tokens[:, i].permute(1, 2, 0, 3) for i in range(k)]  # [B, H_local, S, D] views


def _pack_heads_to_seq(ys: Sequence[torch.Tensor], n: int, s_local: int) -> torch.Tensor:
    """Head-sharded ``[B, H_local, S, D]`` tensors -> send buffer ``[N, S_local, k, B, H_local, D]``.

    Chunk ``r`` of dim 0 holds tokens ``r*S_local ..`` (the slice rank ``r`` owns); positions past
    ``S`` (padding) are zero.
    """
    y0 = ys[0]
    B, h_local, S, D = y0.shape
    buf = y0.new_empty(n * s_local, len(ys), B, h_local, D)
    if n * s_local > S:
        buf[S:].zero_()
    for i, y in enumerate(ys):
        buf[:S, i].copy_(y.permute(2, 0, 1, 3))  # [B, H_local, S, D] -> [S, B, H_local, D]
    return buf.view(n, s_local, len(ys), B, h_local, D)


def _unpack_seq(recv: torch.Tensor, layout: str) -> list:
    """Receive buffer ``[N, S_local, k, B, H_local, D]`` (chunk ``r`` = heads ``r*H_local ..``) ->
    ``k`` contiguous local tensors in ``layout`` (``[B, S_local, H, D]`` or ``[B, H, S_local, D]``)."""
    n, s_local, k, B, h_local, D = recv.shape
    outs = []
    for i in range(k):
        r = recv[:, :, i]  # [N, S_local, B, H_local, D]
        if layout == "BSHD":
            outs.append(r.permute(2, 1, 0, 3, 4).reshape(B, s_local, n * h_local, D).contiguous())
        else:
            outs.append(r.permute(2, 0, 3, 1, 4).reshape(B, n * h_local, s_local, D).contiguous())
    return outs


# ---------------------------------------------------------------------- autograd functions
class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, layout, seq_len, *xs):
        n = group_size(group)
        x0 = _as_bshd(xs[0], layout)
        ctx.group, ctx.layout, ctx.n, ctx.s_local = group, layout, n, x0.shape[1]
        recv = _all_to_all(_pack_seq_to_heads(xs, layout, n), group)
        return tuple(_unpack_heads(recv, seq_len))

    @staticmethod
    def backward(ctx, *grads):
        # [B, H_local, S, D] grads -> the owners of each token slice (the inverse exchange).
        send = _pack_heads_to_seq(grads, ctx.n, ctx.s_local)
        return (None, None, None, *_unpack_seq(_all_to_all(send, ctx.group), ctx.layout))


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, layout, s_local, *ys):
        n = group_size(group)
        ctx.group, ctx.layout, ctx.n, ctx.seq_len = group, layout, n, ys[0].shape[2]
        recv = _all_to_all(_pack_heads_to_seq(ys, n, s_local), group)
        return tuple(_unpack_seq(recv, layout))

    @staticmethod
    def backward(ctx, *grads):
        send = _pack_seq_to_heads(grads, ctx.layout, ctx.n)
        return (None, None, None, *_unpack_heads(_all_to_all(send, ctx.group), ctx.seq_len))


# ---------------------------------------------------------------------- public functions
def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def seq_to_heads(
    xs: Sequence[torch.Tensor], *, group=None, layout: str = "BHSD", seq_len: Optional[int] = None
) -> list:
    """All-to-all: this rank's sequence slice of every head -> all tokens of this rank's heads.

    Args:
        xs: tensors of one shape, ``[B, H, S_local, D]`` (``layout="BHSD"``) or
            ``[B, S_local, H, D]`` (``"BSHD"``); rank ``r`` holds tokens ``r*S_local ..``. Every
            rank must pass the same shapes. Exchanged in one collective.
        group: the sequence-parallel process group (``None``: the default group).
        seq_len: real global length (default ``N * S_local``); tokens past it are padding and are
            cut off.

    Returns:
        one ``[B, H/N, seq_len, D]`` tensor per input (strided views of one receive buffer) with
        heads ``rank*H/N .. (rank+1)*H/N - 1``. Differentiable.
    """
    _check_layout(layout)
    n = group_size(group)
    x0 = _as_bshd(xs[0], layout)
    B, s_local, H, D = x0.shape
    for x in xs[1:]:
        if x.shape != xs[0].shape or x.dtype != xs[0].dtype or x.device != xs[0].device:
            raise ValueError(
                f"tensors exchanged together must share shape, dtype and device: {tuple(xs[0].shape)} "
                f"{xs[0].dtype} {xs[0].device} vs {tuple(x.shape)} {x.dtype} {x.device}"
            )
    if H % n:
        raise ValueError(_heads_message(H, n))
    seq_len = n * s_local if seq_len is None else int(seq_len)
    if not 0 < seq_len <= n * s_local:
        raise ValueError(f"seq_len must be in 1..N*S_local = 1..{n}*{s_local} = {n * s_local}, got {seq_len}")
    return list(_SeqToHeads.apply(group, layout, seq_len, *xs))


def heads_to_seq(ys: Sequence[torch.Tensor], *, group=None, layout: str = "BHSD", s_local: int) -> list:
    """The inverse all-to-all: ``[B, H/N, S, D]`` (all tokens, this rank's heads) -> this rank's
    sequence slice of every head, ``[B, H, s_local, D]`` (``"BHSD"``) or ``[B, s_local, H, D]``
    (``"BSHD"``), contiguous. Positions past ``S`` (up to ``N * s_local``) are padding and come back
    as zeros. Differentiable."""
    _check_layout(layout)
    n = group_size(group)
    S = ys[0].shape[2]
    if not 0 < S <= n * s_local:
        raise ValueError(f"S={S} tokens do not fit {n} slices of s_local={s_local}")
    return list(_HeadsToSeq.apply(group, layout, int(s_local), *ys))


def _heads_message(H: int, n: int) -> str:
    divisors = [d for d in range(1, H + 1) if H % d == 0]
    return (
        f"Ulysses sequence parallelism splits the attention heads across the ranks: H={H} heads "
        f"cannot be divided among {n} ranks (H % {n} = {H % n}). Use a sequence-parallel group "
        f"whose size divides {H}: one of {divisors}."
    )
