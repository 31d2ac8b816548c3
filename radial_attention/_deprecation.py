"""Old names kept working for one release (0.x -> 0.2) behind a ``DeprecationWarning``.

Below every layer (like ``_lazy``): the mask, ops, integrations and train modules all use it.
Renamed functions and keywords call :func:`warn_deprecated` / :func:`renamed_keyword`, a renamed
attribute is a :func:`renamed_attribute`; a moved
module leaves a two-line alias at its old path::

    from radial_attention._deprecation import moved_module
    __getattr__, __dir__ = moved_module(__name__)

whose names are read from the new module on first access (the same objects). :data:`MOVED` is the
one list of module aliases to delete in the next release.
"""

from __future__ import annotations

import warnings
from importlib import import_module

REMOVED_IN = "0.2"


def warn_deprecated(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``stacklevel`` 3: the caller's caller)."""
    warnings.warn(
        f"{old} is deprecated and goes in radial-attention {REMOVED_IN}; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed_keyword(where: str, old: str, old_value, new: str, new_value, *, default, stacklevel: int = 4):
    """The value of keyword ``new``, taking a value given under its old name ``old`` (with a warning).

    ``old_value is None`` means the old keyword was not passed; ``new_value == default`` means the
    new one was not (or was passed its default, which is the same thing). Both given: ``TypeError``.
    """
    if old_value is None:
        return new_value
    if new_value is not default and new_value != default:
        raise TypeError(
            f"{where}: got both {new}={new_value!r} and its deprecated name {old}={old_value!r}; pass {new} only"
        )
    warn_deprecated(f"{where}({old}=...)", f"{new}=", stacklevel=stacklevel)
    return old_value


def renamed_attribute(owner: str, old: str, new: str) -> property:
    """A read-only property for the old name ``old`` of attribute ``new`` of class ``owner``: reading
    it warns and returns ``self.<new>``. In the class body: ``text_tokens = renamed_attribute(...)``."""

    def get(self):
        warn_deprecated(f"{owner}.{old}", new)  # stacklevel 3: the code that read the old name
        return getattr(self, new)

    return property(get, doc=f"Deprecated name of :attr:`{new}`.")


# old module path -> new module path (issue 13: "a house to live in"; remove these in REMOVED_IN).
MOVED = {
    "radial_attention.distributed.diffusers_cp": "radial_attention.integrations.diffusers.context_parallel",
    "radial_attention.distributed.generate": "radial_attention.cli.sequence_parallel",
    "radial_attention.integrations.diffusers.tiny": "radial_attention.testing.tiny",
}


def moved_module(old: str):
    """``(__getattr__, __dir__)`` for the alias module ``old``; warns once, when it is imported."""
    new = MOVED[old]
    warnings.warn(
        f"{old} has moved to {new}; the old name goes in radial-attention {REMOVED_IN}",
        DeprecationWarning,
        stacklevel=3,
    )
    target = import_module(new)

    def __getattr__(name):
        return getattr(target, name)

    def __dir__():
        return dir(target)

    return __getattr__, __dir__
