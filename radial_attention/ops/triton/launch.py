"""Launchers of the Triton block-sparse attention kernels, the custom ops and their autograd.

Flow::

    attention(q, k, v, mask, scale=, key_lengths=)           [B, H, S, D] -> [B, H, S, D]
      mask_tensors(mask, q.device)                           index lists + launch orders, in the mask's cache
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

import contextlib
import dataclasses
import importlib.util
import os
import pathlib
import sys
import warnings
from typing import Optional

import torch
from torch import Tensor

import triton

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
        _patch_interpreter()
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


def _patch_interpreter() -> None:
    """The interpreter workaround that lives outside kernels.py (the other is kernels.py's ``_mma``).

    Triton 3.6's interpreter turns a loaded scalar (a 1-element numpy array) into a ``range()``
    bound with ``int(array)``, which numpy >= 2.4 refuses: give its tensors an ``__index__`` that
    uses ``.item()``, so the kernels keep the one ``for`` loop that the GPU software-pipelines.
    Applied once, before the interpreted module is made; a Triton without the hook is left alone.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "radial_attention_patch", False):
        return

    def index(self):
        return int(self.handle.data.item())

    def patch_lang_tensor(tensor, *args, **kwargs):
        # Triton 3.6 passes a patching scope (it restores the attributes afterwards); 3.4/3.5 patch
        # the class directly and take the tensor class alone.
        original(tensor, *args, **kwargs)
        scope = args[0] if args else kwargs.get("scope")
        if scope is not None:
            scope.set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    patch_lang_tensor.radial_attention_patch = True
    interpreter._patch_lang_tensor = patch_lang_tensor


# ----------------------------------------------------------------------------- configurations
@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch settings of one kernel. ``block_m``/``block_n`` must divide the mask block."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    use_tma: bool = False  # Hopper tensor descriptors (sm_90+); otherwise pointer tiles


# Settings chosen on an H200 (benchmarks/NOTES.md says how). Keys (kernel, compute capability,
# head_dim, block_size): a GPU takes the entries of the highest capability listed that is not above
# its own, so (9, 0) covers Hopper and newer (tiles moved by TMA) and (0, 0) every older GPU (the
# pointer path, with smaller key tiles because its address tensors cost registers). fp16/bf16
# only: float32 runs exact ("ieee") dots with smaller tiles, see _config().
_ANY_GPU = (0, 0)
_CONFIGS = {
    ("fwd", (9, 0), 128, 128): KernelConfig(128, 128, 8, 3, use_tma=True),
    ("fwd", (9, 0), 64, 128): KernelConfig(128, 128, 8, 3, use_tma=True),
    ("fwd", (9, 0), 128, 64): KernelConfig(64, 64, 4, 3, use_tma=True),
    ("fwd", (9, 0), 64, 64): KernelConfig(64, 64, 4, 3, use_tma=True),
    ("dq", (9, 0), 128, 128): KernelConfig(128, 128, 8, 2, use_tma=True),
    ("dq", (9, 0), 64, 128): KernelConfig(128, 64, 8, 3, use_tma=True),
    ("dq", (9, 0), 128, 64): KernelConfig(64, 64, 4, 2, use_tma=True),
    ("dq", (9, 0), 64, 64): KernelConfig(64, 64, 4, 3, use_tma=True),
    ("dkdv", (9, 0), 128, 128): KernelConfig(64, 128, 8, 2, use_tma=True),
    ("dkdv", (9, 0), 64, 128): KernelConfig(64, 128, 8, 2, use_tma=True),
    ("dkdv", (9, 0), 128, 64): KernelConfig(32, 64, 4, 3, use_tma=True),
    ("dkdv", (9, 0), 64, 64): KernelConfig(64, 64, 4, 3, use_tma=True),
    ("fwd", _ANY_GPU, 128, 128): KernelConfig(128, 64, 8, 3, use_tma=False),
    ("fwd", _ANY_GPU, 64, 128): KernelConfig(128, 64, 8, 3, use_tma=False),
    ("fwd", _ANY_GPU, 128, 64): KernelConfig(64, 64, 4, 3, use_tma=False),
    ("fwd", _ANY_GPU, 64, 64): KernelConfig(64, 64, 4, 3, use_tma=False),
    ("dq", _ANY_GPU, 128, 128): KernelConfig(128, 64, 8, 2, use_tma=False),
    ("dq", _ANY_GPU, 64, 128): KernelConfig(128, 64, 8, 3, use_tma=False),
    ("dq", _ANY_GPU, 128, 64): KernelConfig(64, 64, 4, 2, use_tma=False),
    ("dq", _ANY_GPU, 64, 64): KernelConfig(64, 64, 4, 3, use_tma=False),
    ("dkdv", _ANY_GPU, 128, 128): KernelConfig(64, 128, 8, 2, use_tma=False),
    ("dkdv", _ANY_GPU, 64, 128): KernelConfig(64, 128, 8, 2, use_tma=False),
    ("dkdv", _ANY_GPU, 128, 64): KernelConfig(32, 64, 4, 3, use_tma=False),
    ("dkdv", _ANY_GPU, 64, 64): KernelConfig(64, 64, 4, 3, use_tma=False),
}
_CAPABILITIES = sorted({key[1] for key in _CONFIGS}, reverse=True)  # highest first

# Order in which query (key) tiles are launched: "heavy-first" (most kept blocks first),
# "sequential" (block order: neighbouring tiles, which share most key blocks, run together), or
# "auto": heavy-first while one head's K and V fit in L2 (the tail wave is then what matters:
# heavy-first was 9% faster at Wan 1.3B 480p and equal at Wan 14B 720p, H200), sequential when they
# do not (L2 reuse between neighbours matters more: 4% faster fwd+bwd at HunyuanVideo 4x length,
# 236 MB of K/V per head; benchmarks/NOTES.md, v4).
LAUNCH_ORDERS = ("auto", "heavy-first", "sequential")

# What ``triton_kernel_config`` set: {"fwd" | "dq" | "dkdv": KernelConfig, "launch_order": str}.
# Process-wide on purpose (not thread-local): autograd runs the backward kernels on its own thread.
_experiment: dict = {}


class _DeprecatedKnob(dict):
    """The old experiment globals: still read, but writing to them warns (one release)."""

    def __init__(self, name: str, initial: dict):
        super().__init__(initial)
        self._name = name

    def _warn(self):
        warnings.warn(
            f"radial_attention.ops.triton.launch.{self._name} is deprecated and will be removed in the next "
            "release; use `with triton_kernel_config(fwd=..., dq=..., dkdv=..., launch_order=...):` instead",
            DeprecationWarning,
            stacklevel=3,
        )

    def __setitem__(self, key, value):
        self._warn()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._warn()
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        self._warn()
        super().update(*args, **kwargs)

    def clear(self):
        self._warn()
        super().clear()

    def pop(self, *args):
        self._warn()
        return super().pop(*args)

    def setdefault(self, *args):
        self._warn()
        return super().setdefault(*args)


# Deprecated (use triton_kernel_config): {"fwd" | "dq" | "dkdv": KernelConfig} and {"value": order}.
CONFIG_OVERRIDES: dict = _DeprecatedKnob("CONFIG_OVERRIDES", {})
LAUNCH_ORDER: dict = _DeprecatedKnob("LAUNCH_ORDER", {"value": "auto"})


@contextlib.contextmanager
def triton_kernel_config(
    *,
    fwd: Optional[KernelConfig] = None,
    dq: Optional[KernelConfig] = None,
    dkdv: Optional[KernelConfig] = None,
    launch_order: Optional[str] = None,
):
    """Run the Triton kernels with other settings inside the block (for benchmarks and tests).

    ``fwd`` / ``dq`` / ``dkdv``: the :class:`KernelConfig` of that kernel instead of the tuned table's;
    ``launch_order``: ``"auto"``, ``"heavy-first"`` or ``"sequential"`` (see ``LAUNCH_ORDERS``).
    Arguments left ``None`` keep the enclosing setting. Nested blocks restore the outer settings on
    exit. The setting is process-wide (autograd's backward thread sees it too), read when a kernel
    is launched, so it also applies to a ``torch.compile``'d call.
    """
    new = {}
    for kind, cfg in (("fwd", fwd), ("dq", dq), ("dkdv", dkdv)):
        if cfg is not None:
            if not isinstance(cfg, KernelConfig):
                raise TypeError(f"{kind} must be a KernelConfig, got {type(cfg).__name__}")
            new[kind] = cfg
    if launch_order is not None:
        if launch_order not in LAUNCH_ORDERS:
            raise ValueError(f"launch_order must be one of {LAUNCH_ORDERS}, got {launch_order!r}")
        new["launch_order"] = launch_order
    global _experiment
    outer = _experiment
    _experiment = {**outer, **new}
    try:
        yield
    finally:
        _experiment = outer


def _launch_order() -> str:
    if "launch_order" in _experiment:
        return _experiment["launch_order"]
    return LAUNCH_ORDER.get("value", "auto")


def _sequential_order(q: torch.Tensor) -> bool:
    order = _launch_order()
    if order != "auto":
        return order == "sequential"
    if q.device.type != "cuda":
        return False
    l2_bytes = getattr(torch.cuda.get_device_properties(q.device), "L2_cache_size", 0) or 0
    head_kv_bytes = 2 * q.shape[-2] * q.shape[-1] * q.element_size()  # K and V of one head
    return l2_bytes > 0 and head_kv_bytes > l2_bytes


def _tuned_config(kind: str, capability: tuple, head_dim: int, block_size: int) -> KernelConfig:
    """The table's entry for a GPU of ``capability`` (the highest listed capability not above it)."""
    for cap in _CAPABILITIES:
        if cap <= tuple(capability):
            return _CONFIGS[(kind, cap, head_dim, block_size)]
    raise KeyError(f"no Triton kernel config for compute capability {capability}")  # unreachable: (0, 0) is listed


def _config(kind: str, q: torch.Tensor, block_size: int) -> KernelConfig:
    if kind in _experiment:
        return _experiment[kind]
    if kind in CONFIG_OVERRIDES:
        return CONFIG_OVERRIDES[kind]
    if q.device.type != "cuda" or interpreting():
        return _interpreter_config(block_size)
    cfg = _tuned_config(kind, torch.cuda.get_device_capability(q.device), q.shape[-1], block_size)
    if q.dtype == torch.float32:
        return dataclasses.replace(cfg, block_m=64, block_n=64, num_warps=4, num_stages=2)
    return cfg


def _interpreter_config(block_size: int) -> KernelConfig:
    """Tiles under Triton's CPU interpreter (which runs one program after another, so the biggest
    tiles are the fastest). Its workarounds: ``_patch_interpreter`` and kernels.py's ``_mma``;
    ``_tma_ok`` knows that the interpreter emulates TMA descriptors."""
    return KernelConfig(block_size, block_size)


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
def mask_tensors(mask, device) -> dict:
    """The index tensors the kernels read for a ``BlockSparseMask``, on ``device``.

    Returns ``kv_indices``/``kv_counts``, ``q_indices``/``q_counts`` (the mask's own lists, see
    ``BlockSparseMask``) and three launch orders ``[Bm, Hm, nb]`` int32: ``row_order``, mask rows
    sorted by kept key blocks, descending (forward, dQ); ``col_order``, mask columns sorted by the
    query blocks that see them (dK/dV); ``sequential``, block order. Cached in the mask's derived
    cache (per device); inside ``torch.compile`` a mask seen for the first time gets them built in
    the graph (no host sync).
    """
    device = torch.device(device)

    def orders(kv_cnt, q_cnt) -> dict:
        row = torch.argsort(kv_cnt, dim=-1, descending=True, stable=True).to(torch.int32).contiguous()
        col = torch.argsort(q_cnt, dim=-1, descending=True, stable=True).to(torch.int32).contiguous()
        seq = torch.arange(kv_cnt.shape[-1], dtype=torch.int32, device=kv_cnt.device).expand(kv_cnt.shape).contiguous()
        return {"row_order": row, "col_order": col, "sequential": seq}

    def build() -> dict:
        cpu = orders(mask._index("kv_counts", "cpu"), mask._index("q_counts", "cpu"))
        lists = {name: mask._index(name, device) for name in ("kv_indices", "kv_counts", "q_indices", "q_counts")}
        return {**lists, **{name: t.to(device) for name, t in cpu.items()}}

    def traced() -> dict:
        lists = {name: mask._index(name, device) for name in ("kv_indices", "kv_counts", "q_indices", "q_counts")}
        return {**lists, **orders(lists["kv_counts"], lists["q_counts"])}

    return mask.derived(("triton.index", str(device)), build, traced)


def launch_orders(t: dict, q: torch.Tensor) -> tuple:
    """(row_order, col_order) of the index tensors ``t`` for inputs like ``q`` (see LAUNCH_ORDERS)."""
    if _sequential_order(q):
        return t["sequential"], t["sequential"]
    return t["row_order"], t["col_order"]


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


def _strides(prefix: str, t: torch.Tensor) -> dict:
    """``{stride_<prefix>b, stride_<prefix>h, stride_<prefix>s}`` of a ``[B, H, S, D]`` tensor (unit last stride)."""
    return dict(zip((f"stride_{prefix}b", f"stride_{prefix}h", f"stride_{prefix}s"), t.stride()[:3]))


def _index_args(indices: torch.Tensor, counts: torch.Tensor) -> dict:
    """Strides of a padded index list and its counts/orders, as the kernels name them."""
    sib, sih, sir, scb, sch = _index_strides(indices, counts)
    return dict(stride_ib=sib, stride_ih=sih, stride_ir=sir, stride_cb=scb, stride_ch=sch)


def _kernel_config(kind: str, config: Optional[KernelConfig], q: torch.Tensor, block_size: int) -> KernelConfig:
    """``config``, else the configuration for inputs like ``q`` (see ``_config``), checked against the mask block."""
    cfg = config or _config(kind, q, block_size)
    _check_config(cfg, block_size, kind)
    return cfg


# The kernels' [B, H, S, D] arguments of key rows (tiles of BLOCK_N rows); the others (Q, O, DO, DQ)
# are query rows (BLOCK_M).
_KEY_TILES = ("K", "V", "DK", "DV")


def _shared_args(q: torch.Tensor, kv_counts: torch.Tensor, key_lengths, scale: float, block_size: int) -> dict:
    """The arguments that the forward, dQ and dK/dV kernels take alike, for inputs like ``q [B, H, S, D]``."""
    _, H, S, D = q.shape
    return dict(
        KEY_LEN=key_lengths if key_lengths is not None else kv_counts,  # dummy pointer when absent
        H=H,
        S=S,
        S_PAD=kv_counts.shape[-1] * block_size,
        qk_scale=scale * _LOG2E,
        BS=block_size,
        D=D,
        HAS_KEY_LEN=key_lengths is not None,
        DOT_PREC=_dot_prec(q),
        OUT_DTYPE=_out_dtype(q),
        INTERPRET=interpreting(),
    )


def _launch(kernel, grid: tuple, cfg: KernelConfig, tiles: dict, **args) -> None:
    """Launch a tiled kernel (forward, dQ, dK/dV) with ``cfg``'s tiles, warps and stages.

    ``tiles``: ``{kernel argument: [B, H, S, D] tensor}``, each passed as a TMA descriptor of its
    tile (when ``cfg`` asks for TMA and all of them allow it, see ``_tma_ok``) or as the tensor,
    with its strides ``stride_<name>b/h/s``; ``args``: the kernel's other arguments, by name.
    """
    use_tma = cfg.use_tma and _tma_ok(*tiles.values())
    for name, t in tiles.items():
        args[name] = _tiles(t, cfg, cfg.block_n if name in _KEY_TILES else cfg.block_m, use_tma)
        args.update(_strides(name.lower(), t))
    kernel[grid](
        **args,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        USE_TMA=use_tma,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def forward(
    q,
    k,
    v,
    kv_indices,
    kv_counts,
    row_order,
    key_lengths,
    scale: float,
    block_size: int,
    config: Optional[KernelConfig] = None,
):
    """Launch the forward kernel. ``q, k, v [B, H, S, D]`` -> ``(out [B, H, S, D], lse2 [B, H, nb * bs] fp32)``.

    ``lse2`` is the base-2 log-sum-exp of the scaled scores (``+inf`` for a row with no key).
    """
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    B, H, S, D = q.shape
    nb = kv_counts.shape[-1]
    cfg = _kernel_config("fwd", config, q, block_size)
    out = torch.empty_like(q)  # keeps q's layout when q is dense (e.g. a [B, S, H, D] view)
    lse = torch.empty((B, H, nb * block_size), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    _launch(
        kernels()._fwd_kernel,
        (nb * (block_size // cfg.block_m), B * H),  # one program per query tile
        cfg,
        dict(Q=q, K=k, V=v, O=out),
        LSE=lse,
        KV_IDX=kv_indices,
        KV_CNT=kv_counts,
        ROW_ORDER=row_order,
        **_index_args(kv_indices, kv_counts),
        NEG_SCALE=scale < 0,
        **_shared_args(q, kv_counts, key_lengths, scale, block_size),
    )
    return out, lse


def backward(
    do,
    q,
    k,
    v,
    out,
    lse,
    q_indices,
    q_counts,
    col_order,
    kv_indices,
    kv_counts,
    row_order,
    key_lengths,
    scale: float,
    block_size: int,
    dq_config: Optional[KernelConfig] = None,
    dkdv_config: Optional[KernelConfig] = None,
):
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
        O=out,
        DO=do,
        DELTA=delta,
        **_strides("o", out),
        **_strides("d", do),
        H=H,
        S=S,
        S_PAD=s_pad,
        BLOCK=delta_block,
        D=D,
        num_warps=4,
    )
    shared = dict(LSE=lse, DELTA=delta, ds_scale=scale, **_shared_args(q, kv_counts, key_lengths, scale, block_size))

    cfg = _kernel_config("dkdv", dkdv_config, q, block_size)
    _launch(
        K._bwd_dkdv_kernel,
        (nb * (block_size // cfg.block_n), B * H),  # one program per key tile
        cfg,
        dict(Q=q, K=k, V=v, DO=do, DK=dk, DV=dv),
        Q_IDX=q_indices,
        Q_CNT=q_counts,
        COL_ORDER=col_order,
        **_index_args(q_indices, q_counts),
        NB=nb,
        **shared,
    )
    cfg = _kernel_config("dq", dq_config, q, block_size)
    _launch(
        K._bwd_dq_kernel,
        (nb * (block_size // cfg.block_m), B * H),  # one program per query tile
        cfg,
        dict(Q=q, K=k, V=v, DO=do, DQ=dq),
        KV_IDX=kv_indices,
        KV_CNT=kv_counts,
        ROW_ORDER=row_order,
        **_index_args(kv_indices, kv_counts),
        **shared,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------- custom ops + autograd
# The ops take the mask's index tensors on q's device (from the mask's derived cache, or built in
# the graph inside torch.compile), so no data-dependent index building enters a graph and nothing
# is looked up by identity. Which launch order runs is decided inside the op, when it runs. They
# come as one list, ``index``, in the order of _INDEX_NAMES.
_INDEX_NAMES = ("kv_indices", "kv_counts", "q_indices", "q_counts", "row_order", "col_order", "sequential")


@torch.library.custom_op("radial_attention::triton_block_sparse_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, index: list[Tensor], key_lengths: Optional[Tensor], scale: float, block_size: int
) -> tuple[Tensor, Tensor]:
    t = dict(zip(_INDEX_NAMES, index))
    rows, _ = launch_orders(t, q)
    return forward(q, k, v, t["kv_indices"], t["kv_counts"], rows, key_lengths, scale, block_size)


@_fwd_op.register_fake
def _(q, k, v, index, key_lengths, scale, block_size):
    B, H = q.shape[:2]
    nb = dict(zip(_INDEX_NAMES, index))["kv_counts"].shape[-1]
    return torch.empty_like(q), q.new_empty((B, H, nb * block_size), dtype=torch.float32)


@torch.library.custom_op("radial_attention::triton_block_sparse_bwd", mutates_args=())
def _bwd_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    index: list[Tensor], key_lengths: Optional[Tensor], scale: float, block_size: int,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    t = dict(zip(_INDEX_NAMES, index))
    rows, cols = launch_orders(t, q)
    lists = (t["q_indices"], t["q_counts"], cols, t["kv_indices"], t["kv_counts"], rows)
    return backward(do, q, k, v, out, lse, *lists, key_lengths, scale, block_size)


@_bwd_op.register_fake
def _(do, q, k, v, out, lse, index, key_lengths, scale, block_size):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, index, key_lengths, scale, block_size = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *index)
    ctx.rest = (key_lengths, scale, block_size)  # the backward op's arguments after index


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, *index = ctx.saved_tensors
    dq, dk, dv = _bwd_op(grad_out, q, k, v, out, lse, index, *ctx.rest)
    # No gradients for index (one None per tensor of the list), key_lengths, scale, block_size.
    return dq, dk, dv, [None] * len(index), None, None, None


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
        return (
            f"it needs CUDA tensors (got device {q.device}); on the CPU it runs only under Triton's "
            f"interpreter, with TRITON_INTERPRET=1 set"
        )
    return None


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, scale: float, key_lengths: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Block-sparse attention with the Triton kernels (forward and backward).

    The inputs are the api's, already validated there (``radial_attention.ops.api``; this backend
    checks nothing again) and accepted by :func:`unsupported_reason`:

    Args:
        q, k, v: ``[B, H, S, D]``, float16/bfloat16/float32, ``D`` in (64, 128), on a CUDA device
            (or the CPU under ``TRITON_INTERPRET=1``). Any strides whose last one is 1 are read in
            place (e.g. a ``[B, S, H, D]`` tensor ``.transpose(1, 2)``).
        mask: a ``BlockSparseMask`` with ``nb == ceil(S / mask.block_size)`` and shape ``[nb, nb]``
            or ``[Bm, Hm, nb, nb]`` (``Bm`` in ``(1, B)``, ``Hm`` in ``(1, H)``).
        scale: multiplier of ``q . k``.
        key_lengths: optional integer ``[B]`` on q's device: keys ``j >= key_lengths[b]`` are excluded.

    Returns:
        ``[B, H, S, D]`` in q's dtype, laid out like q when q is dense; rows with no allowed key are 0.
    """
    if key_lengths is not None:
        key_lengths = key_lengths.to(device=q.device, dtype=torch.int32)  # what the kernels load
    t = mask_tensors(mask, q.device)
    index = [t[name] for name in _INDEX_NAMES]
    out, _ = _fwd_op(q, k, v, index, key_lengths, float(scale), int(mask.block_size))
    return out
