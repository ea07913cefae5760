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

from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiostream import stream

from sporeflow.config import ConfigError, Problem, StageSpec
from sporeflow.config.reasons import did_you_mean
from sporeflow.steps import Reject

__all__ = ["Stage", "assemble", "place"]


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the chain: ``piped`` is an operator's ``.pipe(...)``, ready to apply."""

    name: str
    piped: Any


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


