"""A package's public names, each loaded from its home module on first use (PEP 562).

Importing a package then loads only what a program touches: an organism that keeps no
journal never imports SQLite, one that speaks no XML never imports lxml.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping
from typing import Any


class LazyNames:
    """The ``__getattr__`` and ``__dir__`` of a package whose names live elsewhere."""

    def __init__(self, package: str, namespace: dict[str, Any], homes: Mapping[str, str]):
        self._package = package
        self._namespace = namespace
        self._homes = homes

    def attribute(self, name: str) -> Any:
        home = self._homes.get(name)
        if home is None:
            raise AttributeError(f"module {self._package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        self._namespace[name] = value  # looked up once
        return value

    def names(self) -> list[str]:
        return sorted({*self._namespace, *self._homes})


def homes_of(modules: Mapping[str, str]) -> dict[str, str]:
    """``{"pkg.mod": "A B C"}`` as ``{"A": "pkg.mod", ...}``: one line a home module."""
    return {name: module for module, names in modules.items() for name in names.split()}


class LazyModule(types.ModuleType):
    """A module imported on its first attribute lookup, then looked up as itself."""

    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(vars(module))  # later lookups never come here
        return getattr(module, name)
