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

The object owns its data: it copies the tensor it is given, and every public accessor returns a
copy, so neither editing the caller's tensor afterwards nor editing a returned tensor can make the
cached index lists disagree with the mask (a radial mask is shared through a cache). Backends read
the cached tensors through the private ``_dense4d`` / ``_index`` without copying, and never modify them.

One cache per mask: everything derived from the mask (the index lists per device, and what each
backend builds from them: launch orders, FA4 tables, Flex pieces, gather plans, FlashInfer plans,
head slices) is kept in the mask's own bounded cache, ``mask.derived(key, build)``, and dies with
the mask. Keys are tuples whose first item names the owner (``("index", "cuda:0")``,
``("triton.orders", "cuda:0")``, ...). Inside ``torch.compile`` a missing entry is built in the
graph (``traced=``) and not stored: storing would be a side effect of tracing.
"""

from __future__ import annotations

from typing import Callable, Hashable, Optional

import torch

from .numbers import as_int

SUPPORTED_BLOCK_SIZES = (64, 128)

# Largest padded index list (``[Bm, Hm, nb, width]`` int32, one each for keys and queries) a mask
# builds: 2^30 entries = 4 GiB. Past it the lists (and their copies on the GPU) cannot sensibly fit.
# (The Triton kernels address the lists with int64 offsets, so the bound is about memory only.)
MAX_INDEX_ENTRIES = 1 << 30

# Entries a mask's derived cache holds (index lists per device, backend structures per shape); the
# least recently used one is dropped past it. A mask is used with a handful of devices and shapes.
MAX_DERIVED = 32


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
        block_size = as_int("block_size", block_size)
        if block_size not in SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {block_size}")
        # A private copy: a view of the caller's tensor would change under the cached index lists.
        self._dense = dense.detach().to("cpu", copy=True).contiguous()
        self.block_size = block_size
        # The derived cache (see the module docstring). A plain dict, read by torch.compile while
        # tracing; the use counts live beside it so that a hit does not reorder the dict (dynamo
        # guards on its keys: an eager hit must not invalidate a compiled graph).
        self._derived: dict = {}
        self._last_use: dict = {}
        self._uses = 0

    # ------------------------------------------------------------------ derived cache
    def derived(self, key: Hashable, build: Callable[[], object], traced: Optional[Callable[[], object]] = None):
        """The cached value for ``key``, made by ``build()`` on first use.

        Args:
            key: a hashable tuple, first item the owner's name (e.g. ``("gather.plan", "cpu", B, H, S, D, n)``).
            build: makes the value (eagerly: it may sync, read values, loop in Python).
            traced: makes the value inside ``torch.compile`` when it is not cached yet, from static
                shapes only (no host sync); default ``build``. Not stored.

        The cache keeps the ``MAX_DERIVED`` most recently used entries. Values are shared by every
        caller: they must be treated as read-only.
        """
        hit = self._derived.get(key)
        compiling = torch.compiler.is_compiling()
        if hit is not None:
            if not compiling:
                self._uses += 1
                self._last_use[key] = self._uses
            return hit
        if compiling:
            return (build if traced is None else traced)()
        value = build()
        if len(self._derived) >= MAX_DERIVED:
            oldest = min(self._last_use, key=self._last_use.get)
            del self._derived[oldest], self._last_use[oldest]
        self._uses += 1
        self._derived[key] = value
        self._last_use[key] = self._uses
        return value

    def clear_derived(self, owner: Optional[str] = None) -> None:
        """Drop the derived cache's entries: all of them, or those whose key's first item is ``owner``
        (e.g. ``"gather.plan"``). The next use builds them again."""
        for key in [k for k in self._derived if owner is None or k[0] == owner]:
            del self._derived[key], self._last_use[key]

    # ------------------------------------------------------------------ basic facts
    @property
    def num_blocks(self) -> int:
        """nb, the number of query (and key) blocks."""
        return int(self._dense.shape[-1])

    @property
    def shape(self) -> torch.Size:
        return self._dense.shape

    def to_dense(self) -> torch.Tensor:
        """The boolean block mask as given (``[nb, nb]`` or ``[Bm, Hm, nb, nb]``), on the CPU (a copy)."""
        return self._dense.clone()

    def dense4d(self) -> torch.Tensor:
        """The block mask as ``[Bm, Hm, nb, nb]`` (a copy)."""
        return self._dense4d().clone()

    def _dense4d(self) -> torch.Tensor:
        """The mask's own ``[Bm, Hm, nb, nb]`` tensor (a view, no copy): for backends, read only."""
        d = self._dense
        return d if d.dim() == 4 else d[None, None]

    @property
    def density(self) -> float:
        """Fraction of kept blocks (over all batch/head entries)."""
        return int(torch.count_nonzero(self._dense)) / max(1, self._dense.numel())

    def _check_seq_len(self, seq_len: int) -> None:
        """Refuse a ``seq_len`` outside ``bs * (nb - 1) + 1 .. bs * nb``: the last block holds 1 to ``bs`` tokens."""
        nb, bs = self.num_blocks, self.block_size
        if not (bs * (nb - 1) < seq_len <= bs * nb):
            raise ValueError(
                f"seq_len {seq_len} does not fit a mask of {nb} blocks of {bs}: expected "
                f"{bs * (nb - 1) + 1}..{bs * nb} tokens"
            )

    def attention_flops(self, seq_len: int, head_dim: int, num_heads: int = 1, batch: int = 1) -> dict:
        """Forward attention FLOPs (QK^T and PV, 4*S^2*D per head) kept by the mask versus dense.

        Counts whole kept blocks, clipped to ``seq_len`` tokens, so it is the work a block-sparse
        kernel really does. Returns ``{"dense": ..., "sparse": ..., "saved_fraction": ...}``.
        """
        seq_len, head_dim = as_int("seq_len", seq_len), as_int("head_dim", head_dim)
        num_heads, batch = as_int("num_heads", num_heads, 1), as_int("batch", batch, 1)
        nb, bs = self.num_blocks, self.block_size
        self._check_seq_len(seq_len)
        tokens = torch.full((nb,), bs, dtype=torch.float64)
        tokens[-1] = seq_len - bs * (nb - 1)
        # Kept query x key token pairs: sum over kept blocks (r, c) of tokens[r] * tokens[c], as
        # row sums weighted by the key tokens, then by the query tokens (no [nb, nb] float tensor).
        d4 = self._dense4d()
        last = d4[..., -1].to(torch.float64)  # [Bm, Hm, nb] kept last key block per row
        per_row = d4.sum(dim=-1, dtype=torch.int64).to(torch.float64) * bs + last * (tokens[-1] - bs)
        kept = float((per_row * tokens).sum(dim=-1).mean().item())
        scale = 4.0 * head_dim * num_heads * batch
        dense = scale * float(seq_len) ** 2
        sparse = scale * kept
        return {"dense": dense, "sparse": sparse, "saved_fraction": 1.0 - sparse / dense}

    # ------------------------------------------------------------------ index lists
    @staticmethod
    def _padded_rows(mask4d: torch.Tensor, what: str = "kv_indices"):
        """Row-wise kept column indices, ascending, padded with 0.

        ``mask4d`` bool ``[Bm, Hm, n, n]`` -> (indices int32 ``[Bm, Hm, n, W]``, counts int32
        ``[Bm, Hm, n]``), ``W`` the largest count (>= 1). Built from the kept entries (``nonzero``
        gives them row by row, columns ascending), so the work is the kept blocks plus the padded
        output, not a sort of every row.
        """
        *lead, n_rows, n_cols = mask4d.shape
        counts = mask4d.sum(dim=-1, dtype=torch.int32)
        width = max(1, int(counts.max().item()) if counts.numel() else 1)
        rows = counts.numel()
        if rows * width > MAX_INDEX_ENTRIES:
            raise ValueError(
                f"block mask of shape {tuple(mask4d.shape)} is too large for its {what} index list: "
                f"{rows:,} rows x {width:,} kept blocks in the widest row = {rows * width:,} int32 entries "
                f"({rows * width * 4 / 2**30:.1f} GiB); at most {MAX_INDEX_ENTRIES:,} are supported. "
                "Use a larger block_size, a shorter sequence or a mask without per-batch/per-head copies"
            )
        flat = mask4d.reshape(rows, n_cols)
        kept = flat.reshape(-1).nonzero().squeeze(1)  # [K] int64 flat positions, row-major
        row_of = kept // n_cols
        first = torch.cumsum(counts.reshape(-1).to(torch.int64), 0) - counts.reshape(
            -1
        )  # [rows] first entry of each row
        slot = torch.arange(kept.numel(), dtype=torch.int64) - first[row_of]  # position inside its row
        indices = torch.zeros(rows, width, dtype=torch.int32)
        indices[row_of, slot] = (kept % n_cols).to(torch.int32)
        return indices.reshape(*lead, n_rows, width), counts.contiguous()

    @staticmethod
    def _full_width_rows(mask4d: torch.Tensor):
        """``_padded_rows`` from static shapes only (for a graph being traced): every row padded to
        ``n`` entries (its kept columns first, ascending, then the others), so no value is read.

        ``mask4d`` bool ``[..., n, n]`` -> (indices int32 ``[..., n, n]``, counts int32 ``[..., n]``).
        """
        n = mask4d.shape[-1]
        cols = torch.arange(n, device=mask4d.device, dtype=torch.int32)
        order = torch.argsort(torch.where(mask4d, cols, cols + n), dim=-1, stable=True).to(torch.int32)
        return order, mask4d.sum(dim=-1, dtype=torch.int32)

    def _lists(self, device) -> dict:
        """The index lists and ``dense4d`` on ``device`` (one derived entry per device)."""
        device = torch.device(device)

        def build() -> dict:
            if device.type != "cpu":
                return {k: v.to(device) for k, v in self._lists("cpu").items()}
            d4 = self._dense4d()
            kv_idx, kv_cnt = self._padded_rows(d4, "kv_indices")
            q_idx, q_cnt = self._padded_rows(d4.transpose(-1, -2).contiguous(), "q_indices")
            return {"kv_indices": kv_idx, "kv_counts": kv_cnt, "q_indices": q_idx, "q_counts": q_cnt, "dense4d": d4}

        def traced() -> dict:
            d4 = self._dense4d().to(device)
            kv_idx, kv_cnt = self._full_width_rows(d4)
            q_idx, q_cnt = self._full_width_rows(d4.transpose(-1, -2))
            return {"kv_indices": kv_idx, "kv_counts": kv_cnt, "q_indices": q_idx, "q_counts": q_cnt, "dense4d": d4}

        return self.derived(("index", str(device)), build, traced)

    def _index(self, name: str, device="cpu") -> torch.Tensor:
        """The cached tensor ``name`` (``kv_indices``, ``kv_counts``, ``q_indices``, ``q_counts``,
        ``dense4d``) on ``device``, not copied: for backends, which only read it. Inside
        ``torch.compile``, for a mask whose lists were not built before, the index lists are built
        in the graph padded to ``nb`` entries per row (same kept blocks, same counts)."""
        return self._lists(device)[name]

    def kv_indices(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb, max_kv]``: kept key blocks of each query block, ascending, 0-padded (a copy)."""
        return self._index("kv_indices", device).clone()

    def kv_counts(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb]``: number of kept key blocks of each query block (a copy)."""
        return self._index("kv_counts", device).clone()

    def q_indices(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb, max_q]``: query blocks that attend to each key block, ascending, 0-padded (a copy)."""
        return self._index("q_indices", device).clone()

    def q_counts(self, device="cpu") -> torch.Tensor:
        """int32 ``[Bm, Hm, nb]``: number of query blocks that attend to each key block (a copy)."""
        return self._index("q_counts", device).clone()

    def dense_on(self, device) -> torch.Tensor:
        """The ``[Bm, Hm, nb, nb]`` bool mask on ``device`` (a copy)."""
        return self._index("dense4d", device).clone()

    # ------------------------------------------------------------------ conversions
    def to_token_mask(self, seq_len: int, device="cpu") -> torch.Tensor:
        """Expand to a token-level bool mask ``[Bm, Hm, seq_len, seq_len]`` (for references and tests)."""
        self._check_seq_len(seq_len)
        bs = self.block_size
        d4 = self._index("dense4d", device)
        tok = d4.repeat_interleave(bs, dim=-2).repeat_interleave(bs, dim=-1)
        return tok[..., :seq_len, :seq_len]

    def to_flex_block_mask(
        self, seq_len: int, device="cpu", num_heads: Optional[int] = None, batch: Optional[int] = None
    ):
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
        self._check_seq_len(seq_len)
        kv_idx = self._index("kv_indices", device)
        kv_cnt = self._index("kv_counts", device)
        if batch is not None or num_heads is not None:
            b = batch if batch is not None else kv_idx.shape[0]
            h = num_heads if num_heads is not None else kv_idx.shape[1]
            kv_idx = kv_idx.expand(b, h, *kv_idx.shape[2:])
            kv_cnt = kv_cnt.expand(b, h, *kv_cnt.shape[2:])
        # Flex wants kv_indices [B, H, nb_q, nb_kv]: pad the width up to nb.
        pad = nb - kv_idx.shape[-1]
        if pad > 0:
            kv_idx = torch.nn.functional.pad(kv_idx, (0, pad))
        # Copies: the BlockMask must not hold the cached tensors themselves.
        return BlockMask.from_kv_blocks(
            kv_cnt.clone(memory_format=torch.contiguous_format),
            kv_idx.clone(memory_format=torch.contiguous_format),
            BLOCK_SIZE=bs,
            seq_lengths=(seq_len, seq_len),
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
