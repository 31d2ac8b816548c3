"""Old module paths kept working for one release after a move, behind a ``DeprecationWarning``.

A moved module leaves a two-line alias at its old path::

    from radial_attention._deprecated import moved_module
    __getattr__, __dir__ = moved_module(__name__)

Its names are read from the new module on first access (the same objects: patching one patches
the other). :data:`MOVED` is the one list of aliases to delete in the next release.
"""

from __future__ import annotations

import warnings
from importlib import import_module

# old module path -> new module path (issue 13: "a house to live in"; remove these in 0.3).
MOVED = {
    "radial_attention.distributed.diffusers_cp": "radial_attention.integrations.diffusers.context_parallel",
    "radial_attention.distributed.generate": "radial_attention.cli.sequence_parallel",
    "radial_attention.integrations.diffusers.tiny": "radial_attention.testing.tiny",
}


def moved_module(old: str):
    """``(__getattr__, __dir__)`` for the alias module ``old``; warns once, when it is imported."""
    new = MOVED[old]
    warnings.warn(f"{old} has moved to {new}; the old name goes in the next release", DeprecationWarning, stacklevel=3)
    target = import_module(new)

    def __getattr__(name):
        return getattr(target, name)

    def __dir__():
        return dir(target)

    return __getattr__, __dir__
