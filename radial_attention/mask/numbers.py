"""Checks for the plain numbers of the mask and op API (sizes, decay, scale).

Python numbers, numpy scalars and 0-d (one-element) torch tensors are all accepted, so that a value
read from an array or a config tensor works as well as a literal. Booleans are refused although
Python treats ``True`` as the integer 1: ``frames=True`` is a mistake, not one frame.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def _unwrap(name: str, value):
    """A Python number from an int/float, a numpy scalar or a 0-d tensor; ValueError for a bool."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must be a number, got the bool {value!r}")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0:
            raise ValueError(f"{name} must be a number or a 0-d tensor, got a tensor of shape {tuple(value.shape)}")
        if value.dtype.is_complex:
            raise ValueError(f"{name} must be a real number, got a {value.dtype} tensor")
        return value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _unwrap(name, value[()])
    if isinstance(value, np.generic):
        return value.item()
    return value


def as_int(name: str, value, minimum=None) -> int:
    """``value`` as a Python int (>= ``minimum`` if given).

    Raises:
        ValueError: a bool, a non-integer (``2.0`` included: sizes are counts), a non-number, or a
            value below ``minimum`` (ValueError throughout, as the rest of the mask API raises).
    """
    v = _unwrap(name, value)
    if not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def as_float(name: str, value, *, positive: bool = False) -> float:
    """``value`` as a finite Python float (> 0 if ``positive``).

    Raises:
        ValueError: a bool, a non-number, NaN, infinite, or not positive when ``positive``.
    """
    if type(value) is float and math.isfinite(value) and (value > 0 or not positive):
        return value  # the common case (an attention scale), without the generic checks below
    v = _unwrap(name, value)
    if not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(v)
    if not math.isfinite(v) or (positive and not v > 0):
        raise ValueError(f"{name} must be a {'positive ' if positive else ''}finite number, got {v!r}")
    return v
