"""The ``fa4`` backend: FlashAttention-4 (``flash-attn-4``, CuTe DSL) with the radial block lists.

Optional: ``pip install "radial-attention[cuda]"`` (flash-attn-4 and its CuTe DSL, pinned to the
versions tested here). Runs where FA4's block sparsity is verified: Hopper (SM90), fp16/bf16, head
dims 64 and 128, 128-token blocks. Elsewhere ``unsupported_reason`` says why (FA4 is known to
ignore block-sparse tables silently on SM80, so the check is by architecture, not by "it ran").

How the contract maps onto FA4 (``flash_attn.cute.interface``):

- Every kept block is passed as a *full* block (``full_block_cnt`` / ``full_block_idx``, the mask's
  own padded-CSR lists ``kv_counts`` / ``kv_indices``); FA4's *mask* blocks (which would need a
  ``mask_mod``) are empty. The backward gets the transposed lists (``q_counts`` / ``q_indices``).
  Lists are ``[Bm, Hm, nb, W]`` with ``Bm``, ``Hm`` in ``(1, B)``/``(1, H)``: FA4 broadcasts size-1
  dims, so nothing is copied per batch item or head (at HunyuanVideo 4x one list is ~52 MB).
  They are built once per mask and device and reused by every layer and step.
- q, k, v go in as FA4's native ``[B, S, H, D]``: the api's ``[B, H, S, D]`` arguments are
  transposed views of diffusers' ``[B, S, H, D]`` tensors, so their ``.transpose(1, 2)`` is the
  original storage (no copy). The output is returned as the ``[B, H, S, D]`` view of a ``[B, S, H, D]``
  tensor, which is what diffusers transposes back.
- ``key_lengths`` (HunyuanVideo's prompt padding): per batch item, the keys are cut to
  ``k[:, :L]`` and the block counts to the key blocks below ``ceil(L / bs)``; FA4 masks the keys
  past ``L`` inside the last kept block itself (as for any ``S`` that is not a multiple of the
  block). Exact, forward and backward (``dk``/``dv`` past ``L`` are 0). One FA4 call per batch
  item with a distinct length; equal lengths share a call.
- Query rows with no allowed key: FA4 writes 0 (and ``lse = -inf``).

Both directions are ``torch.library`` custom ops with a fake implementation and autograd, so
``torch.compile(fullgraph=True)`` and diffusers' ``compile_repeated_blocks`` keep the op in the
graph (dynamo cannot trace ``flash_attn_func`` itself). The ops take the block lists on q's device
(kept in the mask's derived cache, or built in the graph for a mask first seen inside
``torch.compile``), so no data-dependent list building enters a graph.

FA4 JIT-compiles each kernel configuration on first use (3-4 s). Its on-disk kernel cache is turned
on here, in ``$XDG_CACHE_HOME/radial-attention/flash-attn-4`` (``~/.cache/...``), unless the user
set FA4's own variables ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED`` / ``..._CACHE_DIR``: a new
process then finds its kernels compiled.

``dense_attention(q, k, v, scale=, key_lengths=)`` runs FA4's dense kernel (the fastest dense
attention on an H200) with the same layout and ``key_lengths`` handling, for the dense steps and
layers of a radial schedule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from radial_attention.mask import BlockSparseMask

#: The versions this backend was verified with on an H200 (pinned by the ``cuda`` extra).
TESTED_FA4_VERSION = "4.0.0b36"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_BLOCK_SIZES = (128,)
#: Compute capabilities where FA4's block sparsity was checked against a float64 reference.
VERIFIED_CAPABILITIES = ((9, 0),)

try:  # FA4 is optional: the lists below are plain torch and are tested without it.
    from flash_attn.cute import interface as _fa4
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch as _BlockSparseTensors

    IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # also raised by its CuTe DSL when CUDA libraries are missing
    _fa4 = None
    _BlockSparseTensors = None
    IMPORT_ERROR = (
        f"flash-attn-4 is not installed or cannot be imported ({type(exc).__name__}: {exc}); "
        f"pip install 'radial-attention[cuda]'"
    )


def _enable_disk_cache() -> None:
    """Turn FA4's compiled-kernel cache on in a per-user folder, unless the user configured it."""
    if _fa4 is None:
        return
    if "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED" in os.environ or "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR" in os.environ:
        return  # the user's own choice (read by FA4 at import)
    try:
        from flash_attn.cute import cache_utils
    except ImportError:
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache_utils.CUTE_DSL_CACHE_DIR = str(base / "radial-attention" / "flash-attn-4")
    cache_utils.CUTE_DSL_CACHE_ENABLED = True


_enable_disk_cache()


# ----------------------------------------------------------------------------- where it runs
def unsupported_reason(q: torch.Tensor, *, requires_grad: bool = False, block_size: int = 128) -> Optional[str]:
    """Why the fa4 backend cannot run inputs like ``q`` ``[B, H, S, D]`` (None if it can)."""
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if q.device.type != "cuda":
        return f"it needs CUDA tensors, got device {q.device}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (expected float16 or bfloat16)"
    D = q.shape[-1] if q.dim() == 4 else None
    if D not in SUPPORTED_HEAD_DIMS:
        return f"head dim {D} is not supported (expected one of {SUPPORTED_HEAD_DIMS})"
    if block_size not in SUPPORTED_BLOCK_SIZES:
        return f"block size {block_size} is not supported by FA4's block sparsity here (expected 128)"
    return _arch_reason(q.device)


def _arch_reason(device: torch.device) -> Optional[str]:
    cap = torch.cuda.get_device_capability(device)
    if cap not in VERIFIED_CAPABILITIES:
        return (
            f"FA4 block sparsity is verified only on compute capability "
            f"{', '.join(f'{a}.{b}' for a, b in VERIFIED_CAPABILITIES)} (Hopper); this GPU is {cap[0]}.{cap[1]} "
            f"(on SM80 FA4 ignores block-sparse tables silently)"
        )
    return None


# ----------------------------------------------------------------------------- block lists
class _SparseTensors(NamedTuple):
    """Stand-in with FA4's ``BlockSparseTensorsTorch`` fields, used when FA4 is not installed (tests)."""

    mask_block_cnt: torch.Tensor
    mask_block_idx: torch.Tensor
    full_block_cnt: Optional[torch.Tensor] = None
    full_block_idx: Optional[torch.Tensor] = None
    cu_total_m_blocks: Optional[torch.Tensor] = None
    cu_block_idx_offsets: Optional[torch.Tensor] = None
    block_size: Optional[tuple] = None
    dq_write_order: Optional[torch.Tensor] = None
    dq_write_order_full: Optional[torch.Tensor] = None
    spt: Optional[bool] = None


def _tensors_class():
    return _BlockSparseTensors if _BlockSparseTensors is not None else _SparseTensors


class BlockLists(NamedTuple):
    """The padded-CSR lists FA4 reads, on one device (int32).

    ``fwd_cnt [Bm, Hm, nb]`` / ``fwd_idx [Bm, Hm, nb, W]``: kept key blocks of each query block,
    ascending; ``bwd_cnt [Bm, Hm, nb]`` / ``bwd_idx [Bm, Hm, nb, Wq]``: the query blocks that attend to
    each key block; ``none_cnt`` / ``none_idx``: FA4's (empty) *mask*-block lists.
    """

    fwd_cnt: torch.Tensor
    fwd_idx: torch.Tensor
    bwd_cnt: torch.Tensor
    bwd_idx: torch.Tensor
    none_cnt: torch.Tensor
    none_idx: torch.Tensor


def block_lists(mask: BlockSparseMask, device) -> BlockLists:
    """FA4's lists for ``mask`` on ``device``: the mask's own index lists plus FA4's empty
    mask-block lists (cached in the mask's derived cache)."""
    device = torch.device(device)

    def build() -> BlockLists:
        fwd_cnt, fwd_idx = mask._index("kv_counts", device), mask._index("kv_indices", device)
        none_cnt = torch.zeros_like(fwd_cnt)
        none_idx = torch.zeros(*fwd_cnt.shape, 1, dtype=torch.int32, device=device)
        return BlockLists(
            fwd_cnt, fwd_idx, mask._index("q_counts", device), mask._index("q_indices", device), none_cnt, none_idx
        )

    return mask.derived(("fa4.lists", str(device)), build)


def _forward_tensors(lists: BlockLists, bm: slice, key_blocks: Optional[int], block_size: int):
    """FA4's forward ``block_sparse_tensors`` for mask batch slice ``bm``, keys cut to ``key_blocks`` blocks."""
    cnt, idx = lists.fwd_cnt[bm], lists.fwd_idx[bm]
    if key_blocks is not None and key_blocks < idx.shape[-2]:
        # Indices are ascending within a row, so the kept blocks below the cut are a prefix of the
        # row, at most key_blocks long: FA4 wants the index width <= the number of key blocks.
        valid = torch.arange(idx.shape[-1], device=idx.device) < cnt[..., None]
        cnt = ((idx < key_blocks) & valid).sum(dim=-1, dtype=torch.int32)
        idx = idx[..., :key_blocks]
    return _tensors_class()(
        mask_block_cnt=lists.none_cnt[bm],
        mask_block_idx=lists.none_idx[bm],
        full_block_cnt=cnt,
        full_block_idx=idx,
        block_size=(block_size, block_size),
    )


def _backward_tensors(lists: BlockLists, bm: slice, key_blocks: Optional[int], block_size: int):
    """FA4's backward lists (per key block: its query blocks) for ``bm``, key blocks ``< key_blocks``."""
    nb = lists.bwd_cnt.shape[-1]
    n = nb if key_blocks is None else key_blocks
    return _tensors_class()(
        mask_block_cnt=lists.none_cnt[bm][..., :n],
        mask_block_idx=lists.none_idx[bm][..., :n, :],
        full_block_cnt=lists.bwd_cnt[bm][..., :n],
        full_block_idx=lists.bwd_idx[bm][..., :n, :],
        block_size=(block_size, block_size),
    )


def _groups(B: int, key_lengths: Optional[torch.Tensor], S: int, per_batch_mask: bool):
    """Batch items that share one FA4 call: ``[(batch slice, key length)]``.

    One call for the whole batch when no key is cut and the mask is shared; otherwise one call per
    item (cut keys are a non-contiguous slice across items). Reads key_lengths on the host: one
    sync, inside the custom op, outside any compiled graph.
    """
    lengths = [S] * B if key_lengths is None else [max(0, min(S, int(x))) for x in key_lengths.tolist()]
    if not per_batch_mask and all(length == S for length in lengths):
        return [(slice(0, B), S)]
    return [(slice(b, b + 1), lengths[b]) for b in range(B)]


# ----------------------------------------------------------------------------- the FA4 calls
def _require_fa4():
    if _fa4 is None:
        raise RuntimeError(f"fa4 backend: {IMPORT_ERROR}")
    return _fa4


def _mask_slice(lists: Optional[BlockLists], batch: slice) -> slice:
    if lists is None or lists.fwd_cnt.shape[0] == 1:
        return slice(0, 1)
    return batch


def _as_lists(tables) -> Optional[BlockLists]:
    """The op's list argument (the six tensors, or none for dense attention) as ``BlockLists``."""
    return BlockLists(*tables) if len(tables) else None


def _calls(B: int, S: int, key_lengths, lists: Optional[BlockLists], block_size: int, tensors):
    """The FA4 calls of one direction: ``(batch slice, key length, block_sparse_tensors)`` per group
    of :func:`_groups`. ``tensors`` is :func:`_forward_tensors` or :func:`_backward_tensors`; the
    tensors are None for dense attention and for a group with key length 0 (no call: the caller
    writes the empty rows itself)."""
    per_batch = lists is not None and lists.fwd_cnt.shape[0] > 1
    for batch, length in _groups(B, key_lengths, S, per_batch):
        if length == 0 or lists is None:
            yield batch, length, None
            continue
        key_blocks = None if length == S else -(-length // block_size)
        yield batch, length, tensors(lists, _mask_slice(lists, batch), key_blocks, block_size)


def _forward(q, k, v, lists: Optional[BlockLists], key_lengths, scale: float, block_size: int, need_lse: bool = True):
    """q, k, v ``[B, S, H, D]`` -> (out ``[B, S, H, D]`` contiguous, lse ``[B, H, S]`` float32, or an
    empty tensor when ``need_lse`` is False: inference skips writing it). ``lists``: None for dense."""
    fa4 = _require_fa4()
    B, S, H, D = q.shape
    out = q.new_empty((B, S, H, D))
    lse = q.new_empty((B, H, S) if need_lse else (0,), dtype=torch.float32)
    for batch, length, sparse in _calls(B, S, key_lengths, lists, block_size, _forward_tensors):
        if length == 0:  # no key at all: the rows are empty
            out[batch] = 0
            if need_lse:
                lse[batch] = float("-inf")
            continue
        fa4._flash_attn_fwd(
            q[batch],
            k[batch, :length],
            v[batch, :length],
            softmax_scale=scale,
            causal=False,
            block_sparse_tensors=sparse,
            return_lse=need_lse,
            out=out[batch],
            lse=lse[batch] if need_lse else None,
        )
    return out, lse


def _backward(dout, q, k, v, out, lse, lists: Optional[BlockLists], key_lengths, scale: float, block_size: int):
    """Gradients ``(dq, dk, dv)``, each ``[B, S, H, D]`` contiguous; ``dk``/``dv`` past a key length are 0."""
    fa4 = _require_fa4()
    B, S, H, D = q.shape
    dq = q.new_empty((B, S, H, D))
    dk = k.new_zeros((B, S, H, D)) if key_lengths is not None else k.new_empty((B, S, H, D))
    dv = v.new_zeros((B, S, H, D)) if key_lengths is not None else v.new_empty((B, S, H, D))
    for batch, length, sparse in _calls(B, S, key_lengths, lists, block_size, _backward_tensors):
        if length == 0:
            dq[batch] = 0
            continue
        fa4._flash_attn_bwd(
            q[batch],
            k[batch, :length],
            v[batch, :length],
            out[batch],
            dout[batch],
            lse[batch],
            softmax_scale=scale,
            causal=False,
            block_sparse_tensors=sparse,
            dq=dq[batch],
            dk=dk[batch, :length],
            dv=dv[batch, :length],
        )
    return dq, dk, dv


# The ops take FA4's six list tensors as one list (BlockLists order) on q's device, or an empty list
# for dense attention.
@torch.library.custom_op("radial_attention::fa4_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tables: list[torch.Tensor],
    key_lengths: Optional[torch.Tensor],
    scale: float,
    block_size: int,
    need_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, _as_lists(tables), key_lengths, scale, block_size, need_lse)


@_fwd_op.register_fake
def _(q, k, v, tables, key_lengths, scale, block_size, need_lse):
    B, S, H, D = q.shape
    return q.new_empty((B, S, H, D)), q.new_empty((B, H, S) if need_lse else (0,), dtype=torch.float32)


@torch.library.custom_op("radial_attention::fa4_bwd", mutates_args=())
def _bwd_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    tables: list[torch.Tensor],
    key_lengths: Optional[torch.Tensor],
    scale: float,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dout, q, k, v, out, lse, _as_lists(tables), key_lengths, scale, block_size)


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, tables, key_lengths, scale, block_size):
    shape = tuple(q.shape)
    return q.new_empty(shape), k.new_empty(shape), v.new_empty(shape)


def _setup_context(ctx, inputs, output):
    q, k, v, tables, key_lengths, scale, block_size, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *tables)  # tables: on q's device, read-only (the mask's cache)
    ctx.key_lengths = key_lengths
    ctx.scale = scale
    ctx.block_size = block_size


def _autograd_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, *tables = ctx.saved_tensors
    if lse.numel() == 0:
        raise RuntimeError(
            "fa4 backend: the forward ran without gradients (no log-sum-exp kept), so it has no backward"
        )
    dq, dk, dv = _bwd_op(grad_out, q, k, v, out, lse, tables, ctx.key_lengths, ctx.scale, ctx.block_size)
    return dq, dk, dv, [None] * len(tables), None, None, None, None  # one None per list tensor


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


class _EagerFA4(torch.autograd.Function):
    """The same forward/backward as the custom ops, for eager calls.

    torch's custom-op dispatch (autograd wrapper, redispatch, fake-tensor plumbing) costs ~25 us of
    host time per call on the H200's host, a sixth of FA4's own; outside ``torch.compile`` nothing
    needs the op boundary, so eager calls take this plain autograd function (measured by
    ``benchmarks/fa4_overhead.py``). Inside a compiled graph the custom op is used.
    """

    @staticmethod
    def forward(ctx, q, k, v, lists, key_lengths, scale, block_size, need_lse):
        out, lse = _forward(q, k, v, lists, key_lengths, scale, block_size, need_lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.lists, ctx.key_lengths, ctx.scale, ctx.block_size = lists, key_lengths, scale, block_size
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if lse.numel() == 0:
            raise RuntimeError(
                "fa4 backend: the forward ran without gradients (no log-sum-exp kept), so it has no backward"
            )
        dq, dk, dv = _backward(
            grad_out.contiguous(), q, k, v, out, lse, ctx.lists, ctx.key_lengths, ctx.scale, ctx.block_size
        )
        return dq, dk, dv, None, None, None, None, None


def _run(q, k, v, lists: Optional[BlockLists], key_lengths, scale: float, block_size: int):
    """One direction-aware call (``[B, S, H, D]`` in and out): the custom op inside ``torch.compile``,
    the plain autograd function in eager mode. ``lists`` None: dense attention."""
    need_lse = _needs_grad(q, k, v)
    if torch.compiler.is_compiling():
        tables = [] if lists is None else list(lists)
        out, _ = _fwd_op(q, k, v, tables, key_lengths, scale, block_size, need_lse)
        return out
    if not need_lse:  # inference: no autograd graph to record
        return _forward(q, k, v, lists, key_lengths, scale, block_size, False)[0]
    return _EagerFA4.apply(q, k, v, lists, key_lengths, scale, block_size, True)[0]


# ----------------------------------------------------------------------------- backend entry points
def _needs_grad(*tensors) -> bool:
    """Whether autograd will differentiate this call (then FA4 also writes the log-sum-exp)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, scale: float, key_lengths: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Block-sparse attention through FA4 (forward and backward).

    Args:
        q, k, v: ``[B, H, S, D]`` CUDA fp16/bf16, ``D`` in (64, 128); a ``[B, S, H, D]`` tensor's
            ``.transpose(1, 2)`` is read in place.
        mask: a ``BlockSparseMask`` with 128-token blocks (validated by the api).
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]`` on q's device: keys ``j >= key_lengths[b]`` are excluded.

    Returns:
        ``[B, H, S, D]`` (the transposed view of a contiguous ``[B, S, H, D]`` tensor).
    """
    lists = block_lists(mask, q.device)
    out = _run(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), lists, key_lengths, float(scale), mask.block_size
    )
    return out.transpose(1, 2)


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, key_lengths: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Dense attention through FA4's dense kernel; same arguments and layout as :func:`attention`."""
    out = _run(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, key_lengths, float(scale), 128)
    return out.transpose(1, 2)
