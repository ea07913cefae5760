"""Whether a handler can reply at all: a sink that only ever returns None cannot loop.

Read from the handler's annotation (``-> None``) or, without one, from its source: a
function whose every ``return`` is bare (or ``return None``) and that never yields
returns None. Nested functions and lambdas are their own business. When the source
cannot be read, the handler is taken to reply (the safe side for a warning).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

from sporeflow.config.handlers import HandlerImportError, agent_method

__all__ = ["never_replies"]

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def never_replies(handler: Callable[..., Any]) -> bool:
    """True when ``handler`` (a function, or a class whose instances handle) returns None
    on every path, so its spores produce no reply."""
    if inspect.isclass(handler):
        try:
            handler = getattr(handler, agent_method(handler))
        except HandlerImportError:
            return False
    handler = inspect.unwrap(handler)
    try:
        annotation = inspect.signature(handler).return_annotation
    except (TypeError, ValueError):
        return False
    if annotation is None or annotation == "None":
        return True
    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    except (OSError, TypeError, SyntaxError):
        return False
    function = tree.body[0] if tree.body else None
    if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) or (
            function.name != handler.__name__):
        return False  # a lambda (its source is the lines around it), or not a plain def
    return not any(_gives_a_value(node) for node in _own_nodes(function))


def _gives_a_value(node: ast.AST) -> bool:
    if isinstance(node, ast.Yield | ast.YieldFrom):
        return True
    if isinstance(node, ast.Return) and node.value is not None:
        return not (isinstance(node.value, ast.Constant) and node.value.value is None)
    return False


def _own_nodes(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """Every node of ``function``'s body, not entering nested functions or classes."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if not isinstance(node, _SCOPES):
            yield node
            stack.extend(ast.iter_child_nodes(node))
