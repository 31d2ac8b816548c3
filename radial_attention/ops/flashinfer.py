"""The ``flashinfer`` backend: FlashInfer's block-sparse attention (forward only, CUDA, fp16/bf16).

Optional: needs the ``flashinfer-python`` package (``pip install radial-attention[flashinfer]``),
which JIT-builds its kernels on first use (minutes, once per machine).

How the contract maps onto ``flashinfer.BlockSparseAttentionWrapper`` (one block-sparse matrix of
``R x C = bs x bs`` blocks shared by all heads of a sequence, ``N`` keys a multiple of ``bs``):

- the plan (CSR of kept blocks, tile scheduling) is made once per mask, sequence length, key limit,
  head count, head dim, dtype, scale and FlashInfer backend, kept in the mask's derived cache (at
  most ``MAX_CACHED_PLANS`` per mask and device, least recently used dropped), and reused;
- FlashInfer computes the key blocks that are wholly valid (``j < kv_limit = min(S, key_lengths[b])``);
  the one partly valid key block (S not a multiple of the block, or a key length inside a block) is
  computed here in torch and merged through the two log-sum-exps;
- per-batch or per-head masks (``[Bm, Hm, nb, nb]``) get one plan per distinct mask slice;
- query rows with no allowed key are set to 0.

``attention(..., fi_backend="fa2" | "fa3" | "auto")`` picks FlashInfer's kernel family (fa3 needs
Hopper). Gradients are not supported: a call that needs them raises ``RuntimeError``.
"""

from __future__ import annotations

import collections
import math
from typing import Optional

import torch

try:
    import flashinfer  # noqa: F401
except ImportError as exc:  # the api reports this as "backend not available"
    raise ImportError(
        "the flashinfer backend needs the flashinfer-python package "
        "(pip install 'radial-attention[flashinfer]'; it JIT-builds its kernels on first use)"
    ) from exc

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
WORKSPACE_BYTES = 128 * 1024 * 1024
MAX_CACHED_PLANS = 8  # per mask and device: each fa3 wrapper holds ~0.5 GB of index buffers

_workspaces: dict = {}  # device -> float workspace shared by the wrappers


def unsupported_reason(q: torch.Tensor, *, requires_grad: bool = False) -> Optional[str]:
    """Why this backend cannot run inputs like ``q`` (None if it can)."""
    if requires_grad:
        return "it is forward-only (FlashInfer's block-sparse wrapper has no backward); use backend='triton'"
    if q.device.type != "cuda":
        return f"it needs CUDA tensors, got device {q.device}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (expected float16 or bfloat16)"
    if q.dim() != 4 or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return (
            f"head dim {q.shape[-1] if q.dim() == 4 else None} is not supported (expected one of {SUPPORTED_HEAD_DIMS})"
        )
    return None


def _workspace(device) -> torch.Tensor:
    key = str(device)
    if key not in _workspaces:
        _workspaces[key] = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    return _workspaces[key]


def _csr(mask, bm: int, hm: int, n_cols: int, device):
    """CSR (indptr [nb+1], indices [nnz]) of the kept blocks of mask slice (bm, hm), columns < n_cols."""
    d = mask._dense4d()[bm, hm, :, :n_cols]  # [nb, n_cols] bool, CPU
    counts = d.sum(dim=1, dtype=torch.int32)
    indptr = torch.zeros(d.shape[0] + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(counts, 0)
    indices = d.nonzero(as_tuple=True)[1].to(torch.int32)  # row-major: ascending per row
    return indptr.to(device), indices.to(device)


def _plan(mask, bm, hm, S, kv_limit, H, D, dtype, scale, fi_backend, device) -> dict:
    """The planned wrapper and row sets for these settings (made once, then reused).

    Returns ``{"wrapper": BlockSparseAttentionWrapper or None (no full key block), "tail_rows": rows
    whose mask row keeps the partial key block (or None), "empty_rows": rows with no allowed key}``.
    """
    # One derived entry per device holds this mask's plans, least recently used first.
    plans = mask.derived(("flashinfer.plans", str(device)), collections.OrderedDict)
    key = (bm, hm, S, kv_limit, H, D, dtype, float(scale), fi_backend)
    hit = plans.get(key)
    if hit is not None:
        plans.move_to_end(key)
        return hit
    bs = mask.block_size
    n_full, tail = divmod(kv_limit, bs)
    dense = mask._dense4d()[bm, hm]  # [nb, nb] CPU
    block_of_row = torch.arange(S) // bs
    plan = {"wrapper": None, "tail_rows": None}
    if n_full > 0:
        wrapper = flashinfer.BlockSparseAttentionWrapper(_workspace(device), backend=fi_backend)
        indptr, indices = _csr(mask, bm, hm, n_full, device)
        # fa3 expands block indices to one index per key token, into a buffer of 128M entries by
        # default: enough for Wan 720p, not for 4x-length HunyuanVideo. Give it what this plan needs.
        needed = int(indices.numel()) * bs + 1
        buf = getattr(wrapper, "_vector_sparse_indices_buffer", None)
        if buf is not None and buf.numel() < needed:
            wrapper.reset_workspace_buffer(
                _workspace(device),
                torch.empty(8 * 1024 * 1024, dtype=torch.uint8, device=device),
                vector_sparse_indices_buffer=torch.empty(needed, dtype=torch.int32, device=device),
            )
        wrapper.plan(
            indptr,
            indices,
            S,
            n_full * bs,
            bs,
            bs,
            H,
            H,
            D,
            sm_scale=float(scale),
            q_data_type=dtype,
            kv_data_type=dtype,
            o_data_type=dtype,
        )
        plan["wrapper"] = wrapper
    if tail:
        rows = dense[block_of_row, n_full].nonzero(as_tuple=True)[0]
        plan["tail_rows"] = rows.to(device)
    keep_cols = dense[:, : n_full + (1 if tail else 0)]
    plan["empty_rows"] = (~keep_cols.any(dim=1))[block_of_row].nonzero(as_tuple=True)[0].to(device)
    plans[key] = plan
    while len(plans) > MAX_CACHED_PLANS:
        plans.popitem(last=False)
    return plan


def _tail_part(q, k, v, start, stop, scale):
    """Attention of queries ``q [r, H, D]`` to keys ``start..stop`` of ``k, v [S, H, D]``, in float32.

    Returns (out [r, H, D] float32, lse2 [r, H]: base-2 log-sum-exp, FlashInfer's convention).
    """
    kt = k[start:stop].float()  # [t, H, D]
    vt = v[start:stop].float()
    s = torch.einsum("rhd,thd->hrt", q.float(), kt) * scale  # [H, r, t]
    lse = torch.logsumexp(s, dim=-1)  # [H, r], natural log
    out = torch.einsum("hrt,thd->rhd", torch.exp(s - lse[..., None]), vt)
    return out, (lse / math.log(2.0)).transpose(0, 1)


def _merge(o1, lse1, o2, lse2):
    """Merge two partial attention results given their base-2 log-sum-exps ([r, H, D], [r, H])."""
    m = torch.maximum(lse1, lse2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w1 = torch.exp2(lse1 - m)
    w2 = torch.exp2(lse2 - m)
    tot = w1 + w2
    tot = torch.where(tot > 0, tot, torch.ones_like(tot))
    return o1.float() * (w1 / tot)[..., None] + o2 * (w2 / tot)[..., None]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask,
    *,
    scale: float,
    key_lengths: Optional[torch.Tensor] = None,
    fi_backend: str = "auto",
) -> torch.Tensor:
    """Block-sparse attention through FlashInfer (forward only).

    Args:
        q, k, v: ``[B, H, S, D]`` CUDA, float16/bfloat16, ``D`` in (64, 128); a ``[B, S, H, D]``
            tensor's ``.transpose(1, 2)`` view is read without a copy.
        mask: a ``BlockSparseMask`` (``nb == ceil(S / bs)``).
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]``; keys ``j >= key_lengths[b]`` are excluded (read on the
            host: one device sync).
        fi_backend: FlashInfer kernel family, ``"auto"``, ``"fa2"`` or ``"fa3"``.

    Returns:
        ``[B, H, S, D]`` in q's dtype.
    """
    # The inputs were validated by the api (and accepted by unsupported_reason). One guard stays: a
    # direct call under autograd would return an output whose gradients silently miss FlashInfer's part.
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError(f"flashinfer backend: {unsupported_reason(q, requires_grad=True)}")
    if fi_backend not in ("auto", "fa2", "fa3"):
        raise ValueError(f"fi_backend must be 'auto', 'fa2' or 'fa3', got {fi_backend!r}")
    B, H, S, D = q.shape
    bs = mask.block_size
    Bm, Hm = mask._dense4d().shape[:2]
    limits = [S] * B
    if key_lengths is not None:
        limits = [max(0, min(S, int(x))) for x in key_lengths.tolist()]
    if scale < 0:  # FlashInfer's running max assumes a positive scale: run |scale| on -q
        q, scale = -q, -scale
    out = torch.empty(B, S, H, D, device=q.device, dtype=q.dtype)  # [B, S, H, D], returned as a view
    for b in range(B):
        kv_limit = limits[b]
        n_full, tail = divmod(kv_limit, bs)  # key blocks wholly valid; valid keys of block n_full
        bm = b if Bm > 1 else 0
        heads = [(h, h + 1) for h in range(H)] if Hm > 1 else [(0, H)]
        for h0, h1 in heads:
            hm = h0 if Hm > 1 else 0
            plan = _plan(mask, bm, hm, S, kv_limit, h1 - h0, D, q.dtype, scale, fi_backend, q.device)
            qs = q[b, h0:h1].transpose(0, 1)  # [S, h, D]: a view of [B, S, H, D] storage is contiguous
            ks = k[b, h0:h1].transpose(0, 1)
            vs = v[b, h0:h1].transpose(0, 1)
            if plan["wrapper"] is not None:
                kf, vf = ks[: n_full * bs], vs[: n_full * bs]
                if not kf.is_contiguous():
                    kf, vf = kf.contiguous(), vf.contiguous()
                rows = plan["tail_rows"]
                dst = out[b] if h1 - h0 == H else None  # write straight into the output when contiguous
                if rows is not None and rows.numel():
                    o, lse = plan["wrapper"].run(qs.contiguous(), kf, vf, out=dst, return_lse=True)
                    o_t, lse_t = _tail_part(qs[rows], ks, vs, n_full * bs, kv_limit, scale)
                    o[rows] = _merge(o[rows], lse[rows], o_t, lse_t).to(o.dtype)
                else:
                    o = plan["wrapper"].run(qs.contiguous(), kf, vf, out=dst)
            else:
                o = torch.zeros_like(qs)
                rows = plan["tail_rows"]
                if rows is not None and rows.numel():
                    o[rows] = _tail_part(qs[rows], ks, vs, 0, kv_limit, scale)[0].to(o.dtype)
            if plan["empty_rows"].numel():
                o[plan["empty_rows"]] = 0  # rows with no allowed key: exactly 0
            if o.data_ptr() != out[b, :, h0:h1].data_ptr():
                out[b, :, h0:h1] = o
    return out.transpose(1, 2)
