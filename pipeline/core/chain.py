"""The declared chain: a list of named aiostream stages, assembled in one place.

    source ─▶ validate ─▶ expire ─▶ [budget] ─▶ route ─▶ schema ─▶ [journal] ─▶ dispatch

The organism declares its stages as :class:`Stage` values; users insert their own
(:class:`~sporeflow.config.StageSpec`, from Python or ``pipeline.stages`` in
organism.yaml) before or after a named one. A user stage is a pipable operator over
batches (lists) of spores before ``route``, or over batches of deliveries
(``(spore, targets)``) after it. It must pass on or ``reject`` every spore it takes:
``reject(spore, reason, error)`` dead-letters and settles it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiostream import stream

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
    route,
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
        piped = extra.operator.pipe(reject=reject, **dict(extra.options))
        placed.insert(index, Stage(f"user:{extra.label()}", piped))
    return placed


def assemble(source: AsyncIterable[Any], stages: Sequence[Stage]) -> Any:
    """The aiostream stream of ``source`` through ``stages``, in order."""
    chained: Any = stream.iterate(source)
    for stage in stages:
        chained = chained | stage.piped
    return chained


