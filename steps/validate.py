"""validate: refuse spores that are malformed or break the organism's limits."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import LimitExceeded, SporeError
from sporeflow.config.model import Limits
from sporeflow.steps.spore import PRIORITY_MAX, PRIORITY_MIN, Spore, SporeType
from sporeflow.steps.types import Batch, Reject

__all__ = ["check_spore", "validate"]

MAX_NAME_LENGTH = 128
_SCALARS = (str, int, float, bool, type(None))
# A cheap upper bound on a value's JSON size: a string may grow 6x when escaped.
_STRING_GROWTH = 6
_ENVELOPE_BYTES = 512

SchemaCheck = Callable[[Spore], None]


@pipable_operator
async def validate(
    source: AsyncIterable[Batch],
    *,
    limits: Limits,
    on_reject: Reject,
    schemas: Mapping[str, SchemaCheck] | None = None,
) -> AsyncIterator[Batch]:
    """Pass on the spores that are well formed and within limits; reject the rest."""
    schemas = schemas if schemas is not None else {}
    async with streamcontext(source) as batches:
        async for batch in batches:
            valid = []
            for spore in batch:
                try:
                    check_spore(spore, limits)
                    target = spore.to_agent
                    if target is not None and target in schemas:
                        schemas[target](spore)
                except SporeError as exc:
                    on_reject(spore, _reason(exc), exc)
                else:
                    valid.append(spore)
            if valid:
                yield valid


def check_spore(spore: Any, limits: Limits) -> None:
    """Raise :class:`SporeError` naming the field or limit that ``spore`` breaks."""
    if type(spore) is not Spore:
        raise SporeError(f"expected a Spore, got {type(spore).__name__}")
    if type(spore.knowledge) is not dict:
        raise SporeError(f"knowledge must be a JSON object (dict), got {spore.knowledge!r:.80}")
    if spore.spore_type.__class__ is not SporeType:
        raise SporeError(f"spore_type {spore.spore_type!r} is not a SporeType")
    priority = spore.priority
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise LimitExceeded(
            f"priority {priority!r} is out of range; use {PRIORITY_MIN}..{PRIORITY_MAX}")
    if spore.hops > limits.max_hops:
        raise LimitExceeded(
            f"spore {spore.id} made {spore.hops} hops, over limits.max_hops={limits.max_hops}")
    for field in ("from_agent", "channel"):
        _check_name(field, getattr(spore, field))
    if spore.to_agent is not None:
        _check_name("to_agent", spore.to_agent)
    size = _ENVELOPE_BYTES + _bound(spore.knowledge, limits.max_depth, 1)
    if spore.metadata:
        size += _bound(spore.metadata, limits.max_depth, 1)
    if size > limits.max_spore_bytes:
        # The bound is loose for long strings: measure exactly before refusing.
        size = len(spore.to_json().encode())
        if size > limits.max_spore_bytes:
            raise LimitExceeded(
                f"spore {spore.id} is {size} bytes as JSON, over "
                f"limits.max_spore_bytes={limits.max_spore_bytes}")


def _check_name(field: str, value: object) -> None:
    if type(value) is not str or not value or len(value) > MAX_NAME_LENGTH:
        raise SporeError(
            f"{field} must be a non-empty string of at most {MAX_NAME_LENGTH} characters, "
            f"got {value!r:.80}")


def _bound(value: Any, max_depth: int, depth: int) -> int:
    """Return an upper bound of ``value``'s JSON size; refuse what JSON cannot hold."""
    if depth > max_depth:
        raise LimitExceeded(f"knowledge is nested deeper than limits.max_depth={max_depth}")
    kind = type(value)
    if kind is dict:
        total = 2
        for key, item in value.items():
            if type(key) is not str:
                raise SporeError(f"knowledge keys must be strings, got {key!r:.40}")
            total += len(key) * _STRING_GROWTH + 4
            item_kind = type(item)
            if item_kind is str:
                total += len(item) * _STRING_GROWTH + 2
            elif item_kind is int or item_kind is bool or item_kind is type(None):
                total += 24
            else:
                total += _bound(item, max_depth, depth + 1)
        return total
    if kind is list or kind is tuple:
        return 2 + sum(_bound(item, max_depth, depth + 1) + 1 for item in value)
    if kind is str:
        return len(value) * _STRING_GROWTH + 2
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise SporeError(f"knowledge holds {value!r}, which JSON cannot represent")
        return 32
    if isinstance(value, _SCALARS):
        return 24
    raise SporeError(f"knowledge holds a {kind.__name__} ({value!r:.40}), which is not JSON")


def _reason(exc: SporeError) -> str:
    return "limit exceeded" if isinstance(exc, LimitExceeded) else "invalid"
