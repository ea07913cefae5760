"""The declared chain: a list of named aiostream stages, assembled in one place.

    source ─▶ validate ─▶ expire ─▶ [budget] ─▶ route ─▶ schema ─▶ [journal] ─▶ dispatch

The organism declares its stages as :class:`Stage` values; users insert their own
(:class:`~sporeflow.config.StageSpec`, from Python or ``pipeline.stages`` in
organism.yaml) before or after a named one. A user stage is a pipable operator over
batches (lists) of spores before ``route``, or over batches of deliveries
(``(spore, targets)``) after it. It must pass on or ``reject`` every spore it takes:
``reject(spore, reason, error)`` dead-letters and settles it. What it passes on or
rejects may be a copy (``dataclasses.replace``): the copy gets the mark of the spore it
took with that id (:class:`_Marks`), by which a broker bridge knows the delivery it came
in (its signature still to check, its ack still owed).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiostream import pipable_operator, stream, streamcontext

from sporeflow.config import ConfigError, Limits, Problem, StageSpec
from sporeflow.config.reasons import did_you_mean
from sporeflow.pipeline.core.budget import ThreadBudget, enforce_budget
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.owed import Owed
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.core.wiring import WiringSnapshot
from sporeflow.steps import (
    Reject,
    SchemaCheck,
    Spore,
    check_schemas,
    dispatch,
    expire_filter,
    forget_checked,
    mark_of,
    route,
    set_mark,
    validate,
)

__all__ = ["Stage", "assemble", "declare_chain", "place"]


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the chain: ``piped`` is an operator's ``.pipe(...)``, ready to apply."""

    name: str
    piped: Any


def declare_chain(*, limits: Limits, ledger: Ledger, requests: RequestBook,
                  wiring: Callable[[], WiringSnapshot], outside: Container[str],
                  now: Callable[[], datetime], budget: ThreadBudget, owed: Owed,
                  verify: SchemaCheck | None = None,
                  arrived: Callable[[Spore], str | None] | None = None,
                  last: Stage | None = None, user: Sequence[StageSpec] = ()) -> list[Stage]:
    """An organism's stages, in order, with the user's in their places.

    ``verify`` and ``arrived`` come from a broker bridge (signatures, the queue a spore
    came from); ``last`` replaces ``dispatch`` (a bridge publishes instead). ``owed``: what
    route and dispatch still deliver to agents a reload removed.
    """
    reject = ledger.reject
    stages = [
        Stage("validate", validate.pipe(limits=limits, on_reject=reject,
                                        verify=verify)),
        Stage("expire", expire_filter.pipe(on_reject=reject, now=now)),
    ]
    if budget.enforcing:  # only with a per-thread limit: no cost otherwise
        stages.append(Stage("budget", enforce_budget.pipe(budget=budget, on_reject=reject,
                                                          wiring=wiring, arrived=arrived)))
    stages += [
        Stage("route", route.pipe(
            table=lambda: wiring().table, on_reject=reject, asked=requests.asked,
            abandoned=requests.abandoned, answered=requests.answered,
            on_response=ledger.resolve, on_copy=ledger.response_copy, outside=outside,
            on_outside=lambda spore: ledger.on_outside(spore),
            on_broadcast=ledger.broadcast_routed, arrived=arrived, owed=owed.owes)),
        Stage("schema", check_schemas.pipe(schemas=lambda: wiring().schemas, on_reject=reject)),
        last or Stage("dispatch", dispatch.pipe(lanes=lambda: wiring().lanes,
                                                on_reject=reject, retiring=owed.take)),
    ]
    placed = place(stages, user, reject)
    if placed[0].name != "validate":  # the user's first: what was checked is checked again
        placed.insert(0, Stage("forget checked", forget_checked.pipe()))
    return placed


def place(stages: Sequence[Stage], user: Sequence[StageSpec], reject: Reject) -> list[Stage]:
    """``stages`` with each user stage inserted where it asks; an unknown place raises."""
    placed = list(stages)
    for extra in user:
        anchor = extra.before or extra.after
        names = [stage.name for stage in placed]
        if anchor is None or (extra.before and extra.after) or anchor not in names:
            raise ConfigError([Problem(
                "<pipeline>", 0, 0, "pipeline.stages",
                f"stage {extra.label()!r} must name exactly one of before/after, a stage of "
                f"{names!r}; got before={extra.before!r}, after={extra.after!r}"
                f"{did_you_mean(anchor, names)}")])
        index = names.index(anchor) + (1 if extra.after else 0)
        marks = _Marks()  # over spores before route, over (spore, targets) after it
        spore_of = _itself if index <= names.index("route") else _first
        users = extra.operator.pipe(reject=marks.rejecting(reject), **dict(extra.options))
        piped = _marks_kept(users, marks, spore_of)
        placed.insert(index, Stage(f"user:{extra.label()}", piped))
    return placed


class _Marks:
    """The marks (``mark_of``) of the spores a user's stage holds, by id: a
    copy it passes on or rejects gets the mark of the spore it took with that id."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, list[int]] = {}

    def took(self, spore: Spore) -> None:
        mark = mark_of(spore)
        if mark:
            self._held.setdefault(_key(spore), []).append(mark)

    def gave(self, spore: Spore) -> None:
        key = _key(spore)
        marks = self._held.get(key)
        if not marks:
            return
        mark = mark_of(spore)
        if not mark:  # a copy
            mark = marks[0]
            set_mark(spore, mark)
        if mark in marks:
            marks.remove(mark)
            if not marks:
                del self._held[key]

    def rejecting(self, reject: Reject) -> Reject:
        def rejected(spore: Spore, reason: str, error: BaseException | None) -> None:
            self.gave(spore)
            reject(spore, reason, error)
        return rejected


def _key(spore: Spore) -> str:
    """The id a spore is known by in :class:`_Marks` (not yet validated: any value)."""
    return spore.id if type(spore.id) is str else f"{type(spore.id).__name__}:{spore.id!r:.200}"


def _itself(spore: Spore) -> Spore:
    return spore


def _first(delivery: tuple[Spore, Any]) -> Spore:
    return delivery[0]


def _marks_kept(users: Callable[[Any], Any], marks: _Marks,
                spore_of: Callable[[Any], Spore]) -> Callable[[Any], Any]:
    """The user's piped stage ``users``, the marks of what it takes put on what it gives."""
    return lambda source: _noting(users(_noting(source, marks.took, spore_of)), marks.gave,
                                  spore_of)


@pipable_operator
async def _noting(source: AsyncIterable[list[Any]], note: Callable[[Spore], None],
                  spore_of: Callable[[Any], Spore]) -> AsyncIterator[list[Any]]:
    """``source``'s batches as they are, each item's spore told to ``note`` first."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            for item in batch:
                note(spore_of(item))
            yield batch


def assemble(source: AsyncIterable[Any], stages: Sequence[Stage]) -> Any:
    """The aiostream stream of ``source`` through ``stages``, in order."""
    chained: Any = stream.iterate(source)
    for stage in stages:
        chained = chained | stage.piped
    return chained


