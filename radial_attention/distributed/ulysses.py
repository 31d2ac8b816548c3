"""Ulysses sequence-parallel block-sparse (radial) attention.

::

    out_local = ulysses_attention(q_local, k_local, v_local, global_mask, group=group, layout="BSHD")

Each of the ``N`` ranks of ``group`` holds a contiguous slice of the sequence (rank ``r``: tokens
``r*S_local .. (r+1)*S_local - 1``) of q, k and v. One all-to-all gives every rank all ``S``
tokens of ``H/N`` heads; the normal op (:func:`radial_attention.ops.block_sparse_attention`)
applies the *global* ``[nb, nb]`` mask to them, exactly as on one process; a second all-to-all
returns each rank its slice of the output. Gradients flow back through both exchanges.

Lengths that ``N`` does not divide: pad the sequence at its tail to ``N * S_local`` tokens
(:func:`radial_attention.distributed.shard_sequence` does it) and pass the real length as
``seq_len``. The padded tokens are cut off before attention (they are never keys, and the global
mask is the one for ``seq_len`` tokens), and their output rows are zero.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from radial_attention.mask import BlockSparseMask
from radial_attention._deprecation import renamed_keyword
from radial_attention.ops import block_sparse_attention
from radial_attention.ops.api import as_block_sparse_mask, checked_radial_mask

from .exchange import LAYOUTS, _check_layout, _heads_message, group_rank, group_size, heads_to_seq, seq_to_heads


def _mask_geometry(block_mask, block_size: Optional[int]):
    """(nb, block size, shape) of a raw bool tensor or a BlockSparseMask."""
    if isinstance(block_mask, BlockSparseMask):
        return block_mask.num_blocks, block_mask.block_size, tuple(block_mask.shape)
    if isinstance(block_mask, torch.Tensor):
        return int(block_mask.shape[-1]), (128 if block_size is None else block_size), tuple(block_mask.shape)
    raise TypeError(
        f"block_mask must be a bool tensor [nb, nb] / [B|1, H|1, nb, nb] or a BlockSparseMask, "
        f"got {type(block_mask).__name__}"
    )


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(q, k, v, layout, seq_len, key_lengths) -> list:
    """Integers that every rank's call must agree on: q/k/v shapes and dtype, layout, seq_len and
    whether key_lengths is given (-1 / -2 stand for a missing dim / not a tensor)."""

    def dims(t):
        if not isinstance(t, torch.Tensor) or t.dim() > 4:
            return [-2] * 4
        return list(t.shape) + [-1] * (4 - t.dim())

    dtype = q.dtype if isinstance(q, torch.Tensor) else None
    seq = seq_len if isinstance(seq_len, int) and not isinstance(seq_len, bool) else (0 if seq_len is None else -1)
    return (
        dims(q)
        + dims(k)
        + dims(v)
        + [
            _DTYPES.index(dtype) if dtype in _DTYPES else -1,
            LAYOUTS.index(layout) if layout in LAYOUTS else -1,
            seq,
            int(key_lengths is not None),
        ]
    )


def _check_ranks_agree(q, k, v, layout, seq_len, key_lengths, group, n: int) -> None:
    """Raise the same ValueError on every rank if the ranks' calls differ in shapes, dtype, layout,
    seq_len or key_lengths: mismatched all-to-alls would otherwise hang or abort (gloo: SIGABRT).

    One all-gather of ~16 integers (and a host sync) per call, before anything else can raise.
    """
    import torch.distributed as dist

    device = q.device if isinstance(q, torch.Tensor) and dist.get_backend(group) == "nccl" else torch.device("cpu")
    mine = torch.tensor(_describe(q, k, v, layout, seq_len, key_lengths), dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(every, mine, group=group)
    rows = [t.tolist() for t in every]
    if any(r != rows[0] for r in rows):

        def show(r):
            shapes = [tuple(x for x in r[i : i + 4] if x != -1) for i in (0, 4, 8)]
            dtype = _DTYPES[r[12]] if 0 <= r[12] < len(_DTYPES) else "?"
            return (
                f"q {shapes[0]}, k {shapes[1]}, v {shapes[2]}, {dtype}, layout "
                f"{LAYOUTS[r[13]] if r[13] >= 0 else '?'}, seq_len {r[14] or None}, key_lengths {'yes' if r[15] else 'no'}"
            )

        detail = "; ".join(f"rank {i}: {show(r)}" for i, r in enumerate(rows))
        raise ValueError(
            "ulysses_attention: the ranks passed different inputs (every rank must pass its own "
            f"S_local slice of the same shape, dtype, layout, seq_len and key_lengths): {detail}"
        )


def _local_heads_mask(block_mask, block_size, H: int, n: int, rank: int):
    """The mask for this rank's heads ``rank*H/N ..``: the mask itself unless it has a head dim of H.

    The slice is kept in the mask's derived cache per (rank, N), so a kernel's index lists are not
    rebuilt on every call (a raw tensor is first wrapped by the api's one wrapper cache).
    """
    shape = block_mask.shape
    if n == 1 or len(shape) != 4 or int(shape[1]) == 1:
        return block_mask
    if int(shape[1]) != H:
        raise ValueError(f"block mask of shape {tuple(shape)} has {shape[1]} heads; expected 1 or H={H}")
    mask = as_block_sparse_mask(block_mask, block_size)
    h = H // n

    def cut() -> BlockSparseMask:
        return BlockSparseMask(mask._dense4d()[:, rank * h : (rank + 1) * h].contiguous(), mask.block_size)

    return mask.derived(("ulysses.heads", rank, n), cut)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: Union[torch.Tensor, BlockSparseMask],
    *,
    group=None,
    layout: str = "BHSD",
    seq_len: Optional[int] = None,
    block_size: Optional[int] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
    key_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Block-sparse attention over a sequence split across the ranks of ``group``.

    Args:
        q, k, v: this rank's slice, ``[B, H, S_local, D]`` (``layout="BHSD"``) or
            ``[B, S_local, H, D]`` (``"BSHD"``, the layout of video transformers' attention
            processors); any strides. Every rank passes the same shapes; rank ``r`` holds global
            tokens ``r*S_local ..``.
        block_mask: the mask of the WHOLE sequence: bool ``[nb, nb]`` / ``[B|1, H|1, nb, nb]`` or a
            BlockSparseMask, ``nb = ceil(seq_len / block_size)``; the same on every rank.
        group: the sequence-parallel process group (``None``: the default group; without an
            initialized torch.distributed this is plain single-process attention).
        seq_len: real global length, ``1 .. N*S_local`` (default ``N*S_local``). Tokens past it
            are tail padding: never attended to, and their output rows are 0.
        block_size, scale, backend, key_lengths: as in
            :func:`radial_attention.ops.block_sparse_attention`; ``key_lengths`` ``[B]`` counts
            global positions.

    Returns:
        this rank's output slice in q's layout and dtype, contiguous.

    Raises:
        ValueError: H not divisible by the group size, a mask that does not cover the global
            sequence, a bad ``seq_len`` or layout (and everything the op itself rejects).
    """
    n = group_size(group)
    _agree_first(q, k, v, layout, seq_len, key_lengths, group, n)
    return _ulysses_attention(q, k, v, block_mask, n, group, layout, seq_len, block_size, scale, backend, key_lengths)


def _agree_first(q, k, v, layout, seq_len, key_lengths, group, n: int) -> None:
    """The ranks' agreement check (:func:`_check_ranks_agree`), where there are ranks and not while
    compiling: first, before any check that could raise on some ranks only (the others would hang)."""
    if n > 1 and not torch.compiler.is_compiling():
        _check_ranks_agree(q, k, v, layout, seq_len, key_lengths, group, n)


def _local_shape(q, k, v, layout: str, n: int):
    """``(H, S_local)`` of this rank's q/k/v slices, after checking the layout, that they are 4-dim
    and of one shape, and that ``n`` ranks divide the heads."""
    _check_layout(layout)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(
                f"{name} must be a 4-dim tensor [{', '.join(layout.replace('S', 'S_local '))}], got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    H, s_local = (q.shape[1], q.shape[2]) if layout == "BHSD" else (q.shape[2], q.shape[1])
    if H % n:
        raise ValueError(_heads_message(H, n))
    return H, s_local


def _ulysses_attention(q, k, v, block_mask, n, group, layout, seq_len, block_size, scale, backend, key_lengths):
    """:func:`ulysses_attention` after the ranks' agreement check."""
    H, s_local = _local_shape(q, k, v, layout, n)
    total = n * s_local
    seq_len = total if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 0 < seq_len <= total:
        raise ValueError(f"seq_len must be an integer in 1..N*S_local = 1..{n}*{s_local} = {total}, got {seq_len!r}")
    nb, bs, shape = _mask_geometry(block_mask, block_size)
    if nb != math.ceil(seq_len / bs):
        raise ValueError(
            f"the block mask must cover the whole sequence of seq_len={seq_len} tokens "
            f"(ceil({seq_len}/{bs}) = {math.ceil(seq_len / bs)} blocks per side), got a mask of shape "
            f"{shape}; this rank holds only S_local={s_local} of them, but the mask is global"
        )

    if n == 1:  # no exchange: plain attention on the (unpadded) sequence
        qh, kh, vh = (t if layout == "BHSD" else t.transpose(1, 2) for t in (q, k, v))
        out = block_sparse_attention(
            qh[:, :, :seq_len],
            kh[:, :, :seq_len],
            vh[:, :, :seq_len],
            block_mask,
            block_size=block_size,
            scale=scale,
            backend=backend,
            key_lengths=key_lengths,
        )
        if seq_len < s_local:
            out = torch.nn.functional.pad(out, (0, 0, 0, s_local - seq_len))
        return out if layout == "BHSD" else out.transpose(1, 2).contiguous()

    local_mask = _local_heads_mask(block_mask, block_size, H, n, group_rank(group))
    qh, kh, vh = seq_to_heads([q, k, v], group=group, layout=layout, seq_len=seq_len)  # [B, H/N, S, D] each
    out = block_sparse_attention(
        qh, kh, vh, local_mask, block_size=block_size, scale=scale, backend=backend, key_lengths=key_lengths
    )
    (out,) = heads_to_seq([out], group=group, layout=layout, s_local=s_local)
    return out


def ulysses_radial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    frames: int,
    tokens_per_frame: int,
    extra_tokens: int = 0,
    preset: Optional[str] = None,
    decay: Optional[float] = None,
    sink: Optional[bool] = None,
    adjacent: Optional[str] = None,
    block_size: int = 128,
    group=None,
    layout: str = "BHSD",
    scale: Optional[float] = None,
    backend: str = "auto",
    key_lengths: Optional[torch.Tensor] = None,
    text_tokens: Optional[int] = None,
    prefix_tokens: int = 0,
) -> torch.Tensor:
    """:func:`radial_attention.ops.radial_attention` with the sequence split across ``group``.

    The global length is ``prefix_tokens + frames * tokens_per_frame + extra_tokens`` (the op's
    token layout); the local slices hold it, tail-padded up to ``N * S_local`` (see
    :func:`ulysses_attention`); another length is a ``ValueError`` on every rank. Preset handling is
    the op's: ``preset`` gives decay/sink/adjacent, explicit values override it, and without a preset
    the defaults are ``decay=1.0, sink=False, adjacent="full"``. ``text_tokens`` is the deprecated
    name of ``extra_tokens``.
    """
    extra_tokens = renamed_keyword(
        "ulysses_radial_attention", "text_tokens", text_tokens, "extra_tokens", extra_tokens, default=0
    )
    n = group_size(group)

    def check_length(seq_len: int, formula: str) -> None:
        # The ranks agree on the inputs first: the length check below then raises on all of them or none.
        _agree_first(q, k, v, layout, seq_len, key_lengths, group, n)
        _, s_local = _local_shape(q, k, v, layout, n)
        # shard_sequence's slices: ceil(S / N) tokens each, the tail padded; a layout of another
        # length (a forgotten extra_tokens, q in the other layout) is an error, not silent padding.
        if math.ceil(seq_len / n) != s_local:
            held = f"{s_local}" if n == 1 else f"{(s_local - 1) * n + 1}..{n * s_local}"
            raise ValueError(
                f"the {n} rank(s)' slices of S_local={s_local} tokens ({layout} q of shape {tuple(q.shape)}) hold "
                f"a sequence of {held} tokens (S_local = ceil(S / N)), but {formula}"
            )

    settings = dict(preset=preset, decay=decay, sink=sink, adjacent=adjacent, block_size=block_size)
    mask = checked_radial_mask(frames, tokens_per_frame, extra_tokens, prefix_tokens, check_length, **settings)
    return _ulysses_attention(q, k, v, mask, n, group, layout, mask.seq_len, None, scale, backend, key_lengths)
