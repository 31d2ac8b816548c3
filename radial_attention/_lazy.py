"""Lazy public names for a package: ``import radial_attention`` must need only torch and numpy."""

from importlib import import_module
from typing import Optional


def lazy_attributes(package: str, names: dict, namespace: dict, hidden: Optional[dict] = None):
    """``(__getattr__, __dir__)`` for a package whose public ``names`` map to the modules defining them.

    A name is imported on first access and then stored in ``namespace`` (the package's globals).
    ``hidden`` names (deprecated ones) resolve the same way but are not listed by ``dir()``.
    """
    resolvable = {**(hidden or {}), **names}

    def __getattr__(name):
        module = resolvable.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        if name in names:  # a hidden name is not cached: it would then show in dir()
            namespace[name] = value
        return value

    def __dir__():
        return sorted(set(names) | {n for n in namespace if not n.startswith("_")})

    return __getattr__, __dir__
