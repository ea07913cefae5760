"""Stop conditions: a safe little expression language over ``organism.stats()``.

``sporeflow run --until 'totals.handled >= 1000 and totals.dead_letters == 0'``
is parsed with the standard ``ast`` module and evaluated by walking the tree:
nothing is ever passed to ``eval``. The language has only what a condition
needs:

- names and dotted paths into the stats dict (``totals.handled``,
  ``agents.counter.failed``); ``agents["my-agent"].handled`` for names that are
  not identifiers; a reason missing under ``by_reason`` counts as 0;
- numbers, strings (``state == "running"``), ``True``/``False``;
- comparisons (``==  !=  <  <=  >  >=``, chained too), ``and``, ``or``, ``not``,
  and a unary minus.
"""

from __future__ import annotations

import ast
import asyncio
import operator
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from sporeflow.config.reasons import UnknownReason, did_you_mean, reason_named

__all__ = ["StopCondition", "parse_condition", "stop_task", "wait_until"]

Stats = Mapping[str, Any]

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_ZERO_WHEN_MISSING = frozenset({"by_reason"})  # counters that only list what happened


class StopCondition:
    """A parsed condition; call it with a stats dict to get True or False."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"condition {text!r} is not an expression ({exc.msg}); write "
                             f"it like 'totals.handled >= 1000'") from None
        self._check(tree.body)
        self._tree = tree.body

    def __call__(self, stats: Stats) -> bool:
        return bool(self._eval(self._tree, stats))

    def __repr__(self) -> str:
        return f"StopCondition({self.text!r})"

    def _check(self, node: ast.AST) -> None:
        """Refuse, before any evaluation, every construct outside the tiny grammar."""
        allowed = (ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare,
                   ast.Name, ast.Attribute, ast.Subscript, ast.Constant, ast.Load,
                   *_COMPARE)
        for child in ast.walk(node):
            if not isinstance(child, allowed):
                raise ValueError(f"condition {self.text!r}: {type(child).__name__} is not "
                                 f"allowed; use names like totals.handled, numbers, "
                                 f"comparisons, and, or, not")
            if isinstance(child, ast.Constant) and not isinstance(
                    child.value, int | float | str):
                raise ValueError(f"condition {self.text!r}: {child.value!r} is not a number "
                                 f"or a string")
            if isinstance(child, ast.Subscript) and not (
                    isinstance(child.slice, ast.Constant) and isinstance(child.slice.value, str)):
                raise ValueError(f"condition {self.text!r}: write a subscript as "
                                 f"[\"name\"], with a quoted name")
            if isinstance(child, ast.Attribute | ast.Subscript):
                self._reason_of(child)  # a reason that names none would count 0 for ever

    def _reason_of(self, node: ast.Attribute | ast.Subscript) -> str | None:
        """The reason ``node`` names under ``by_reason`` (as the stats write it), or None
        when it is no such key; raise ValueError for a reason that names none."""
        parent = node.value
        if not ((isinstance(parent, ast.Attribute) and parent.attr == "by_reason")
                or (isinstance(parent, ast.Name) and parent.id == "by_reason")):
            return None
        key = node.attr if isinstance(node, ast.Attribute) else str(
            ast.literal_eval(node.slice))
        try:
            return str(reason_named(key))
        except UnknownReason as exc:
            raise ValueError(f"condition {self.text!r}: {exc}") from None

    def _eval(self, node: ast.AST, stats: Stats) -> Any:
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(value, stats) for value in node.values)
            return any(self._eval(value, stats) for value in node.values)
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, stats)
            return (not operand) if isinstance(node.op, ast.Not) else -operand
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, stats)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self._eval(right_node, stats)
                try:
                    holds = _COMPARE[type(op)](left, right)
                except TypeError:
                    raise ValueError(f"condition {self.text!r} compares {left!r} with "
                                     f"{right!r}; compare counts with numbers, like "
                                     f"'totals.handled >= 100'") from None
                if not holds:
                    return False
                left = right
            return True
        if isinstance(node, ast.Constant):
            return node.value
        return self._lookup(node, stats)

    def _lookup(self, node: ast.AST, stats: Stats) -> Any:
        path: list[str] = []
        while not isinstance(node, ast.Name):
            assert isinstance(node, ast.Attribute | ast.Subscript)  # _check allowed no other
            reason = self._reason_of(node)  # handler_failed: the stats' "handler failed"
            if reason is not None:
                path.append(reason)
            elif isinstance(node, ast.Attribute):
                path.append(node.attr)
            else:
                path.append(str(ast.literal_eval(node.slice)))
            node = node.value
        path.append(node.id)
        path.reverse()
        value: Any = stats
        for depth, key in enumerate(path):
            if isinstance(value, Mapping) and key in value:
                value = value[key]
                continue
            if depth and path[depth - 1] in _ZERO_WHEN_MISSING:
                return 0
            known = sorted(value) if isinstance(value, Mapping) else []
            hint = did_you_mean(key, known, within=".".join(path[:depth]))
            where = ".".join(path[:depth]) or "the stats"
            raise ValueError(f"condition {self.text!r}: {where} has no {key!r}{hint}")
        return value


def parse_condition(text: str) -> StopCondition:
    """Parse ``text``; raise ValueError naming what is not allowed."""
    return StopCondition(text)


async def wait_until(stats: Callable[[], Stats], predicate: Callable[[Stats], bool], *,
                     interval: float = 0.1) -> None:
    """Return once ``predicate(stats())`` holds, checking every ``interval`` seconds.

    A periodic tick, not a check per spore: the hot path never pays for it.
    """
    # Polling is the point: an event set per spore would put the check on the hot path.
    while not predicate(stats()):  # noqa: ASYNC110
        await asyncio.sleep(interval)


def stop_task(stats: Callable[[], Stats], running: Callable[[], bool],
              stop: Callable[[], Coroutine[Any, Any, int]],
              condition: str | Callable[[Stats], bool], *,
              interval: float) -> asyncio.Task[int]:
    """A task that calls ``stop()`` once ``condition`` holds over ``stats()`` (checked
    every ``interval`` seconds); it ends with 0 if the run ended otherwise first."""
    predicate = parse_condition(condition) if isinstance(condition, str) else condition

    async def watch() -> int:
        await wait_until(stats, lambda current: not running() or predicate(current),
                         interval=interval)
        return await stop() if running() else 0

    return asyncio.get_running_loop().create_task(watch(), name="sporeflow:stop_when")
