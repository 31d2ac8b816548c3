"""A stand-in for FlashAttention-4's two entry points the fa4 backend calls, in plain float64 torch.

It reads the block-sparse tables exactly as FA4 documents them (``full_block_cnt [B|1, H|1, nq]``,
``full_block_idx [B|1, H|1, nq, W]``: the first ``cnt`` entries of a row are the key blocks computed
in full; *mask* blocks must be empty since no ``mask_mod`` is given; keys past ``k.shape[1]`` do not
exist), so the CPU tests check the lists the backend hands FA4 and its key-length slicing without a
GPU. The backward builds its token mask from the *backward* (transposed) tables alone, so a wrong
transpose shows up as wrong gradients.
"""

from __future__ import annotations

import torch


def _allowed_from_tables(tables, B, H, n_rows, n_cols, bs, transposed):
    """bool [B, H, n_rows, n_cols] token mask (queries x keys) from FA4-style tables."""
    assert int(tables.mask_block_cnt.sum()) == 0, "fa4 backend must pass kept blocks as full blocks"
    assert tables.block_size == (bs, bs)
    cnt, idx = tables.full_block_cnt, tables.full_block_idx
    assert cnt.dtype == torch.int32 and idx.dtype == torch.int32
    outer = idx.shape[2]  # query blocks (forward) or key blocks (backward)
    inner_blocks = -(-(n_cols if not transposed else n_rows) // bs)
    blocks = torch.zeros(B, H, outer, inner_blocks, dtype=torch.bool)
    cnt = cnt.expand(B, H, outer).cpu()
    idx = idx.expand(B, H, outer, idx.shape[-1]).cpu()
    for b in range(B):
        for h in range(H):
            for r in range(outer):
                c = int(cnt[b, h, r])
                chosen = idx[b, h, r, :c].long()
                assert bool((chosen < inner_blocks).all()), "a block index past the keys"
                assert bool((chosen[1:] > chosen[:-1]).all()), "indices must be ascending"
                blocks[b, h, r, chosen] = True
    if transposed:
        blocks = blocks.transpose(-1, -2)  # -> [B, H, query blocks, key blocks]
    rows = torch.arange(n_rows) // bs
    cols = torch.arange(n_cols) // bs
    return blocks[:, :, rows][:, :, :, cols]


def _attention64(q, k, v, allowed, scale):
    """q [B, Sq, H, D], k/v [B, Sk, H, D] -> (out [B, Sq, H, D] float64, lse [B, H, Sq])."""
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    s = torch.where(allowed, s, torch.full_like(s, -torch.inf))
    lse = torch.logsumexp(s, dim=-1)  # -inf on empty rows
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None]) * allowed
    return torch.einsum("bhij,bjhd->bihd", p, v), lse


class FakeFA4:
    """``_flash_attn_fwd`` / ``_flash_attn_bwd`` with FA4's argument names; records every call."""

    def __init__(self, block_size=128):
        self.bs = block_size
        self.calls = []

    def _mask(self, tables, B, H, Sq, Sk, transposed):
        if tables is None:
            return torch.ones(B, H, Sq, Sk, dtype=torch.bool)
        return _allowed_from_tables(tables, B, H, Sq, Sk, self.bs, transposed)

    def _flash_attn_fwd(self, q, k, v, *, softmax_scale, causal, block_sparse_tensors, return_lse, out, lse):
        assert not causal and (lse is not None) == return_lse
        B, Sq, H, D = q.shape
        Sk = k.shape[1]
        self.calls.append(("fwd", B, Sq, Sk, block_sparse_tensors))
        allowed = self._mask(block_sparse_tensors, B, H, Sq, Sk, transposed=False)
        o, l = _attention64(q.double(), k.double(), v.double(), allowed, softmax_scale)
        out.copy_(o.to(out.dtype))
        if lse is not None:
            lse.copy_(l.float())
        return out, lse, None, None, None

    def _flash_attn_bwd(self, q, k, v, out, dout, lse, *, softmax_scale, causal, block_sparse_tensors, dq, dk, dv):
        assert not causal
        B, Sq, H, D = q.shape
        Sk = k.shape[1]
        self.calls.append(("bwd", B, Sq, Sk, block_sparse_tensors))
        allowed = self._mask(block_sparse_tensors, B, H, Sq, Sk, transposed=True)
        # Written out (custom ops run below autograd, so no autograd.grad here).
        q64, k64, v64, do64 = (t.double() for t in (q, k, v, dout))
        s = torch.einsum("bihd,bjhd->bhij", q64, k64) * softmax_scale
        s = torch.where(allowed, s, torch.full_like(s, -torch.inf))
        l = torch.logsumexp(s, dim=-1, keepdim=True)
        p = torch.exp(s - torch.where(torch.isfinite(l), l, torch.zeros_like(l))) * allowed  # [B, H, i, j]
        o = torch.einsum("bhij,bjhd->bihd", p, v64)
        dv_ = torch.einsum("bhij,bihd->bjhd", p, do64)
        dp = torch.einsum("bihd,bjhd->bhij", do64, v64)
        delta = torch.einsum("bihd,bihd->bhi", do64, o)[..., None]
        ds = p * (dp - delta) * softmax_scale
        g = (torch.einsum("bhij,bjhd->bihd", ds, k64), torch.einsum("bhij,bihd->bjhd", ds, q64), dv_)
        for dst, src in zip((dq, dk, dv), g):
            dst.copy_(src.to(dst.dtype))
        return dq, dk, dv
