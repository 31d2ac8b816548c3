"""Block-sparse attention ops: ``block_sparse_attention`` / ``radial_attention`` and their backends.

Backends (``reference``, ``gather``, ``flex``, ``triton``, ``flashinfer``, ``fa4``) are modules beside this one, imported
lazily by :mod:`radial_attention.ops.api`; see :func:`resolve_backend` for what ``"auto"`` picks.
``dense_attention`` runs full attention with the fastest dense kernel available (FA4's on Hopper,
else torch SDPA), for the dense steps and layers of a radial schedule.
"""

from .api import (
    BACKENDS,
    DENSE_BACKENDS,
    available_backends,
    block_sparse_attention,
    dense_attention,
    radial_attention,
    resolve_backend,
    resolve_dense_backend,
)

__all__ = [
    "BACKENDS",
    "DENSE_BACKENDS",
    "available_backends",
    "block_sparse_attention",
    "dense_attention",
    "radial_attention",
    "resolve_backend",
    "resolve_dense_backend",
]
