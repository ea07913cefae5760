"""Resolve ``module:function`` handler references, beside the organism file first."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["HandlerImportError", "resolve_handler"]


class HandlerImportError(ValueError):
    """A handler reference does not import or does not name a callable."""


def resolve_handler(ref: str, base_dir: Path, *, reload: bool = False) -> Callable[..., Any]:
    """Import ``module:attr`` from ``base_dir`` or from installed packages."""
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise HandlerImportError(f"handler {ref!r} must be written module:function")
    try:
        module = _import(module_name, base_dir.resolve(), reload=reload)
    except HandlerImportError:
        raise
    except Exception as exc:  # an import runs user code: any failure is a config problem
        raise HandlerImportError(
            f"handler {ref!r} does not import: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            names = [n for n in dir(module) if not n.startswith("_")]
            hint = _closest(part, names)
            raise HandlerImportError(
                f"handler {ref!r}: module {module_name!r} has no {part!r}{hint}"
            ) from None
    if not callable(target):
        raise HandlerImportError(f"handler {ref!r} is a {type(target).__name__}, not callable")
    return target  # type: ignore[no-any-return]


def _import(module_name: str, base_dir: Path, *, reload: bool) -> Any:
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is None:
        # Only the organism's folder is searched besides installed packages: a
        # handler path never reaches into the current directory by accident.
        spec = importlib.machinery.PathFinder.find_spec(top, [str(base_dir)])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
        elif importlib.util.find_spec(top) is None:
            raise HandlerImportError(
                f"handler module {module_name!r} is neither beside the organism file "
                f"({base_dir}) nor an installed package"
            )
    module = importlib.import_module(module_name)
    return importlib.reload(module) if reload else module


def _closest(word: str, choices: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""
