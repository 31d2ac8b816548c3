"""The ``triton`` backend: the project's own Triton kernels for block-sparse attention, with backward.

``attention(q, k, v, mask, scale=, key_lengths=)`` follows the backend contract of
:mod:`radial_attention.ops.api`. Forward, dK/dV and dQ are separate kernels driven by the mask's
block index lists (no atomics: deterministic gradients); the op is a ``torch.library`` custom op
with autograd, so ``torch.compile(fullgraph=True)`` keeps it in one graph.

Runs on CUDA tensors (built for Hopper, runs on any CUDA GPU Triton supports) and, slowly, on CPU
tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set when the op is called).

Experiments (benchmarks, tests) change the kernels' tiles or launch order for a block::

    with triton_kernel_config(fwd=KernelConfig(64, 64, 4, 3, use_tma=True), launch_order="sequential"):
        out = attention(q, k, v, mask, scale=scale)
"""

from .launch import (
    CONFIG_OVERRIDES,
    LAUNCH_ORDERS,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    KernelConfig,
    attention,
    interpreting,
    triton_kernel_config,
    unsupported_reason,
)

__all__ = [
    "CONFIG_OVERRIDES",  # deprecated: use triton_kernel_config
    "KernelConfig",
    "LAUNCH_ORDERS",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "attention",
    "interpreting",
    "triton_kernel_config",
    "unsupported_reason",
]
