"""Fine-tuning methods behind one interface (`baselines.base.Method`) and a registry.

Every module in this package is imported on first lookup, so a new method is one
module that decorates its class with `@register("name")`.
"""
from __future__ import annotations

import importlib
import pkgutil

_REGISTRY: dict[str, type] = {}
_LOADED = False


def register(name: str):
    """Class decorator: make a Method subclass available as `name`."""
    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def _load_all():
    global _LOADED
    if not _LOADED:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base":
                importlib.import_module(f"{__name__}.{mod.name}")
        _LOADED = True


def available() -> list[str]:
    """Sorted names of the registered methods."""
    _load_all()
    return sorted(_REGISTRY)


def get_method(name: str) -> type:
    """The Method class registered as `name`; a clear error listing the known names otherwise."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}. "
                       "Add a module under baselines/ with @register(name) and a config entry methods.<name>.")
    return _REGISTRY[name]
