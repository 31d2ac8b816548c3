"""The FlexAttention backend: torch's ``flex_attention`` driven by a ``BlockMask`` made from the block indices.

No per-token Python mask function is evaluated over the sequence. Flex always works on 128-token
tiles here (its GPU kernels' tile sizes divide 128 but not always 64):

- 128-blocks: every kept block is a *full* Flex block, so Flex runs no ``mask_mod`` on it (keys
  past ``S`` are bounded by Flex itself);
- 64-blocks: a 128-tile whose four 64-blocks are all kept is full, one with some kept is
  *partial*, one with none is skipped;
- ``key_lengths``: tiles wholly below ``key_lengths[b]`` keep their kind, the tile holding
  position ``key_lengths[b]`` becomes partial, tiles past it are skipped.

Only partial tiles run the ``mask_mod``, which states the whole mask token by token (``mask[b, h,
q // bs, kv // bs]`` and ``kv < key_lengths[b]``); because it agrees with the block tables, the
BlockMask is self-consistent (uncompiled ``flex_attention`` ignores the tables and applies only
``mask_mod``: still right, just slow).

The tables are cached in the mask's derived cache per (S, device, B, H) (with ``key_lengths`` the per-call part is a few
small tensor ops, no host sync) and ``flex_attention`` is compiled once (``torch.compile``) and
reused. Inside an outer ``torch.compile`` the tables are rebuilt in the graph from the mask's dense
blocks and the outer compiler handles ``flex_attention`` itself.

Constraints (checked by ``unsupported_reason``): CUDA (forward and backward) or CPU (forward only:
torch's FlexAttention has no CPU backward; its CPU kernel needs AVX2); float16, bfloat16, float32;
head dims that are powers of two from 16 to 256. Output rows with no allowed key are 0.

NaN: FlexAttention's kernels do not follow the mask with NaN inputs (measured, torch 2.13 CPU: a
NaN query row comes out 0, a NaN key gives finite or zero rows, and a NaN value inside a partial
tile reaches rows that may not see it, 0 * NaN). So the backend zeroes the NaNs of ``v`` before the
call and afterwards writes NaN exactly where dense masked attention has it (``_put_back_nan``):
a few elementwise passes over q, k, v and the output, and a ``[nb, nb] @ [nb, D]`` product.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from radial_attention.mask import BlockSparseMask

HEAD_DIMS = (16, 32, 64, 128, 256)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Inductor's CPU FlexAttention kernel needs AVX2 (read once here: torch.compile cannot trace the query).
_CPU_KERNEL_OK = torch.cpu._is_avx2_supported() and os.getenv("ATEN_CPU_CAPABILITY") != "default"

_compiled = None  # torch.compile(flex_attention), made on first use
FLEX_RECOMPILE_LIMIT = 64  # distinct (shape, mask structure) kernels compiled per process


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
                "torch's FlexAttention has no backward on the CPU; use backend='gather' (the fast CPU "
                "path, with gradients), run on CUDA, or run flex without gradients (under torch.no_grad())"
            )
        if not _CPU_KERNEL_OK:
            return "torch's compiled FlexAttention on the CPU needs AVX2"
    return None


_TILE = 128  # Flex's block size here (see the module docstring)


def _sorted_indices(sel: torch.Tensor):
    """bool ``[..., n, n]`` -> (count int32 ``[..., n]``, indices int32 ``[..., n, n]``): each row's
    selected columns first, ascending (Flex reads the first ``count``), the rest after."""
    n = sel.shape[-1]
    cols = torch.arange(n, device=sel.device, dtype=torch.int32)
    order = torch.argsort(torch.where(sel, cols, cols + n), dim=-1, stable=True).to(torch.int32)
    return sel.sum(dim=-1, dtype=torch.int32), order


class _Pieces:
    """Device tensors of one (mask, S, device, B, H), from which the BlockMasks are assembled.

    ``kept``: bool ``[Bm, Hm, nt * 128 / bs, nt * 128 / bs]``, the mask's blocks padded with False
    to whole 128-tiles (the ``mask_mod`` indexes it by token // bs); ``any`` / ``all``: bool
    ``[Bm, Hm, nt, nt]`` whether some / every block inside a 128-tile is kept (blocks past ``S``
    count as kept for ``all``: those tokens do not exist).
    """

    def __init__(self, mask: BlockSparseMask, S: int, device: torch.device):
        bs = mask.block_size
        kept = mask._dense4d().to(device)  # [Bm, Hm, nb, nb]
        nb = kept.shape[-1]
        nt = -(-S // _TILE)
        r = _TILE // bs  # blocks per tile side: 1 or 2
        pad = nt * r - nb
        if r == 1:
            self.kept, self.any, self.all = kept, kept, kept
        else:
            padded_any = torch.nn.functional.pad(kept, (0, pad, 0, pad), value=False)
            padded_all = torch.nn.functional.pad(kept, (0, pad, 0, pad), value=True)
            tiles = (*kept.shape[:2], nt, r, nt, r)
            self.kept = padded_any
            self.any = padded_any.reshape(tiles).any(dim=5).any(dim=3)
            self.all = padded_all.reshape(tiles).all(dim=5).all(dim=3)
        self.dense = kept  # [Bm, Hm, nb, nb], for _put_back_nan
        self.block_size = bs
        self.block_mask = None  # the BlockMask without key_lengths, built once


def _pieces(mask: BlockSparseMask, S: int, device: torch.device, B: int, H: int) -> _Pieces:
    # Inside torch.compile the pieces are built in the graph (the mask's cache stores nothing then).
    if torch.compiler.is_compiling():
        return _Pieces(mask, S, device)  # always in-graph: a traced BlockMask must not be cached
    return mask.derived(("flex.pieces", S, str(device), B, H), lambda: _Pieces(mask, S, device))


def _block_mask(p: _Pieces, S: int, B: int, H: int, key_lengths: Optional[torch.Tensor]):
    """The Flex BlockMask (128-tiles) for the mask, optionally cut at key_lengths."""
    from torch.nn.attention.flex_attention import BlockMask

    bs = p.block_size
    kept = p.kept.expand(B, H, *p.kept.shape[-2:])  # a view: the mask_mod indexes it by (b, h)

    if key_lengths is None:
        if p.block_mask is not None and not torch.compiler.is_compiling():
            return p.block_mask

        def in_kept_block(b, h, q_idx, kv_idx):
            return kept[b, h, q_idx // bs, kv_idx // bs]

        full_count, full_idx = _sorted_indices(p.all)
        part_count, part_idx = _sorted_indices(p.any & ~p.all)
        bm = BlockMask.from_kv_blocks(
            part_count,
            part_idx,
            full_count,
            full_idx,
            BLOCK_SIZE=_TILE,
            mask_mod=in_kept_block,
            seq_lengths=(S, S),
        )
        if not torch.compiler.is_compiling():
            p.block_mask = bm
        return bm

    nt = p.any.shape[-1]
    tile_start = torch.arange(nt, device=p.any.device) * _TILE  # [nt]
    kl = key_lengths.view(B, 1, 1, 1)
    below = tile_start + _TILE <= kl  # [B, 1, 1, nt]: tile wholly below key_lengths[b]
    cut = (tile_start < kl) & ~below  # the tile holding position key_lengths[b]
    full = p.all & below  # [B, Hm, nt, nt]
    partial = p.any & ((below & ~p.all) | cut)
    full_count, full_idx = _sorted_indices(full)
    part_count, part_idx = _sorted_indices(partial)

    def in_kept_block_below_key_length(b, h, q_idx, kv_idx):
        return kept[b, h, q_idx // bs, kv_idx // bs] & (kv_idx < key_lengths[b])

    return BlockMask.from_kv_blocks(
        part_count,
        part_idx,
        full_count,
        full_idx,
        BLOCK_SIZE=_TILE,
        mask_mod=in_kept_block_below_key_length,
        seq_lengths=(S, S),
    )


@torch.library.custom_op("radial_attention::flex_cpu_fusion_barrier", mutates_args=())
def _fusion_barrier(x: torch.Tensor) -> torch.Tensor:
    """A copy that inductor cannot fuse into the op before it.

    Inside an outer torch.compile on the CPU, inductor may fuse the next pointwise op (an
    epilogue) into FlexAttention's C++ template, which then refuses to render ("Unsupported for
    `epilogue_nodes` in CppFlexAttentionTemplate", torch 2.13). An opaque op in between prevents it.
    """
    return x.clone()


@_fusion_barrier.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _flex():
    """``flex_attention``, compiled once (it materialises all scores if run uncompiled)."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention  # the outer torch.compile compiles it
    if _compiled is None:
        compiled = torch.compile(flex_attention, dynamic=False)

        def run(*args, **kwargs):
            # One compiled kernel per shape and mask structure. Past dynamo's default limit of 8
            # recompiles it would silently run flex_attention eagerly, which materialises every
            # score (measured on an H200: "tried to allocate 3246 GiB" at the 6th shape of a
            # benchmark run). Allow more shapes, and fail loudly rather than fall back.
            with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
                return compiled(*args, **kwargs)

        _compiled = run
    return _compiled


def _put_back_nan(out, q, k, v_nan, p: _Pieces, key_lengths):
    """``out`` [B, H, S, D] with NaN where dense attention under the mask has it.

    ``v_nan``: bool [B, H, S, D], the NaNs of v. A key j that may be seen (``j < key_lengths[b]``)
    with a NaN in ``k[j]`` poisons whole rows, with a NaN in ``v[j, d]`` column d, of every query
    block that keeps j's block; a NaN in ``q[i]`` poisons row i if it has an allowed key. Rows that
    see no NaN keep the kernel's (correct, finite) values.
    """
    B, H, S, D = out.shape
    bs = p.block_size
    kept = p.dense  # [Bm, Hm, nb, nb]
    nb = kept.shape[-1]
    bad = v_nan | torch.isnan(k).any(dim=-1, keepdim=True)  # [B, H, S, D]: key j poisons column d
    has_key = kept.any(dim=-1)  # [Bm, Hm, nb]
    if key_lengths is not None:
        kl = key_lengths.to(torch.int64)
        bad = bad & (torch.arange(S, device=out.device)[None, :] < kl[:, None])[:, None, :, None]
        block_start = torch.arange(nb, device=out.device) * bs
        has_key = (kept & (block_start[None, :] < kl[:, None])[:, None, None, :]).any(dim=-1)  # [B, Hm, nb]
    # uint8, not bool: inductor's CPU code for a padded bool tensor does not compile (torch 2.13).
    bad = bad.to(torch.uint8)
    if nb * bs > S:
        bad = torch.nn.functional.pad(bad, (0, 0, 0, nb * bs - S))
    bad_blocks = bad.view(B, H, nb, bs, D).amax(dim=3).float()  # [B, H, nb, D]
    poison = torch.matmul(kept.float(), bad_blocks) > 0  # [B, H, nb, D] per query block
    poison = poison.repeat_interleave(bs, dim=2)[:, :, :S]  # [B, H, S, D]
    q_rows = torch.isnan(q).any(dim=-1, keepdim=True)  # [B, H, S, 1]
    q_rows = q_rows & has_key.repeat_interleave(bs, dim=-1)[..., :S, None]
    return out.masked_fill(poison | q_rows, float("nan"))


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
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # FlexAttention refuses CPU inputs that require grad even under no_grad (torch 2.13),
        # where no backward can happen: detaching makes torch.no_grad() work as it should.
        q, k, v = q.detach(), k.detach(), v.detach()
    p = _pieces(mask, S, q.device, B, H)
    block_mask = _block_mask(p, S, B, H, key_lengths)
    v_nan = torch.isnan(v)
    out = _flex()(q, k, v.masked_fill(v_nan, 0.0), block_mask=block_mask, scale=scale)
    if q.device.type == "cpu" and torch.compiler.is_compiling():
        out = _fusion_barrier(out)
    return _put_back_nan(out, q, k, v_nan, p, key_lengths)
