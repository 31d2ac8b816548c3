"""The public attention op: validate inputs, choose a backend, dispatch.

::

    out = block_sparse_attention(q, k, v, block_mask, block_size=128, backend="auto")

    q, k, v   [B, H, S, D]   (any strides: a diffusers [B, S, H, D] tensor .transpose(1, 2) is fine)
    mask      [nb, nb] | [B|1, H|1, nb, nb] bool, or a BlockSparseMask;   nb = ceil(S / block_size)

    key blocks ->   0 1 2 3          out[b, h, i] = softmax_j(scale * q_i . k_j) v_j
    query      0    # . . .          over keys j with mask[b, h, i // bs, j // bs],
    blocks     1    # # . .          j < S and j < key_lengths[b];
               2    . # # .          a row with no such key outputs 0.
               3    # . # #

Backends live in sibling modules (``reference``, ``gather``, ``flex``, ``triton``, ``flashinfer``, ``fa4``), are imported
lazily on first use and never import each other. Each exposes
``attention(q, k, v, mask: BlockSparseMask, *, scale: float, key_lengths) -> Tensor`` (``key_lengths``:
None or an integer ``[B]`` tensor on q's device, int32 or int64 as the caller gave it) and may expose
``unsupported_reason(q, *, requires_grad) -> str | None`` (``requires_grad`` may be left out) saying why it cannot run an input
(device, dtype, head dim, backward; a check that takes ``block_size`` gets the mask's); the api turns that reason into an error for an explicit choice
and skips the backend under ``"auto"``. Both are traced by ``torch.compile`` (fullgraph), so they
must not sync with the device or call functions dynamo skips.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import warnings
from typing import Callable, Optional, Union

import torch
from torch.utils.weak import WeakIdKeyDictionary

from radial_attention.mask import SUPPORTED_BLOCK_SIZES, BlockSparseMask
from radial_attention.mask.numbers import as_float, as_int
from radial_attention._deprecation import renamed_keyword
from radial_attention.mask.radial import radial_block_mask

# Backend name -> module, imported on first use (so optional packages stay optional).
BACKEND_MODULES = {
    "reference": "radial_attention.ops.reference",
    "gather": "radial_attention.ops.gather",
    "flex": "radial_attention.ops.flex",
    "triton": "radial_attention.ops.triton",
    "flashinfer": "radial_attention.ops.flashinfer",
    "fa4": "radial_attention.ops.fa4",
}
BACKENDS = tuple(BACKEND_MODULES)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_modules: dict = {}  # name -> imported module
_checks: dict = {}  # name -> callable(q, requires_grad) -> reason or None
_import_errors: dict = {}  # name -> the ImportError text of a backend that could not be imported


def _load(name: str):
    """The backend's module, or ``None`` if it cannot be imported (reason kept in ``_import_errors``)."""
    module = _modules.get(name)
    if module is not None:
        return module
    if name in _import_errors:
        return None
    if torch.compiler.is_compiling():
        # torch.compile cannot trace an import; reference, gather and flex are imported with this module.
        raise RuntimeError(
            f"attention backend {name!r} was not imported before torch.compile traced the op; call "
            f"radial_attention.ops.available_backends() (which imports every backend) before compiling"
        )
    try:
        module = importlib.import_module(BACKEND_MODULES[name])
    except ImportError as exc:  # the optional package (or the backend itself) is not installed
        _import_errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    if getattr(module, "IMPORT_ERROR", None):  # importable itself, but its optional package is not
        _import_errors[name] = module.IMPORT_ERROR
        return None
    check = getattr(module, "unsupported_reason", None)
    params = inspect.signature(check).parameters if check is not None else {}
    if check is None:
        _checks[name] = lambda q, requires_grad, block_size: None
    elif "block_size" in params:
        _checks[name] = check
    elif "requires_grad" in params:
        _checks[name] = lambda q, requires_grad, block_size, _check=check: _check(q, requires_grad=requires_grad)
    else:  # a backend that supports backward everywhere may leave the argument out
        _checks[name] = lambda q, requires_grad, block_size, _check=check: _check(q)
    _modules[name] = module
    return module


def _preload() -> None:
    """Import the backends torch.compile may need (it cannot trace an import)."""
    _load("reference")
    _load("gather")  # what "auto" picks off CUDA
    _load("flex")  # torch only: FlexAttention itself is imported on first use
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _load("triton")  # what "auto" picks on CUDA (or what runs under Triton's interpreter)
    if torch.cuda.is_available():
        _load("fa4")  # what "auto" picks first on Hopper when flash-attn-4 is installed


def available_backends() -> list:
    """Names of the backends whose module (and the packages it needs) can be imported here.

    Importable is not the same as runnable on a given input: e.g. ``triton`` needs a CUDA tensor
    (or ``TRITON_INTERPRET=1``) and ``flex`` has no CPU backward; ``resolve_backend`` checks that.
    """
    return [name for name in BACKENDS if _load(name) is not None]


def _requires_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


_reasons: dict = {}  # (name, device, dtype, head dim, requires_grad, block size) -> reason or None


def _reason(name: str, q: torch.Tensor, requires_grad: bool, block_size: int = 128) -> Optional[str]:
    """Why backend ``name`` cannot run this input, or None if it can.

    A backend's answer depends only on the device (its type and, for CUDA, which GPU: the
    architecture matters to fa4), dtype, head dim, block size and whether gradients are needed, so
    it is memoized: after one eager call, a traced call reads the memo instead of tracing the check.
    """
    key = (name, str(q.device), q.dtype, q.shape[-1], requires_grad, block_size)
    if key in _reasons:
        return _reasons[key]
    module = _load(name)
    if module is None:
        return f"it cannot be imported ({_import_errors[name]})"
    why = _checks[name](q, requires_grad=requires_grad, block_size=block_size)
    if not torch.compiler.is_compiling():
        _reasons[key] = why
    return why


def _auto_order(q: torch.Tensor) -> tuple:
    # CUDA: FlashAttention-4 where its block sparsity is verified (Hopper; measured 1.27-1.40x
    # faster than our Triton kernels there), the project's Triton kernels (any CUDA GPU), then
    # FlexAttention, then the (dense-cost) reference, with a warning
    # (gather is not measured on a GPU yet, so it is not put before the reference there).
    # CPU and other devices: gather, plain torch ops over the kept blocks only, with autograd.
    # FlexAttention runs forward on the CPU too, but compiles per shape (tens of seconds), has no
    # CPU backward and was measured slower than dense SDPA there, so it is opt-in.
    if q.device.type == "cuda":
        return ("fa4", "triton", "flex", "reference")
    return ("gather", "reference")


_warned_reference: set = set()  # (device, dtype, head dim, requires_grad, block size) already warned about


def resolve_backend(backend: str, q: torch.Tensor, requires_grad: Optional[bool] = None, block_size: int = 128) -> str:
    """The backend that ``block_sparse_attention(..., backend=backend)`` runs for inputs like ``q``.

    Args:
        backend: ``"auto"`` or one of ``BACKENDS``.
        q: a query tensor ``[B, H, S, D]`` (its device, dtype and head dim matter).
        requires_grad: whether a backward pass is needed (default: ``q.requires_grad`` under
            grad mode).
        block_size: the mask's block size (fa4 runs 128 only).

    Returns:
        The backend name. ``"auto"`` picks, on CUDA, ``fa4`` if it is installed and can run the
        input (Hopper, fp16/bf16, head dim 64/128, 128-blocks), else ``triton``, else ``flex``, else
        ``reference`` (with a warning: it does dense work); on the CPU and other devices ``gather``
        (which runs every input, with gradients).

    Raises:
        ValueError: an unknown backend name, or an explicit backend that cannot run the input
            (not installed, no backward on this device, unsupported head dim or dtype). An explicit
            choice never falls back to another backend.
    """
    if requires_grad is None:
        requires_grad = _requires_grad(q)
    if backend == "auto":
        reasons = []
        for name in _auto_order(q):
            why = _reason(name, q, requires_grad, block_size)
            if why is None:
                if name == "reference" and q.device.type == "cuda" and not torch.compiler.is_compiling():
                    key = (str(q.device), q.dtype, q.shape[-1], requires_grad, block_size)
                    if key not in _warned_reference:
                        _warned_reference.add(key)
                        warnings.warn(
                            "radial attention on CUDA fell back to the reference backend, which does dense "
                            "O(S^2) work: " + "; ".join(reasons),
                            RuntimeWarning,
                            stacklevel=3,
                        )
                return name
            reasons.append(f"{name}: {why}")
        raise ValueError("no attention backend can run this input; " + "; ".join(reasons))
    if not isinstance(backend, str) or backend not in BACKEND_MODULES:
        raise ValueError(f"unknown attention backend {backend!r}; expected 'auto' or one of {list(BACKENDS)}")
    why = _reason(backend, q, requires_grad, block_size)
    if why is not None:
        raise ValueError(
            f"attention backend {backend!r} cannot run q of shape {tuple(q.shape)}, dtype {q.dtype}, "
            f"device {q.device}{' with gradients' if requires_grad else ''}: {why}"
        )
    return backend


_preload()


# ---------------------------------------------------------------------- validation
def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, H, S, D], got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, S, D] (4 dims), got shape {tuple(t.shape)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32 (float64 for checks), got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape [B, H, S, D] = {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if q.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(f"q must have S >= 1 and D >= 1, got shape {tuple(q.shape)}")


# Raw mask tensors -> BlockSparseMask, reused while the tensor lives and is unmodified, so the
# index lists a kernel needs are derived once, not on every call. The only cache keyed by identity:
# a raw tensor has no cache of its own; everything derived from the mask lives in the mask object.
_wrapped = WeakIdKeyDictionary()  # keyed by tensor identity (tensor == is elementwise)


def as_block_sparse_mask(block_mask, block_size: Optional[int] = None) -> BlockSparseMask:
    """``block_mask`` as a :class:`BlockSparseMask`: a mask object as is (``block_size``, if given,
    must match), a bool tensor ``[nb, nb]`` / ``[B|1, H|1, nb, nb]`` wrapped once (the same object
    while the tensor lives unmodified; ``block_size`` default 128)."""
    if block_size is not None and not torch.compiler.is_compiling():
        block_size = as_int("block_size", block_size)
    if isinstance(block_mask, BlockSparseMask):
        if block_size is not None and block_size != block_mask.block_size:
            raise ValueError(
                f"block_size={block_size} does not match the mask object's block_size={block_mask.block_size}"
            )
        return block_mask
    if not isinstance(block_mask, torch.Tensor):
        raise TypeError(
            f"block_mask must be a bool tensor [nb, nb] / [B|1, H|1, nb, nb] or a BlockSparseMask, "
            f"got {type(block_mask).__name__}"
        )
    if block_mask.dtype != torch.bool:
        raise TypeError(f"block_mask tensor must be torch.bool, got {block_mask.dtype}")
    bs = 128 if block_size is None else block_size
    if bs not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"block_size must be one of {SUPPORTED_BLOCK_SIZES}, got {bs!r}")
    if torch.compiler.is_compiling():
        return BlockSparseMask(block_mask, bs)
    hit = _wrapped.get(block_mask)
    if hit is not None and hit[0] == block_mask._version and hit[1].block_size == bs:
        return hit[1]
    mask = BlockSparseMask(block_mask, bs)
    _wrapped[block_mask] = (block_mask._version, mask)
    return mask


_as_mask = as_block_sparse_mask  # the name the api's callers used


def _layout_hint(q: torch.Tensor, fits) -> str:
    """`` (q looks like [B, S, H, D]: ...)`` when q's dim 1, not dim 2, is a sequence length that
    ``fits(n)`` accepts: a diffusers ``[B, S, H, D]`` tensor passed without ``.transpose(1, 2)``."""
    if q.dim() == 4 and fits(int(q.shape[1])) and not fits(int(q.shape[2])):
        return (
            f"; q of shape {tuple(q.shape)} looks like [B, S, H, D] with S={q.shape[1]}: pass "
            "q.transpose(1, 2) (and the same for k and v)"
        )
    return ""


def _check_mask(mask: BlockSparseMask, q: torch.Tensor) -> None:
    B, H, S = q.shape[:3]
    bs, nb = mask.block_size, mask.num_blocks
    expected = -(-S // bs)
    if nb != expected:
        hint = _layout_hint(q, lambda n: -(-n // bs) == nb)
        raise ValueError(
            f"block mask has {nb} blocks per side but S={S} tokens with block_size={bs} need "
            f"ceil({S}/{bs}) = {expected}{hint}"
        )
    shape = mask.shape
    if len(shape) == 4:
        Bm, Hm = int(shape[0]), int(shape[1])
        if Bm not in (1, B) or Hm not in (1, H):
            raise ValueError(
                f"block mask of shape {tuple(shape)} does not fit B={B}, H={H}: expected [1 or {B}, 1 or {H}, {nb}, {nb}]"
            )


def _check_key_lengths(key_lengths, q: torch.Tensor) -> Optional[torch.Tensor]:
    if key_lengths is None:
        return None
    B, S = q.shape[0], q.shape[2]
    if not isinstance(key_lengths, torch.Tensor):
        raise TypeError(f"key_lengths must be an integer tensor [B] = [{B}], got {type(key_lengths).__name__}")
    if key_lengths.dtype.is_floating_point or key_lengths.dtype.is_complex or key_lengths.dtype == torch.bool:
        raise TypeError(f"key_lengths must be an integer tensor, got dtype {key_lengths.dtype}")
    if tuple(key_lengths.shape) != (B,):
        raise ValueError(f"key_lengths must have shape [B] = [{B}], got {tuple(key_lengths.shape)}")
    # The range check reads the values (a device sync on CUDA), so it is skipped while compiling;
    # out-of-range values then act as clamped to 0..S (every backend compares j < key_lengths[b]).
    if not torch.compiler.is_compiling():
        bad = (key_lengths < 0) | (key_lengths > S)
        if bool(bad.any()):
            raise ValueError(f"key_lengths must lie in 0..S = 0..{S}, got {key_lengths.tolist()}")
    # Moved to q's device, dtype kept: a cast would be a computed buffer in a compiled graph, which
    # FlexAttention's CPU kernel cannot take as a mask_mod capture. Backends cast if they need to.
    return key_lengths.to(device=q.device, non_blocking=True)


# ---------------------------------------------------------------------- public ops
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: Union[torch.Tensor, BlockSparseMask],
    *,
    block_size: Optional[int] = None,
    scale: Optional[float] = None,
    backend: str = "auto",
    key_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention that computes only the kept blocks of a block mask.

    Args:
        q, k, v: ``[B, H, S, D]``, same dtype (float16, bfloat16, float32; float64 for the
            reference and gather) and device; may be non-contiguous views.
        block_mask: bool ``[nb, nb]`` or ``[B|1, H|1, nb, nb]`` (``True`` = query block attends to
            key block), or a :class:`~radial_attention.mask.BlockSparseMask`, with
            ``nb == ceil(S / block_size)``. Tokens past ``S`` in the last block are padding.
        block_size: tokens per block side, 64 or 128. Default: the mask object's, or 128 for a
            raw tensor; if given with a mask object it must equal the object's.
        scale: multiplier of ``q . k`` (default ``D ** -0.5``).
        backend: ``"auto"``, ``"reference"``, ``"gather"``, ``"flex"``, ``"triton"``, ``"flashinfer"`` or ``"fa4"``
            (see :func:`resolve_backend`). An explicit backend never falls back to another.
        key_lengths: optional integer ``[B]``: keys at positions ``>= key_lengths[b]`` are
            excluded for batch item ``b`` (values in ``0..S``; checked outside ``torch.compile``,
            which reads them: one device sync for a CUDA tensor).

    Returns:
        ``[B, H, S, D]`` in q's dtype; a query row with no allowed key is exactly 0.

    Raises:
        TypeError / ValueError naming what was expected and what was given.
    """
    _check_qkv(q, k, v)
    B, H, S, D = q.shape
    mask = as_block_sparse_mask(block_mask, block_size)
    _check_mask(mask, q)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif torch.compiler.is_compiling() and isinstance(scale, (int, float)) and not isinstance(scale, bool):
        pass  # a Python number is a constant of the graph; as_float's checks would only re-check it
    else:
        try:
            scale = as_float("scale", scale)
        except ValueError:
            raise ValueError(f"scale must be a finite number or None, got {scale!r}") from None
    key_lengths = _check_key_lengths(key_lengths, q)
    name = resolve_backend(backend, q, _requires_grad(q, k, v), mask.block_size)
    return _modules[name].attention(q, k, v, mask, scale=float(scale), key_lengths=key_lengths)


def checked_radial_mask(
    frames: int,
    tokens_per_frame: int,
    extra_tokens: int,
    prefix_tokens: int,
    check_length: Callable[[int, str], None],
    **settings,
):
    """The radial block mask of the layout ``prefix_tokens + frames * tokens_per_frame + extra_tokens``,
    after the caller has checked that its inputs hold that many tokens.

    The sizes are validated first, then ``check_length(seq_len, formula)`` is called with the
    layout's length and its formula for messages (``"frames * tokens_per_frame + extra_tokens =
    5 * 40 + 9 = 209"``; the prefix term only when there is one): it raises if q cannot hold that
    sequence. Only then is the mask built, so a wrong layout cannot ask for a huge one.
    ``settings``: ``preset``, ``decay``, ``sink``, ``adjacent``, ``block_size`` of
    :func:`~radial_attention.mask.radial_block_mask`. One helper for :func:`radial_attention` and
    :func:`radial_attention.distributed.ulysses_radial_attention`.
    """
    F = as_int("frames", frames, 1)
    T = as_int("tokens_per_frame", tokens_per_frame, 1)
    X = as_int("extra_tokens", extra_tokens, 0)
    Y = as_int("prefix_tokens", prefix_tokens, 0)
    seq_len = Y + F * T + X
    # The prefix term is named only when one is given (the message of a video-then-text layout stays as it was).
    names, values = ("prefix_tokens + ", f"{Y} + ") if Y else ("", "")
    check_length(seq_len, f"{names}frames * tokens_per_frame + extra_tokens = {values}{F} * {T} + {X} = {seq_len}")
    return radial_block_mask(F, T, extra_tokens=X, prefix_tokens=Y, **settings)


def radial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    frames: int,
    tokens_per_frame: int,
    extra_tokens: int = 0,
    preset: Optional[str] = None,
    decay: Optional[float] = None,
    sink: Optional[bool] = None,
    adjacent: Optional[str] = None,
    block_size: int = 128,
    scale: Optional[float] = None,
    backend: str = "auto",
    key_lengths: Optional[torch.Tensor] = None,
    text_tokens: Optional[int] = None,
    prefix_tokens: int = 0,
) -> torch.Tensor:
    """Radial attention over a video of ``frames x tokens_per_frame`` tokens (+ extra tokens).

    Builds (once: ``radial_block_mask`` caches by arguments) the radial block mask and calls
    :func:`block_sparse_attention`. ``S`` must equal
    ``prefix_tokens + frames * tokens_per_frame + extra_tokens``: ``prefix_tokens`` extra tokens
    first (e.g. CogVideoX's text), then the video tokens, then ``extra_tokens`` (e.g.
    HunyuanVideo's text); extra tokens are dense rows and columns. ``text_tokens`` is the
    deprecated name of ``extra_tokens``.

    Settings: ``preset`` (``"wan"``, ``"wan-full"``, ``"hunyuan"``, ``"wan2.2"``) gives decay,
    sink and adjacent; ``decay`` / ``sink`` / ``adjacent`` given explicitly override it. Without a
    preset the defaults are ``decay=1.0, sink=False, adjacent="full"``.
    """
    extra_tokens = renamed_keyword(
        "radial_attention", "text_tokens", text_tokens, "extra_tokens", extra_tokens, default=0
    )

    def check_length(seq_len: int, formula: str) -> None:
        _check_qkv(q, k, v)
        if q.shape[2] != seq_len:
            raise ValueError(f"q has S={q.shape[2]} tokens but {formula}{_layout_hint(q, lambda n: n == seq_len)}")

    settings = dict(preset=preset, decay=decay, sink=sink, adjacent=adjacent, block_size=block_size)
    mask = checked_radial_mask(frames, tokens_per_frame, extra_tokens, prefix_tokens, check_length, **settings)
    return block_sparse_attention(
        q, k, v, mask, block_size=block_size, scale=scale, backend=backend, key_lengths=key_lengths
    )


# ---------------------------------------------------------------------- dense attention
DENSE_BACKENDS = ("sdpa", "fa4")


def resolve_dense_backend(backend: str, q: torch.Tensor, requires_grad: Optional[bool] = None) -> str:
    """The kernel :func:`dense_attention` runs: ``"fa4"`` (FlashAttention-4's dense kernel, the
    fastest measured on an H200) where the fa4 backend can run ``q``, else ``"sdpa"`` (torch's
    ``scaled_dot_product_attention``, which picks cuDNN / flash / efficient itself)."""
    if requires_grad is None:
        requires_grad = _requires_grad(q)
    if backend == "auto":
        return "fa4" if _reason("fa4", q, requires_grad) is None else "sdpa"
    if backend not in DENSE_BACKENDS:
        raise ValueError(
            f"unknown dense attention backend {backend!r}; expected 'auto' or one of {list(DENSE_BACKENDS)}"
        )
    if backend == "fa4":
        why = _reason("fa4", q, requires_grad)
        if why is not None:
            raise ValueError(
                f"dense backend 'fa4' cannot run q of shape {tuple(q.shape)}, dtype {q.dtype}, device {q.device}: {why}"
            )
    return backend


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    key_lengths: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Full (dense) attention with the fastest kernel available, for the dense steps and layers.

    Same arguments, layout (``[B, H, S, D]``, any strides) and rules as
    :func:`block_sparse_attention` with every block kept: ``key_lengths`` excludes padded keys, a
    row with no allowed key (``key_lengths[b] == 0``) is 0. ``backend``: ``"auto"``, ``"fa4"`` or
    ``"sdpa"`` (see :func:`resolve_dense_backend`).
    """
    _check_qkv(q, k, v)
    D = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    key_lengths = _check_key_lengths(key_lengths, q)
    name = resolve_dense_backend(backend, q, _requires_grad(q, k, v))
    if name == "fa4":
        return _modules["fa4"].dense_attention(q, k, v, scale=float(scale), key_lengths=key_lengths)
    if key_lengths is None:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=float(scale))
    S = q.shape[2]
    keep = torch.arange(S, device=q.device)[None, :] < key_lengths[:, None]  # [B, S]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=keep[:, None, None, :], scale=float(scale)
    )
    return out.masked_fill((key_lengths == 0)[:, None, None, None], 0)  # SDPA gives NaN for such rows
