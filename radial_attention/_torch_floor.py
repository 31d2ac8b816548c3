"""The oldest torch the package runs on, checked when this module is imported (``radial_attention.mask``,
the first layer that uses torch, imports it first).

pyproject.toml asks for ``torch>=2.6`` (torch.accelerator, FlexAttention's ``BlockMask.from_kv_blocks``
with ``seq_lengths`` and its CPU path; ``torch.library.custom_op`` / ``register_autograd``), but an
environment can hold an older torch anyway (a ``--no-deps`` install, a pinned image): then this says
so in one line instead of an ``AttributeError`` deep inside a backend.
"""

from __future__ import annotations

import re

MIN_TORCH = (2, 6)


def torch_version_tuple(version: str) -> tuple:
    """``(major, minor)`` of a torch version string such as ``"2.11.0+cu130"`` or ``"2.6.0a0+git..."``."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise ValueError(f"cannot read a torch version from {version!r}")
    return int(m.group(1)), int(m.group(2))


def check_torch(version: str) -> None:
    """``ImportError`` naming the found and the needed version when ``version`` is older than :data:`MIN_TORCH`."""
    if torch_version_tuple(version) < MIN_TORCH:
        raise ImportError(
            f"radial-attention needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}, found torch {version}; "
            f"pip install 'torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}' (the build for your CUDA)"
        )


def _check_installed() -> None:
    import torch

    check_torch(torch.__version__)


_check_installed()
