"""The reference backend: the block mask expanded to tokens and plain masked softmax attention.

This is the oracle every other backend is tested against. It is plain torch (autograd works,
``torch.compile`` traces it), computes in float32 (float64 when the inputs are float64), and walks
the query rows in chunks so the ``[B, H, rows, S]`` score tile stays bounded in memory.

It does the dense amount of work (``O(S^2)``): it is meant for correctness, CPU use at small sizes
and gradient checks, not speed. Under autograd every chunk's probabilities are kept for the
backward pass, so training through it needs ``O(B * H * S^2)`` memory.
"""

from __future__ import annotations

from typing import Optional

import torch

from radial_attention.mask import BlockSparseMask

# Elements of one float score tile [B, H, rows, S]: 2^25 floats = 128 MiB in float32.
_TILE_ELEMENTS = 1 << 25


def _rows_per_chunk(B: int, H: int, S: int) -> int:
    return max(1, min(S, _TILE_ELEMENTS // max(1, B * H * S)))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockSparseMask,
    *,
    scale: float,
    key_lengths: Optional[torch.Tensor] = None,
    rows_per_chunk: Optional[int] = None,
) -> torch.Tensor:
    """Masked softmax attention computed from the token-level mask.

    Args:
        q, k, v: ``[B, H, S, D]`` (any strides), float16/bfloat16/float32/float64.
        mask: block mask with ``nb == ceil(S / mask.block_size)``; its dense form is
            ``[Bm, Hm, nb, nb]`` with ``Bm`` in ``(1, B)`` and ``Hm`` in ``(1, H)``.
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]`` on q's device; keys ``j >= key_lengths[b]`` are
            excluded for batch item ``b``.
        rows_per_chunk: query rows per score tile (default: a tile of at most 2^25 elements).

    Returns:
        ``[B, H, S, D]`` in q's dtype. A query row with no allowed key is exactly 0. NaN follows
        the mask: a NaN in ``q[b, h, i]`` makes row ``i`` NaN (if it has an allowed key), a NaN in
        ``k[b, h, j]`` every row allowed to see key ``j``, a NaN in ``v[b, h, j, d]`` column ``d`` of
        those rows; rows not allowed to see ``j`` stay finite.
    """
    B, H, S, D = q.shape
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    bs = mask.block_size
    device = q.device

    # [Bm, Hm, nb, nb] -> [Bm, Hm, nb, S]: key blocks expanded to key tokens, cut at S.
    block_cols = mask._dense4d().to(device).repeat_interleave(bs, dim=-1)[..., :S]
    key_ok = None
    if key_lengths is not None:
        key_ok = torch.arange(S, device=device)[None, :] < key_lengths.to(device)[:, None]  # [B, S]

    kc = k.to(compute)
    vc = v.to(compute)
    # probs @ v would turn a NaN value into NaN for every row, even where its probability is an
    # exact 0 (masked: 0 * NaN = NaN). So multiply by v with its NaNs zeroed, and put NaN back
    # only where an allowed key carries one: (allowed @ isnan(v)) > 0, the same matmul shape.
    v_nan = torch.isnan(vc)
    v_nan_f = v_nan.to(compute)
    vc = vc.masked_fill(v_nan, 0.0)
    step = rows_per_chunk or _rows_per_chunk(B, H, S)
    outs = []
    for start in range(0, S, step):
        stop = min(S, start + step)
        rows = torch.arange(start, stop, device=device) // bs  # query block of each row
        allowed = block_cols[:, :, rows, :]  # [Bm, Hm, c, S]
        if key_ok is not None:
            allowed = allowed & key_ok[:, None, None, :]  # [B, Hm, c, S]
        scores = torch.matmul(q[:, :, start:stop].to(compute), kc.transpose(-1, -2)) * scale  # [B, H, c, S]
        scores = scores.masked_fill(~allowed, float("-inf"))
        row_has_key = allowed.any(dim=-1, keepdim=True)  # [B|Bm, Hm, c, 1]
        # A row with no allowed key would be softmax(-inf, ...) = NaN: give it finite scores, then
        # zero its probabilities, so both the output and its gradient are exactly 0.
        scores = scores.masked_fill(~row_has_key, 0.0)
        probs = torch.softmax(scores, dim=-1).masked_fill(~row_has_key, 0.0)
        out = torch.matmul(probs, vc)  # [B, H, c, D]
        sees_nan = torch.matmul(allowed.to(compute), v_nan_f) > 0  # [B, H, c, D]
        outs.append(out.masked_fill(sees_nan, float("nan")))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.to(q.dtype)


def unsupported_reason(q: torch.Tensor, *, requires_grad: bool) -> Optional[str]:
    """The reference runs everything the api accepts (any device, dtype, head dim, with autograd)."""
    return None
