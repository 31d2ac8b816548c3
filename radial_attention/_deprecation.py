"""Old names kept working for one release (0.x -> 0.2) behind a ``DeprecationWarning``.

Below every layer (like ``_lazy``): the mask, ops, integrations and train modules all use it.
"""

from __future__ import annotations

import warnings

REMOVED_IN = "0.2"


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` 3: the caller's caller)."""
    warnings.warn(f"{old} is deprecated and goes in radial-attention {REMOVED_IN}; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


def renamed_keyword(where: str, old: str, old_value, new: str, new_value, *, default, stacklevel: int = 4):
    """The value of keyword ``new``, taking a value given under its old name ``old`` (with a warning).

    ``old_value is None`` means the old keyword was not passed; ``new_value == default`` means the
    new one was not (or was passed its default, which is the same thing). Both given: ``TypeError``.
    """
    if old_value is None:
        return new_value
    if new_value is not default and new_value != default:
        raise TypeError(f"{where}: got both {new}={new_value!r} and its deprecated name {old}={old_value!r}; pass {new} only")
    warn_deprecated(f"{where}({old}=...)", f"{new}=", stacklevel=stacklevel)
    return old_value
