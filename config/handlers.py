"""Resolve ``module:function`` handler references, beside the organism file first."""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import pkgutil
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sporeflow.config.reasons import did_you_mean
from sporeflow.config.words import with_article

__all__ = ["HandlerImportError", "agent_method", "reimport", "resolve_handler"]


class HandlerImportError(ValueError):
    """A handler reference does not import or does not name a callable.

    ``module`` is set when the module itself is at fault (missing, or raising as it is
    imported): every reference into it fails alike, and ``handler module {module!r}
    {cause}`` says why.
    """

    def __init__(self, message: str, *, module: str | None = None, cause: str = "") -> None:
        super().__init__(message)
        self.module = module
        self.cause = cause


def resolve_handler(ref: str, base_dir: Path, *, reload: bool = False,
                    from_file: bool = True) -> Callable[..., Any]:
    """Import ``module:attr`` from ``base_dir`` or from installed packages. ``from_file``:
    ``base_dir`` is an organism file's folder, as an error says (else the ``base_dir``
    of an organism made from a dict or text)."""
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise HandlerImportError(f"handler {ref!r} must be written module:function")
    if not all(part.isidentifier() for part in (*module_name.split("."),
                                                *attr_path.split("."))):
        # Never a file path or a relative import: only the organism's folder and
        # installed packages are searched.
        raise HandlerImportError(
            f"handler {ref!r} must be module:function with dotted Python names (no file "
            f"paths, no leading dots)")
    try:
        module = _import(module_name, base_dir.resolve(), reload=reload, from_file=from_file)
    except HandlerImportError:
        raise
    except Exception as exc:  # an import runs user code: any failure is a config problem
        cause = f"does not import: {type(exc).__name__}: {exc}{_where_raised(exc, base_dir)}"
        raise HandlerImportError(f"handler {ref!r} {cause}", module=module_name,
                                 cause=cause) from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            names = [n for n in dir(module) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise HandlerImportError(
                f"handler {ref!r}: module {module_name!r} has no {part!r}{hint}"
            ) from None
    if not callable(target):
        raise HandlerImportError(f"handler {ref!r} is {with_article(type(target).__name__)}, not "
                                 f"callable")
    return target  # type: ignore[no-any-return]


def _where_raised(exc: BaseException, base_dir: Path) -> str:
    """`` (at mod.py:3)``: the last line of the organism's own files in ``exc``'s traceback
    (a SyntaxError names its file and line itself)."""
    if isinstance(exc, SyntaxError):
        return ""
    root = base_dir.resolve()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        with contextlib.suppress(ValueError):
            return f" (at {Path(frame.filename).relative_to(root)}:{frame.lineno})"
    return ""


def agent_method(cls: type) -> str:
    """The method a class handler's instance is called through: ``handle``, else ``__call__``.

    Raises :class:`HandlerImportError` when the class defines neither.
    """
    if callable(getattr(cls, "handle", None)):
        return "handle"
    if any("__call__" in vars(klass) for klass in cls.__mro__[:-1]):
        return "__call__"
    raise HandlerImportError(
        f"class handler {cls.__qualname__!r} has no handle method; define "
        f"`async def handle(self, spore, ctx)` (or __call__)")


def _import(module_name: str, base_dir: Path, *, reload: bool, from_file: bool) -> Any:
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    # Only the organism's folder is searched besides installed packages: a handler path
    # never reaches into the current directory by accident.
    spec = importlib.machinery.PathFinder.find_spec(top, [str(base_dir)])
    if loaded is not None and spec is not None and spec.origin is not None:
        _check_not_shadowed(module_name, loaded, Path(spec.origin), from_file=from_file)
    if loaded is None:
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
        elif importlib.util.find_spec(top) is None:
            beside = (found.name for found in pkgutil.iter_modules([str(base_dir)]))
            folder = (f"beside the organism file ({base_dir})" if from_file else
                      f"in base_dir ({base_dir}; there is no organism file)")
            cause = f"is neither {folder} nor an installed package{did_you_mean(top, beside)}"
            raise HandlerImportError(f"handler module {module_name!r} {cause}",
                                     module=module_name, cause=cause)
    module = importlib.import_module(module_name)
    return reimport(module_name, base_dir) if reload else module


def _check_not_shadowed(module_name: str, loaded: ModuleType, beside: Path, *,
                        from_file: bool) -> None:
    """A module is imported once per process, by its name: the file beside this organism
    must be the one already imported under that name, or hold the same code (organisms
    made from one template, a test's copies), or its handlers would silently run another
    file's code."""
    held = getattr(loaded, "__file__", None)
    if held is not None and _same_code(Path(held), beside):
        return
    top = loaded.__name__
    where = f"from {held}" if held is not None else "(built into Python)"
    folder = "beside the organism file" if from_file else "in base_dir"
    cause = (f"is {beside}, {folder}, but this process imported a module "
             f"{top!r} already {where}: one process holds one module of a name, so two "
             f"organisms (or an organism and the standard library or an installed package) "
             f"cannot each have their own {top!r}. Rename {beside.name} to a name of this "
             f"organism's own (say {_own_name(beside)}) and the handler paths that name it")
    raise HandlerImportError(f"handler module {module_name!r} {cause}", module=module_name,
                             cause=cause)


def _same_code(held: Path, beside: Path) -> bool:
    try:
        return held.resolve() == beside.resolve() or held.read_bytes() == beside.read_bytes()
    except OSError:
        return False


def _own_name(beside: Path) -> str:
    """A module name made of the organism's folder: ``shop/agents.py`` -> ``shop_agents.py``."""
    folder = re.sub(r"\W+", "_", beside.parent.name).strip("_").lower() or "organism"
    return f"{'o' if folder[0].isdigit() else ''}{folder}_{beside.name}"


def reimport(module_name: str, base_dir: Path) -> ModuleType:
    """Re-execute the imported module ``module_name`` from its file, in place, as a fresh
    import would: what the file no longer defines is gone.

    This is :func:`importlib.reload`, with the organism's folder searched first as
    on the first import: a module found there is not on ``sys.path``, and a plain
    reload could not find it again.
    """
    module = sys.modules[module_name]
    file = getattr(module, "__file__", None)
    if file:
        # Cached bytecode records its source's mtime in whole seconds and its size: an
        # edit within the same second that keeps the size would load the old code.
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            Path(importlib.util.cache_from_source(file)).unlink(missing_ok=True)
    before = dict(vars(module))
    finder = _BesideOrganism(base_dir.resolve())
    sys.meta_path.insert(0, finder)
    try:
        reloaded = importlib.reload(module)
    finally:
        sys.meta_path.remove(finder)
    # A reload runs the file over the module's old namespace, where a function or class
    # the file no longer defines lives on: a renamed handler would still resolve by its
    # old name, as on no fresh start. Running the file makes each one it defines anew,
    # so one of this module's that is still the same object is gone from the file. (Not
    # emptied beforehand: a file that fails to run must leave the running handlers'
    # globals whole.)
    for name, value in before.items():
        if vars(reloaded).get(name) is value and _defined_in(value, module_name):
            delattr(reloaded, name)
    return reloaded


def _defined_in(value: object, module_name: str) -> bool:
    return ((inspect.isfunction(value) or inspect.isclass(value))
            and getattr(value, "__module__", None) == module_name)


class _BesideOrganism(importlib.abc.MetaPathFinder):
    """Finds top-level modules in an organism's folder (for :func:`reimport`)."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = str(base_dir)

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if path is not None:  # a submodule: its package's __path__ finds it
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.base_dir])
