"""The loader's import pass: handlers, the user's stages and the knowledge store.

A module that does not import (missing, or raising as it runs) is imported once per
load and reported once, at its first reference, naming every agent that uses it: one
broken module shared by six agents is one problem, not six, and its code runs once.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sporeflow.config.errors import Problem
from sporeflow.config.handlers import HandlerImportError, agent_method, resolve_handler
from sporeflow.config.model import STAGE_NAMES, StageSpec
from sporeflow.config.positions import Located
from sporeflow.config.positions import Path as DataPath
from sporeflow.config.references import mapping
from sporeflow.config.schema import HANDLER_PATTERN

__all__ = ["qualname", "resolve_handlers", "resolve_stages", "resolve_store"]


def qualname(handler: Callable[..., Any]) -> str:
    """``module:qualified.name`` of a callable given through the Python API."""
    return f"{getattr(handler, '__module__', '?')}:{getattr(handler, '__qualname__', handler)}"


class _Imports:
    """``resolve_handler`` for one load: a module that fails to import is imported once
    and reported once (:meth:`report`), at the first reference the pass met (``handler:``
    ones first, then ``handlers:`` lists), naming every agent that refers to it."""

    def __init__(self, located: Located, base_dir: Path, problems: list[Problem], *,
                 from_file: bool) -> None:
        self.located, self.base_dir, self.problems = located, base_dir, problems
        self.from_file = from_file
        self.broken: dict[str, HandlerImportError] = {}
        self.users: dict[str, list[tuple[str, DataPath]]] = {}  # module -> (agent, place)

    def resolve(self, ref: str, agent: str, where: DataPath) -> Callable[..., Any] | None:
        """The callable ``ref`` names, or None: its problem is reported."""
        module = ref.partition(":")[0]
        if module not in self.broken:
            try:
                return resolve_handler(ref, self.base_dir, from_file=self.from_file)
            except HandlerImportError as exc:
                if exc.module is None:  # the reference itself (no such function, ...)
                    self.problems.append(self.located.problem(where, str(exc)))
                    return None
                module = exc.module
                self.broken[module] = exc
        self.users.setdefault(module, []).append((agent, where))
        return None

    def report(self) -> None:
        """One problem per broken module, at its first reference."""
        for module, users in self.users.items():
            error = self.broken[module]
            where = users[0][1]
            if len(users) == 1:  # the one reference that failed: its own message
                self.problems.append(self.located.problem(where, str(error)))
                continue
            agents = list(dict.fromkeys(agent for agent, _ in users))
            named = (f"agent {agents[0]!r} uses it" if len(agents) == 1 else
                     "agents " + ", ".join(repr(a) for a in agents[:-1])
                     + f" and {agents[-1]!r} use it")
            self.problems.append(self.located.problem(
                where, f"handler module {module!r} {error.cause}; {named}"))


def resolve_handlers(
    located: Located, base_dir: Path, callables: Mapping[str, Callable[..., Any]],
    listed_callables: Mapping[str, Mapping[int, Callable[..., Any]]], problems: list[Problem],
    *, from_file: bool = True,
) -> tuple[dict[str, Callable[..., Any]], dict[str, list[Callable[..., Any]]]]:
    """Each agent's ``handler:``, and each ``handlers:`` list (typed handlers, see
    ``config.typed``), imported; a callable given through the Python API (``callables``
    by agent, ``listed_callables`` by agent and place) is taken as is. What fails is
    added to ``problems``."""
    imports = _Imports(located, base_dir, problems, from_file=from_file)
    handlers = _single(located, imports, callables)
    listed = _listed(located, imports, listed_callables)
    imports.report()
    for name, handler in handlers.items():
        agent = mapping(located.data["agents"].get(name))
        problem = _handler_kind_problem(handler, cpu_bound=agent.get("cpu_bound") is True)
        if problem:
            problems.append(located.problem(("agents", name, "handler"), problem))
    return handlers, listed


def _single(located: Located, imports: _Imports,
            callables: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    handlers: dict[str, Callable[..., Any]] = dict(callables)
    for name, agent in mapping(located.data.get("agents")).items():
        if name in handlers or not isinstance(agent, dict):
            continue
        if not isinstance(agent.get("handler"), str) or not re.fullmatch(
                HANDLER_PATTERN, agent["handler"]):
            continue  # reported by the schema pass
        handler = imports.resolve(agent["handler"], name, ("agents", name, "handler"))
        if handler is not None:
            handlers[name] = handler
    return handlers


def _listed(located: Located, imports: _Imports,
            callables: Mapping[str, Mapping[int, Callable[..., Any]]],
            ) -> dict[str, list[Callable[..., Any]]]:
    listed: dict[str, list[Callable[..., Any]]] = {}
    for name, agent in mapping(located.data.get("agents")).items():
        refs = mapping(agent).get("handlers")
        if not isinstance(refs, list) or not refs:
            continue  # absent, or reported by the schema pass
        given = callables.get(name, {})
        resolved: list[Callable[..., Any]] = []
        for index, ref in enumerate(refs):
            if index in given:
                resolved.append(given[index])
            elif isinstance(ref, str) and re.fullmatch(HANDLER_PATTERN, ref):
                handler = imports.resolve(ref, name, ("agents", name, "handlers", index))
                if handler is not None:
                    resolved.append(handler)
        if len(resolved) == len(refs):
            listed[name] = resolved
    return listed


def resolve_stages(located: Located, base_dir: Path, problems: list[Problem], *,
                   from_file: bool = True) -> tuple[StageSpec, ...]:
    """The ``pipeline.stages`` of the file, their operators imported as handlers are."""
    stages = []
    declared = mapping(located.data.get("pipeline")).get("stages")
    for index, conf in enumerate(declared if isinstance(declared, list) else []):
        if not isinstance(conf, dict) or not isinstance(conf.get("use"), str):
            continue  # reported by the schema pass
        where = ("pipeline", "stages", index, "use")
        if ("before" in conf) == ("after" in conf):
            problems.append(located.problem(
                ("pipeline", "stages", index), f"give exactly one of before: or after:, naming "
                                               f"a stage of {list(STAGE_NAMES)}"))
            continue
        try:
            operator = resolve_handler(conf["use"], base_dir, from_file=from_file)
        except HandlerImportError as exc:
            problems.append(located.problem(where, str(exc)))
            continue
        if not callable(getattr(operator, "pipe", None)):
            problems.append(located.problem(where, f"{conf['use']!r} is not an aiostream "
                                                   f"pipable operator; decorate it with "
                                                   f"@aiostream.pipable_operator"))
            continue
        stages.append(StageSpec(operator=operator, before=conf.get("before"),
                                after=conf.get("after"), options=dict(conf.get("options") or {}),
                                name=str(conf.get("name", conf["use"]))))
    return tuple(stages)


def _handler_kind_problem(handler: Callable[..., Any], *, cpu_bound: bool) -> str | None:
    """Why this handler cannot run as declared: a class without a method, or a cpu_bound
    handler that a worker process could not import and call."""
    if inspect.isclass(handler):
        if cpu_bound:
            return (f"class {handler.__qualname__!r} cannot be cpu_bound: a worker process "
                    f"keeps no agent instance; use a module-level plain function")
        try:
            method = agent_method(handler)
        except HandlerImportError as exc:
            return str(exc)
        try:  # the builder makes one instance per agent, with no arguments
            inspect.signature(handler).bind()
        except TypeError as exc:
            return (f"class {handler.__qualname__!r} cannot be made without arguments "
                    f"({exc}): one instance per agent is made as `{handler.__name__}()`; "
                    f"give __init__'s parameters defaults")
        except ValueError:
            pass  # no signature to read (a builtin's): the call tells
        hook_problem = _hooks_problem(handler)
        if hook_problem is not None:
            return hook_problem
        declared = inspect.getattr_static(handler, method)
        if isinstance(declared, staticmethod | classmethod):
            takes_self = False
        elif inspect.isfunction(declared):
            takes_self = True
        elif hasattr(type(declared), "__get__"):
            return None  # another descriptor: what it binds is its own business
        else:  # a callable object (a functools.partial, an instance): called as it is
            takes_self = False
        return _arguments_problem(getattr(handler, method), f"{handler.__qualname__}.{method}",
                                  (None,) * (3 if takes_self else 2))
    if cpu_bound and (inspect.iscoroutinefunction(handler) or not inspect.isfunction(handler)
                      or "<" in handler.__qualname__):
        return (f"{qualname(handler)!r} cannot be cpu_bound: a worker process imports and "
                f"calls it, so it must be a plain (not async) module-level function")
    return _arguments_problem(handler, qualname(handler), (None, None))


def _hooks_problem(cls: type) -> str | None:
    """Why a class agent's ``on_start``/``on_stop`` cannot be awaited as sporeflow does
    (a plain ``def``: its None is no awaitable, and every start or spore would fail)."""
    for hook in ("on_start", "on_stop"):
        declared = inspect.getattr_static(cls, hook, None)
        if inspect.isfunction(declared) and not inspect.iscoroutinefunction(declared):
            return (f"{cls.__qualname__}.{hook} must be `async def {hook}(self)`: sporeflow "
                    f"awaits it (as the instance is made, or as the organism stops)")
    return None


def _arguments_problem(function: Callable[..., Any], name: str,
                       arguments: tuple[None, ...]) -> str | None:
    """Why ``function`` cannot take a handler's arguments (``self``, when a method, then
    the spore and the context): each spore would fail ``handler failed`` at the call."""
    try:
        # The function called, not what a decorator wraps: a wrapper may supply
        # arguments of its own (``functools.wraps`` sets ``__wrapped__``).
        signature = inspect.signature(function, follow_wrapped=False)
    except (TypeError, ValueError):
        return None  # no signature to read (a builtin): the call tells
    try:
        signature.bind(*arguments)
    except TypeError as exc:
        takes = "(self, spore, ctx)" if len(arguments) == 3 else "(spore, ctx)"
        kind = "def" if inspect.isfunction(function) and not (
            inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
        ) else "async def"
        return (f"{name!r} cannot be called with a spore and a context ({exc}); a handler "
                f"takes both: `{kind} {getattr(function, '__name__', 'handle')}{takes}`")
    return None


def resolve_store(located: Located, base_dir: Path, problems: list[Problem], *,
                  from_file: bool = True) -> Callable[[], Any] | None:
    """The knowledge store factory named by ``organism.knowledge_store`` (None: memory)."""
    ref = mapping(located.data.get("organism")).get("knowledge_store", "memory")
    if not isinstance(ref, str) or ref == "memory" or ":" not in ref:
        return None
    try:
        return resolve_handler(ref, base_dir, from_file=from_file)
    except HandlerImportError as exc:
        problems.append(located.problem(("organism", "knowledge_store"),
                                        str(exc).replace("handler", "knowledge store", 1)))
        return None
