"""Launchers of the Triton block-sparse attention kernels, the custom ops and their autograd.

Flow::

    attention(q, k, v, mask, scale=, key_lengths=)           [B, H, S, D] -> [B, H, S, D]
      -> torch.ops.radial_attention.triton_block_sparse_fwd  (out, lse2)   custom op, opaque to torch.compile
           backward: torch.ops.radial_attention.triton_block_sparse_bwd -> (dq, dk, dv)
             = delta kernel, then the dK/dV kernel (per key tile, walks q_indices) and the dQ kernel
               (per query tile, walks kv_indices): no atomics, so the gradients are deterministic.

The kernels live in ``kernels.py``, loaded by :func:`kernels` as a compiled (GPU) or an interpreted
(CPU) module: Triton decides between the two when a function is defined, so the interpreted module
is made only when ``TRITON_INTERPRET=1`` was set before ``triton`` was imported (Triton's own
library functions are interpreted only then); otherwise asking for it is a clear error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import sys
from typing import Optional

import torch

import triton
from torch.utils.weak import WeakIdKeyDictionary

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- kernel modules
_KERNELS_FILE = pathlib.Path(__file__).with_name("kernels.py")
_kernel_modules: dict = {}


@torch.compiler.assume_constant_result  # read while torch.compile traces, not traced
def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on now (``TRITON_INTERPRET=1`` or the knob)."""
    return bool(triton.knobs.runtime.interpret)


def kernels(interpret: Optional[bool] = None):
    """The kernels module, compiled (``interpret=False``) or interpreted; default: as Triton is set now."""
    if interpret is None:
        interpret = interpreting()
    interpret = bool(interpret)
    module = _kernel_modules.get(interpret)
    if module is not None:
        return module
    if interpret:
        import triton.language.standard as tl_standard
        from triton.runtime.interpreter import InterpretedFunction

        # Triton decides at import whether its own library functions (tl.zeros, tl.max, ...) are
        # interpreted: enabling the interpreter after `import triton` cannot work.
        if not isinstance(tl_standard.zeros, InterpretedFunction):
            raise RuntimeError(
                "Triton's interpreter was switched on after triton was imported; set TRITON_INTERPRET=1 in "
                "the environment before Python starts (or before the first `import triton`)"
            )
    name = f"radial_attention.ops.triton._kernels_{'interpreted' if interpret else 'compiled'}"
    knob = triton.knobs.runtime
    had_knob, old_knob = "interpret" in knob.__dict__, knob.__dict__.get("interpret")
    old_env = os.environ.get("TRITON_INTERPRET")
    knob.interpret = interpret  # read by @triton.jit while the module below is executed
    try:
        spec = importlib.util.spec_from_file_location(name, _KERNELS_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        if had_knob:
            knob.__dict__["interpret"] = old_knob
        else:
            knob.__dict__.pop("interpret", None)
        if old_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old_env
    _kernel_modules[interpret] = module
    return module


# ----------------------------------------------------------------------------- configurations
@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings of one kernel. ``block_m``/``block_n`` must divide the mask block."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    use_tma: bool = False  # Hopper tensor descriptors (sm_90+); otherwise pointer tiles


# Settings chosen on an H200 (benchmarks/NOTES.md says how); keys (kernel, head_dim, block_size).
# fp16/bf16 only: float32 runs exact ("ieee") dots with smaller tiles, see _config(). On Hopper the
# tiles are moved by TMA; the pointer path (other GPUs) uses smaller key tiles, because its address
# tensors cost registers.
_TMA_CONFIGS = {
    ("fwd", 128, 128): KernelConfig(128, 128, 8, 3, True),
    ("fwd", 64, 128): KernelConfig(128, 128, 8, 3, True),
    ("fwd", 128, 64): KernelConfig(64, 64, 4, 3, True),
    ("fwd", 64, 64): KernelConfig(64, 64, 4, 3, True),
    ("dq", 128, 128): KernelConfig(128, 128, 8, 2, True),
    ("dq", 64, 128): KernelConfig(128, 64, 8, 3, True),
    ("dq", 128, 64): KernelConfig(64, 64, 4, 2, True),
    ("dq", 64, 64): KernelConfig(64, 64, 4, 3, True),
    ("dkdv", 128, 128): KernelConfig(64, 128, 8, 2, True),
    ("dkdv", 64, 128): KernelConfig(64, 128, 8, 2, True),
    ("dkdv", 128, 64): KernelConfig(32, 64, 4, 3, True),
    ("dkdv", 64, 64): KernelConfig(64, 64, 4, 3, True),
}
_POINTER_CONFIGS = {
    ("fwd", 128, 128): KernelConfig(128, 64, 8, 3),
    ("fwd", 64, 128): KernelConfig(128, 64, 8, 3),
    ("fwd", 128, 64): KernelConfig(64, 64, 4, 3),
    ("fwd", 64, 64): KernelConfig(64, 64, 4, 3),
    ("dq", 128, 128): KernelConfig(128, 64, 8, 2),
    ("dq", 64, 128): KernelConfig(128, 64, 8, 3),
    ("dq", 128, 64): KernelConfig(64, 64, 4, 2),
    ("dq", 64, 64): KernelConfig(64, 64, 4, 3),
    ("dkdv", 128, 128): KernelConfig(64, 128, 8, 2),
    ("dkdv", 64, 128): KernelConfig(64, 128, 8, 2),
    ("dkdv", 128, 64): KernelConfig(32, 64, 4, 3),
    ("dkdv", 64, 64): KernelConfig(64, 64, 4, 3),
}

# Set by benchmarks / tests to try other settings: {"fwd" | "dq" | "dkdv": KernelConfig}.
CONFIG_OVERRIDES: dict = {}
# Order in which query (key) tiles are launched: "heavy-first" (most kept blocks first),
# "sequential" (block order: neighbouring tiles, which share most key blocks, run together), or
# "auto": heavy-first while one head's K and V fit in L2 (the tail wave is then what matters:
# heavy-first was 9% faster at Wan 1.3B 480p and equal at Wan 14B 720p, H200), sequential when they
# do not (L2 reuse between neighbours matters more: 4% faster fwd+bwd at HunyuanVideo 4x length,
# 236 MB of K/V per head; benchmarks/NOTES.md, v4).
LAUNCH_ORDER = {"value": "auto"}


def _sequential_order(q: torch.Tensor) -> bool:
    order = LAUNCH_ORDER["value"]
    if order != "auto":
        return order == "sequential"
    if q.device.type != "cuda":
        return False
    l2_bytes = getattr(torch.cuda.get_device_properties(q.device), "L2_cache_size", 0) or 0
    head_kv_bytes = 2 * q.shape[-2] * q.shape[-1] * q.element_size()  # K and V of one head
    return l2_bytes > 0 and head_kv_bytes > l2_bytes


def _config(kind: str, q: torch.Tensor, block_size: int) -> KernelConfig:
    if kind in CONFIG_OVERRIDES:
        return CONFIG_OVERRIDES[kind]
    D = q.shape[-1]
    if q.device.type != "cuda" or interpreting():
        # The interpreter runs one program after another: the biggest tiles are the fastest.
        return KernelConfig(block_size, block_size)
    hopper = torch.cuda.get_device_capability(q.device)[0] >= 9
    if q.dtype == torch.float32:
        return KernelConfig(64, 64, 4, 2, hopper)
    return (_TMA_CONFIGS if hopper else _POINTER_CONFIGS)[(kind, D, block_size)]


def _tma_ok(*tensors) -> bool:
    """Whether TMA descriptors can address these [B, H, S, D] tensors: Hopper or newer (or the
    interpreter, which emulates them), 16-byte aligned base and strides, unit last stride."""
    for t in tensors:
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        if any((s * t.element_size()) % 16 for s in t.stride()[:-1]):
            return False
    if interpreting():
        return True
    return tensors[0].device.type == "cuda" and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9


def _tiles(t: torch.Tensor, cfg: KernelConfig, rows: int, use_tma: bool):
    """What a kernel gets for a [B, H, S, D] tensor: a TMA descriptor or the tensor itself."""
    if not use_tma:
        return t
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, t.shape[-1]])


_TL_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _out_dtype(t: torch.Tensor):
    import triton.language as tl

    return getattr(tl, _TL_DTYPES[t.dtype])


def _dot_prec(t: torch.Tensor) -> str:
    # float32 inputs get exact products (the default "tf32" keeps only 10 mantissa bits)
    return "ieee" if t.dtype == torch.float32 else "tf32"


def _check_config(cfg: KernelConfig, block_size: int, kind: str) -> None:
    for name in ("block_m", "block_n"):
        size = getattr(cfg, name)
        if size < 16 or block_size % size:
            raise ValueError(f"{kind} config {name}={size} must be >= 16 and divide the mask block size {block_size}")


# ----------------------------------------------------------------------------- mask tensors
# dense bool mask tensor (CPU: a BlockSparseMask's own ``_dense``, stable while it lives) -> {device: index tensors}
_mask_tensors_cache = WeakIdKeyDictionary()  # tensors compare elementwise: key them by identity


def index_tensors(dense: torch.Tensor, block_size: int, device) -> dict:
    """The index lists of a dense block mask on ``device`` plus heavy-first launch orders (cached).

    ``dense``: bool ``[nb, nb]`` or ``[Bm, Hm, nb, nb]`` (CPU). Returns ``kv_indices``/``kv_counts``,
    ``q_indices``/``q_counts`` (see ``BlockSparseMask``) and ``row_order [Bm, Hm, nb]``: mask rows
    sorted by kept key blocks, descending (forward, dQ); ``col_order``: mask columns sorted by the
    query blocks that see them (dK/dV).
    """
    from radial_attention.mask import BlockSparseMask

    device = torch.device(device)
    entry = _mask_tensors_cache.get(dense)
    if entry is None or entry[0] != dense._version:
        entry = (dense._version, BlockSparseMask(dense, block_size), {})
        _mask_tensors_cache[dense] = entry
    _, mask, per_device = entry
    key = str(device)
    hit = per_device.get(key)
    if hit is None:
        kv_cnt = mask._index("kv_counts", "cpu")
        q_cnt = mask._index("q_counts", "cpu")
        row_order = torch.argsort(kv_cnt, dim=-1, descending=True, stable=True).to(torch.int32)
        col_order = torch.argsort(q_cnt, dim=-1, descending=True, stable=True).to(torch.int32)
        seq = torch.arange(kv_cnt.shape[-1], dtype=torch.int32).expand(kv_cnt.shape).contiguous().to(device)
        hit = {
            "sequential": seq,
            "kv_indices": mask._index("kv_indices", device),
            "kv_counts": mask._index("kv_counts", device),
            "row_order": row_order.contiguous().to(device),
            "q_indices": mask._index("q_indices", device),
            "q_counts": mask._index("q_counts", device),
            "col_order": col_order.contiguous().to(device),
        }
        per_device[key] = hit
    return hit


def launch_orders(t: dict, q: torch.Tensor) -> tuple:
    """(row_order, col_order) of the index tensors ``t`` for inputs like ``q`` (see LAUNCH_ORDER)."""
    if _sequential_order(q):
        return t["sequential"], t["sequential"]
    return t["row_order"], t["col_order"]


def mask_tensors(mask, device) -> dict:
    """``index_tensors`` of a ``BlockSparseMask``."""
    return index_tensors(mask._dense, mask.block_size, device)


def _index_strides(indices: torch.Tensor, counts: torch.Tensor):
    """(b, h, row) strides of the padded index list and (b, h) of counts/orders; 0 for a broadcast dim."""
    Bm, Hm = indices.shape[:2]
    sib = indices.stride(0) if Bm > 1 else 0
    sih = indices.stride(1) if Hm > 1 else 0
    scb = counts.stride(0) if Bm > 1 else 0
    sch = counts.stride(1) if Hm > 1 else 0
    return sib, sih, indices.stride(2), scb, sch


# ----------------------------------------------------------------------------- launchers
def _unit_last(t: torch.Tensor) -> torch.Tensor:
    # The kernels read rows of D contiguous elements; any other layout is copied once.
    return t if t.stride(-1) == 1 else t.contiguous()


def forward(q, k, v, kv_indices, kv_counts, row_order, key_lengths, scale: float, block_size: int,
            config: Optional[KernelConfig] = None):
    """Launch the forward kernel. ``q, k, v [B, H, S, D]`` -> ``(out [B, H, S, D], lse2 [B, H, nb * bs] fp32)``.

    ``lse2`` is the base-2 log-sum-exp of the scaled scores (``+inf`` for a row with no key).
    """
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    B, H, S, D = q.shape
    nb = kv_counts.shape[-1]
    s_pad = nb * block_size
    cfg = config or _config("fwd", q, block_size)
    _check_config(cfg, block_size, "fwd")
    out = torch.empty_like(q)  # keeps q's layout when q is dense (e.g. a [B, S, H, D] view)
    lse = torch.empty((B, H, s_pad), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    use_tma = cfg.use_tma and _tma_ok(q, k, v, out)
    sib, sih, sir, scb, sch = _index_strides(kv_indices, kv_counts)
    kl = key_lengths if key_lengths is not None else kv_counts  # dummy pointer when absent
    grid = (nb * (block_size // cfg.block_m), B * H)
    kernels()._fwd_kernel[grid](
        _tiles(q, cfg, cfg.block_m, use_tma), _tiles(k, cfg, cfg.block_n, use_tma),
        _tiles(v, cfg, cfg.block_n, use_tma), _tiles(out, cfg, cfg.block_m, use_tma), lse,
        kv_indices, kv_counts, row_order, kl,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        sib, sih, sir, scb, sch,
        H, S, s_pad, scale * _LOG2E,
        BS=block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, D=D,
        HAS_KEY_LEN=key_lengths is not None, NEG_SCALE=scale < 0, USE_TMA=use_tma,
        DOT_PREC=_dot_prec(q), OUT_DTYPE=_out_dtype(q), INTERPRET=interpreting(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out, lse


def backward(do, q, k, v, out, lse, q_indices, q_counts, col_order, kv_indices, kv_counts, row_order,
             key_lengths, scale: float, block_size: int,
             dq_config: Optional[KernelConfig] = None, dkdv_config: Optional[KernelConfig] = None):
    """Launch the backward kernels -> ``(dq, dk, dv)``, each ``[B, H, S, D]`` in its input's layout."""
    q, k, v, out, do = (_unit_last(t) for t in (q, k, v, out, do))
    B, H, S, D = q.shape
    nb = kv_counts.shape[-1]
    s_pad = nb * block_size
    K = kernels()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if dq.numel() == 0:
        return dq, dk, dv
    delta = torch.empty((B, H, s_pad), device=q.device, dtype=torch.float32)
    delta_block = 128 if block_size % 128 == 0 else 64
    K._bwd_delta_kernel[(s_pad // delta_block, B * H)](
        out, do, delta, *out.stride()[:3], *do.stride()[:3], H, S, s_pad, BLOCK=delta_block, D=D, num_warps=4,
    )
    kl = key_lengths if key_lengths is not None else kv_counts
    common = dict(HAS_KEY_LEN=key_lengths is not None, DOT_PREC=_dot_prec(q),
                  OUT_DTYPE=_out_dtype(q), BS=block_size, D=D, INTERPRET=interpreting())
    qk_scale = scale * _LOG2E

    cfg = dkdv_config or _config("dkdv", q, block_size)
    _check_config(cfg, block_size, "dkdv")
    use_tma = cfg.use_tma and _tma_ok(q, k, v, do, dk, dv)
    sib, sih, sir, scb, sch = _index_strides(q_indices, q_counts)
    K._bwd_dkdv_kernel[(nb * (block_size // cfg.block_n), B * H)](
        _tiles(q, cfg, cfg.block_m, use_tma), _tiles(k, cfg, cfg.block_n, use_tma),
        _tiles(v, cfg, cfg.block_n, use_tma), _tiles(do, cfg, cfg.block_m, use_tma),
        _tiles(dk, cfg, cfg.block_n, use_tma), _tiles(dv, cfg, cfg.block_n, use_tma),
        lse, delta, q_indices, q_counts, col_order, kl,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        sib, sih, sir, scb, sch,
        H, S, s_pad, nb, qk_scale, scale,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, USE_TMA=use_tma, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )

    cfg = dq_config or _config("dq", q, block_size)
    _check_config(cfg, block_size, "dq")
    use_tma = cfg.use_tma and _tma_ok(q, k, v, do, dq)
    sib, sih, sir, scb, sch = _index_strides(kv_indices, kv_counts)
    K._bwd_dq_kernel[(nb * (block_size // cfg.block_m), B * H)](
        _tiles(q, cfg, cfg.block_m, use_tma), _tiles(k, cfg, cfg.block_n, use_tma),
        _tiles(v, cfg, cfg.block_n, use_tma), _tiles(do, cfg, cfg.block_m, use_tma),
        _tiles(dq, cfg, cfg.block_m, use_tma),
        lse, delta, kv_indices, kv_counts, row_order, kl,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        sib, sih, sir, scb, sch,
        H, S, s_pad, qk_scale, scale,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, USE_TMA=use_tma, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------- custom ops + autograd
# The ops take the dense CPU block mask (a plain tensor torch.compile can pass through) and look
# its index lists up in the cache above, so no data-dependent index building enters a graph.
@torch.library.custom_op("radial_attention::triton_block_sparse_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_dense: torch.Tensor,
            key_lengths: Optional[torch.Tensor], scale: float, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = index_tensors(mask_dense, block_size, q.device)
    row_order, _ = launch_orders(t, q)
    return forward(q, k, v, t["kv_indices"], t["kv_counts"], row_order, key_lengths, scale, block_size)


@_fwd_op.register_fake
def _(q, k, v, mask_dense, key_lengths, scale, block_size):
    B, H = q.shape[:2]
    nb = mask_dense.shape[-1]
    return torch.empty_like(q), q.new_empty((B, H, nb * block_size), dtype=torch.float32)


@torch.library.custom_op("radial_attention::triton_block_sparse_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, mask_dense: torch.Tensor, key_lengths: Optional[torch.Tensor], scale: float,
            block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = index_tensors(mask_dense, block_size, q.device)
    row_order, col_order = launch_orders(t, q)
    return backward(do, q, k, v, out, lse, t["q_indices"], t["q_counts"], col_order, t["kv_indices"],
                    t["kv_counts"], row_order, key_lengths, scale, block_size)


@_bwd_op.register_fake
def _(do, q, k, v, out, lse, mask_dense, key_lengths, scale, block_size):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask_dense, key_lengths, scale, block_size = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.mask_dense = mask_dense  # CPU bool, never modified
    ctx.key_lengths = key_lengths
    ctx.scale = scale
    ctx.block_size = block_size


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _bwd_op(grad_out, q, k, v, out, lse, ctx.mask_dense, ctx.key_lengths, ctx.scale, ctx.block_size)
    return dq, dk, dv, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public entry
def unsupported_reason(q: torch.Tensor, *, requires_grad: bool = False) -> Optional[str]:
    """Why the Triton backend cannot run inputs like ``q`` (None if it can). Backward is always supported."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (expected one of float16, bfloat16, float32)"
    D = q.shape[-1] if q.dim() == 4 else None
    if D not in SUPPORTED_HEAD_DIMS:
        return f"head dim {D} is not supported (expected one of {SUPPORTED_HEAD_DIMS})"
    if q.device.type != "cuda" and not interpreting():
        return (f"it needs CUDA tensors (got device {q.device}); on the CPU it runs only under Triton's "
                f"interpreter, with TRITON_INTERPRET=1 set")
    return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, scale: float,
              key_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Block-sparse attention with the Triton kernels (forward and backward).

    Args:
        q, k, v: ``[B, H, S, D]``, float16/bfloat16/float32, ``D`` in (64, 128), on a CUDA device
            (or the CPU under ``TRITON_INTERPRET=1``). Any strides whose last one is 1 are read in
            place (e.g. a ``[B, S, H, D]`` tensor ``.transpose(1, 2)``).
        mask: a ``BlockSparseMask`` with ``nb == ceil(S / mask.block_size)`` and shape ``[nb, nb]``
            or ``[Bm, Hm, nb, nb]`` (``Bm`` in ``(1, B)``, ``Hm`` in ``(1, H)``).
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]``: keys ``j >= key_lengths[b]`` are excluded.

    Returns:
        ``[B, H, S, D]`` in q's dtype, laid out like q when q is dense; rows with no allowed key are 0.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"triton backend: {name} must be a [B, H, S, D] tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"triton backend: q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype or k.device != q.device or v.device != q.device:
        raise ValueError(f"triton backend: q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} "
                         f"on {q.device}/{k.device}/{v.device}")
    B, H, S, D = q.shape
    bs, nb = mask.block_size, mask.num_blocks
    if nb != -(-S // bs):
        raise ValueError(f"triton backend: mask has {nb} blocks of {bs} but S={S} needs ceil(S/{bs}) = {-(-S // bs)}")
    if len(mask.shape) == 4 and (mask.shape[0] not in (1, B) or mask.shape[1] not in (1, H)):
        raise ValueError(f"triton backend: mask of shape {tuple(mask.shape)} does not fit B={B}, H={H}")
    if key_lengths is not None:
        if tuple(key_lengths.shape) != (B,):
            raise ValueError(f"triton backend: key_lengths must have shape [{B}], got {tuple(key_lengths.shape)}")
        key_lengths = key_lengths.to(device=q.device, dtype=torch.int32)
    why = unsupported_reason(q)
    if why is not None:
        raise ValueError(f"triton backend cannot run q of shape {tuple(q.shape)}, dtype {q.dtype}: {why}")
    out, _ = _fwd_op(q, k, v, mask._dense, key_lengths, float(scale), int(bs))
    return out
