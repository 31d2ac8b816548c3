"""The FlexAttention backend: torch's ``flex_attention`` driven by a ``BlockMask`` made from the block indices.

No per-token Python mask function is evaluated over the sequence. The kept blocks are declared
*full* blocks, so Flex runs no ``mask_mod`` on them (it bounds keys past ``S`` itself). Only with
``key_lengths`` is there a ``mask_mod`` (``kv_idx < key_lengths[b]``), and it runs only on the one
*partial* key block per batch item that holds position ``key_lengths[b]``; kept blocks before it
stay full and blocks after it are dropped.

The BlockMask pieces are cached per (mask, S, device, B, H) and ``flex_attention`` is compiled
once (``torch.compile``) and reused. Inside an outer ``torch.compile`` the pieces are rebuilt in
the graph from the mask's dense blocks (tensor ops only, no host sync) and the outer compiler
handles ``flex_attention`` itself.

Constraints (checked by ``unsupported_reason``): CUDA (forward and backward) or CPU (forward only:
torch's FlexAttention has no CPU backward; its CPU kernel needs AVX2); float16, bfloat16, float32;
head dims that are powers of two from 16 to 256.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

from radial_attention.mask import BlockSparseMask

HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Inductor's CPU FlexAttention kernel needs AVX2 (read once here: torch.compile cannot trace the query).
_CPU_KERNEL_OK = torch.cpu._is_avx2_supported() and os.getenv("ATEN_CPU_CAPABILITY") != "default"

_compiled = None  # torch.compile(flex_attention), made on first use
_cache = WeakIdKeyDictionary()  # mask object -> {(S, device, B, H): _Pieces}


def unsupported_reason(q: torch.Tensor, *, requires_grad: bool) -> Optional[str]:
    """Why FlexAttention cannot run inputs like ``q`` [B, H, S, D], or None if it can."""
    device = q.device.type
    if device not in ("cuda", "cpu"):
        return f"the flex backend runs on CUDA and CPU, not {device}"
    if q.dtype not in DTYPES:
        return f"dtype must be one of {[str(d) for d in DTYPES]}, got {q.dtype}"
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        return f"head dim must be one of {HEAD_DIMS}, got {D}"
    if device == "cpu":
        if requires_grad:
            return (
                "torch's FlexAttention has no backward on the CPU; run without gradients "
                "(torch.no_grad() or inputs without requires_grad), on CUDA, or with backend='reference'"
            )
        if not _CPU_KERNEL_OK:
            return "torch's compiled FlexAttention on the CPU needs AVX2"
    return None


class _Pieces:
    """Device tensors of one (mask, S, device, B, H) from which BlockMasks are assembled.

    ``kept``: bool ``[Bm, Hm, nb, nb]``; ``order``: int32 ``[Bm, Hm, nb, nb]``, each row's kept
    key blocks first, ascending (Flex reads the first ``count`` entries); ``count``: int32
    ``[Bm, Hm, nb]``; ``before``: int32 ``[Bm, Hm, nb, nb + 1]``, kept blocks of the row left of
    column ``c`` (so the kept blocks wholly before ``key_lengths`` are a prefix of ``order``).
    """

    def __init__(self, mask: BlockSparseMask, device: torch.device):
        kept = mask.dense4d().to(device)
        nb = kept.shape[-1]
        cols = torch.arange(nb, device=device, dtype=torch.int32)
        key = torch.where(kept, cols, cols + nb)  # kept columns sort first, in ascending order
        self.kept = kept
        self.order = torch.argsort(key, dim=-1, stable=True).to(torch.int32)
        self.count = kept.sum(dim=-1, dtype=torch.int32)
        zero = torch.zeros(*kept.shape[:-1], 1, dtype=torch.int32, device=device)
        self.before = torch.cat([zero, kept.cumsum(dim=-1, dtype=torch.int32)], dim=-1)
        self.block_mask = None  # the BlockMask without key_lengths, built once


def _pieces(mask: BlockSparseMask, S: int, device: torch.device, B: int, H: int) -> _Pieces:
    if torch.compiler.is_compiling():
        return _Pieces(mask, device)  # in-graph; caching would be a side effect of tracing
    per_mask = _cache.get(mask)
    if per_mask is None:
        per_mask = _cache[mask] = {}
    key = (S, str(device), B, H)
    p = per_mask.get(key)
    if p is None:
        p = per_mask[key] = _Pieces(mask, device)
    return p


def _block_mask(p: _Pieces, S: int, bs: int, B: int, H: int, key_lengths: Optional[torch.Tensor]):
    """A BlockMask: kept blocks full; with key_lengths, the block holding key_lengths[b] partial.

    Its ``mask_mod`` states the same mask token by token (kept block, and ``kv_idx <
    key_lengths[b]``). The compiled kernel runs it only on partial blocks; it keeps the BlockMask
    self-consistent, so uncompiled ``flex_attention`` (which ignores the block tables and applies
    only ``mask_mod``) would still compute the right thing, just slowly.
    """
    from torch.nn.attention.flex_attention import BlockMask

    Bm, Hm, nb, _ = p.kept.shape
    kept = p.kept.expand(B, H, nb, nb)  # a view: the mask_mod indexes it by (b, h)

    if key_lengths is None:
        if p.block_mask is not None and not torch.compiler.is_compiling():
            return p.block_mask

        def in_kept_block(b, h, q_idx, kv_idx):
            return kept[b, h, q_idx // bs, kv_idx // bs]

        # No partial blocks. Their index tensor must be a distinct buffer: inductor's CPU
        # template drops one of two identical inputs and then fails to compile.
        bm = BlockMask.from_kv_blocks(
            torch.zeros_like(p.count), torch.zeros_like(p.order), p.count, p.order,
            BLOCK_SIZE=bs, mask_mod=in_kept_block, seq_lengths=(S, S),
        )
        if not torch.compiler.is_compiling():
            p.block_mask = bm
        return bm

    kl = key_lengths.to(torch.int64)
    cut = torch.clamp(kl // bs, 0, nb)  # [B]: key blocks wholly before key_lengths[b]
    shape = (B, Hm, nb)
    # Full blocks: the kept blocks left of `cut` = the first `before[..., cut]` entries of `order`.
    full_count = p.before.expand(B, Hm, nb, nb + 1).gather(-1, cut.view(B, 1, 1, 1).expand(*shape, 1))[..., 0]
    # Partial block: column `cut` when key_lengths[b] falls inside it and the row keeps it.
    has_tail = (kl % bs != 0) & (cut < nb)  # [B]
    col = torch.clamp(cut, max=nb - 1)
    tail_kept = p.kept.expand(B, Hm, nb, nb).gather(-1, col.view(B, 1, 1, 1).expand(*shape, 1))[..., 0]
    partial_count = (tail_kept & has_tail.view(B, 1, 1)).to(torch.int32)
    partial_idx = torch.zeros(B, Hm, nb, nb, dtype=torch.int32, device=p.kept.device)
    partial_idx[..., 0] = col.to(torch.int32).view(B, 1, 1)

    def in_kept_block_below_key_length(b, h, q_idx, kv_idx):
        return kept[b, h, q_idx // bs, kv_idx // bs] & (kv_idx < key_lengths[b])

    return BlockMask.from_kv_blocks(
        partial_count,
        partial_idx,
        full_count.to(torch.int32),
        p.order.expand(B, Hm, nb, nb).contiguous(),
        BLOCK_SIZE=bs,
        mask_mod=in_kept_block_below_key_length,
        seq_lengths=(S, S),
    )


def _flex():
    """``flex_attention``, compiled once (it materialises all scores if run uncompiled)."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention  # the outer torch.compile compiles it
    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    *,
    scale: float,
    key_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """FlexAttention over the kept blocks.

    Args:
        q, k, v: ``[B, H, S, D]`` (any strides), float16/bfloat16/float32, CUDA or CPU.
        mask: ``nb == ceil(S / mask.block_size)``; dense ``[Bm, Hm, nb, nb]``, ``Bm`` in ``(1, B)``,
            ``Hm`` in ``(1, H)`` (size-1 dims broadcast inside Flex).
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]`` on q's device.

    Returns:
        ``[B, H, S, D]`` in q's dtype; rows with no allowed key are 0 (Flex's convention).
    """
    B, H, S, D = q.shape
    p = _pieces(mask, S, q.device, B, H)
    block_mask = _block_mask(p, S, mask.block_size, B, H, key_lengths)
    return _flex()(q, k, v, block_mask=block_mask, scale=scale)
