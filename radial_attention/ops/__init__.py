"""Block-sparse attention ops: ``block_sparse_attention`` / ``radial_attention`` and their backends.

Backends (``reference``, ``gather``, ``flex``, ``triton``, ``flashinfer``) are modules beside this one, imported
lazily by :mod:`radial_attention.ops.api`; see :func:`resolve_backend` for what ``"auto"`` picks.
"""

from .api import (
    BACKENDS,
    available_backends,
    block_sparse_attention,
    radial_attention,
    resolve_backend,
)

__all__ = ["BACKENDS", "available_backends", "block_sparse_attention", "radial_attention", "resolve_backend"]
