"""A block-sparse attention mask and the index lists the kernels read.

``BlockSparseMask`` wraps a boolean block mask (``True`` = the query block attends to the key
block) and derives, lazily and once per device, what the attention backends need:

- ``kv_indices`` / ``kv_counts``: for each query block row, the kept key blocks in ascending order
  (padded CSR; the forward kernel and the dq backward kernel walk these),
- ``q_indices`` / ``q_counts``: the transpose, for each key block the query blocks that attend to it
  (the dk/dv backward kernel walks these),
- ``density`` and the attention FLOPs kept versus dense,
- a FlexAttention ``BlockMask`` built from the block indices (no per-token mask function),
- a PNG picture.

The mask may carry batch and head dimensions (``[Bm, Hm, nb, nb]``, each of ``Bm``/``Hm`` 1 or the
real size) or be a plain ``[nb, nb]`` matrix shared by every batch item and head.
"""

from __future__ import annotations

from typing import Optional

import torch

SUPPORTED_BLOCK_SIZES = (64, 128)


class BlockSparseMask:
    """A boolean block mask plus the index lists derived from it.

    Args:
        dense: ``torch.bool`` tensor ``[nb, nb]`` or ``[Bm, Hm, nb, nb]``; entry ``[r, c]`` true
            means query block ``r`` (tokens ``r*block_size ..``) attends to key block ``c``.
        block_size: tokens per block side (64 or 128).
    """

    def __init__(self, dense: torch.Tensor, block_size: int = 128):
        if not isinstance(dense, torch.Tensor) or dense.dtype != torch.bool:
            raise TypeError(
                f"BlockSparseMask expects a torch.bool tensor, got "
                f"{type(dense).__name__}{'' if not isinstance(dense, torch.Tensor) else ' of dtype ' + str(dense.dtype)}"
            )
        if dense.dim() not in (2, 4) or dense.shape[-1] != dense.shape[-2]:
            raise ValueError(
                f"block mask must be [nb, nb] or [B, H, nb, nb] with square last dims, got shape {tuple(dense.shape)}"
            )
        if block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {block_size}")
        self._dense = dense.detach().to("cpu").contiguous()
        self.block_size = int(block_size)
        self._per_device: dict = {}

    # ------------------------------------------------------------------ basic facts
    @property
    def num_blocks(self) -> int:
        """nb, the number of query (and key) blocks."""
        return int(self._dense.shape[-1])

    @property
    def shape(self) -> torch.Size:
        return self._dense.shape

    def to_dense(self) -> torch.Tensor:
        """The boolean block mask as given (``[nb, nb]`` or ``[Bm, Hm, nb, nb]``), on the CPU."""
        return self._dense

    def dense4d(self) -> torch.Tensor:
        """The block mask as ``[Bm, Hm, nb, nb]`` (a view)."""
        d = self._dense
        return d if d.dim() == 4 else d[None, None]

    @property
    def density(self) -> float:
        """Fraction of kept blocks (over all batch/head entries)."""
        return float(self._dense.float().mean().item())

    def attention_flops(self, seq_len: int, head_dim: int, num_heads: int = 1, batch: int = 1) -> dict:
        """Forward attention FLOPs (QK^T and PV, 4*S^2*D per head) kept by the mask versus dense.

        Counts whole kept blocks, clipped to ``seq_len`` tokens, so it is the work a block-sparse
        kernel really does. Returns ``{"dense": ..., "sparse": ..., "saved_fraction": ...}``.
        """
        nb, bs = self.num_blocks, self.block_size
        tokens = torch.full((nb,), bs, dtype=torch.float64)
        tokens[-1] = seq_len - bs * (nb - 1)
        if tokens[-1] <= 0 or tokens[-1] > bs:
            raise ValueError(f"seq_len {seq_len} does not fit {nb} blocks of {bs} tokens")
        pair_tokens = tokens[:, None] * tokens[None, :]  # [nb, nb] query x key tokens per block pair
        d4 = self.dense4d().to(torch.float64)
        kept = float((d4 * pair_tokens).sum(dim=(-1, -2)).mean().item())
        scale = 4.0 * head_dim * num_heads * batch
        dense = scale * float(seq_len) ** 2
        sparse = scale * kept
        return {"dense": dense, "sparse": sparse, "saved_fraction": 1.0 - sparse / dense}

    # ------------------------------------------------------------------ index lists
    @staticmethod
    def _padded_rows(mask4d: torch.Tensor):
        """Row-wise kept column indices, ascending, padded with 0. -> (indices int32 [Bm,Hm,nb,W], counts int32 [Bm,Hm,nb])."""
        counts = mask4d.sum(dim=-1, dtype=torch.int32)
        width = max(1, int(counts.max().item()) if counts.numel() else 1)
        nb = mask4d.shape[-1]
        cols = torch.arange(nb, dtype=torch.int32)
        # Kept columns sort first (key 0..nb-1), dropped ones after (key nb + col); stable order.
        key = torch.where(mask4d, cols, cols + nb)
        order = torch.argsort(key, dim=-1, stable=True)[..., :width].to(torch.int32)
        valid = torch.arange(width, dtype=torch.int32) < counts[..., None]
        indices = torch.where(valid, order, torch.zeros_like(order))
        return indices.contiguous(), counts.contiguous()

    def _cached(self, device) -> dict:
        device = torch.device(device)
        key = str(device)
        if key not in self._per_device:
            if key == "cpu":
                d4 = self.dense4d()
                kv_idx, kv_cnt = self._padded_rows(d4)
                q_idx, q_cnt = self._padded_rows(d4.transpose(-1, -2))
                self._per_device[key] = {
                    "kv_indices": kv_idx, "kv_counts": kv_cnt,
                    "q_indices": q_idx, "q_counts": q_cnt,
                    "dense4d": d4,
                }
            else:
                cpu = self._cached("cpu")
                self._per_device[key] = {k: v.to(device) for k, v in cpu.items()}
        return self._per_device[key]

    def kv_indices(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb, max_kv]``: kept key blocks of each query block, ascending, 0-padded."""
        return self._cached(device)["kv_indices"]

    def kv_counts(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb]``: number of kept key blocks of each query block."""
        return self._cached(device)["kv_counts"]

    def q_indices(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb, max_q]``: query blocks that attend to each key block, ascending, 0-padded."""
        return self._cached(device)["q_indices"]

    def q_counts(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb]``: number of query blocks that attend to each key block."""
        return self._cached(device)["q_counts"]

    def dense_on(self, device) -> torch.Tensor:
        """The ``[Bm, Hm, nb, nb]`` bool mask on ``device`` (cached)."""
        return self._cached(device)["dense4d"]

    # ------------------------------------------------------------------ conversions
    def to_token_mask(self, seq_len: int, device="cpu") -> torch.Tensor:
        """Expand to a token-level bool mask ``[Bm, Hm, seq_len, seq_len]`` (for references and tests)."""
        nb, bs = self.num_blocks, self.block_size
        if not (bs * (nb - 1) < seq_len <= bs * nb):
            raise ValueError(
                f"seq_len {seq_len} does not fit a mask of {nb} blocks of {bs}: expected "
                f"{bs * (nb - 1) + 1}..{bs * nb} tokens"
            )
        d4 = self.dense_on(device)
        tok = d4.repeat_interleave(bs, dim=-2).repeat_interleave(bs, dim=-1)
        return tok[..., :seq_len, :seq_len]

    def to_flex_block_mask(self, seq_len: int, device="cpu", num_heads: Optional[int] = None, batch: Optional[int] = None):
        """A FlexAttention ``BlockMask`` with the same kept blocks, built from the block indices.

        Args:
            seq_len: real tokens ``S`` (keys and queries). Tokens past ``S`` do not exist for
                FlexAttention, so no padding handling is needed.
            device: where the BlockMask's index tensors live.
            num_heads / batch: sizes to broadcast a ``[nb, nb]`` mask to (default 1, which Flex
                broadcasts itself).
        """
        from torch.nn.attention.flex_attention import BlockMask

        nb, bs = self.num_blocks, self.block_size
        if not (bs * (nb - 1) < seq_len <= bs * nb):
            raise ValueError(
                f"seq_len {seq_len} does not fit a mask of {nb} blocks of {bs}: expected "
                f"{bs * (nb - 1) + 1}..{bs * nb} tokens"
            )
        kv_idx = self.kv_indices(device)
        kv_cnt = self.kv_counts(device)
        if batch is not None or num_heads is not None:
            b = batch if batch is not None else kv_idx.shape[0]
            h = num_heads if num_heads is not None else kv_idx.shape[1]
            kv_idx = kv_idx.expand(b, h, *kv_idx.shape[2:])
            kv_cnt = kv_cnt.expand(b, h, *kv_cnt.shape[2:])
        # Flex wants kv_indices [B, H, nb_q, nb_kv]: pad the width up to nb.
        pad = nb - kv_idx.shape[-1]
        if pad > 0:
            kv_idx = torch.nn.functional.pad(kv_idx, (0, pad))
        return BlockMask.from_kv_blocks(
            kv_cnt.contiguous(), kv_idx.contiguous(), BLOCK_SIZE=bs, seq_lengths=(seq_len, seq_len)
        )

    def save_png(self, path, title: Optional[str] = None) -> str:
        """Draw the mask (kept blocks dark) into a PNG file; returns the path. Needs matplotlib."""
        from .render import render_mask_png

        return render_mask_png(self, path, title=title)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={tuple(self._dense.shape)}, block_size={self.block_size}, "
            f"density={self.density:.4f})"
        )
