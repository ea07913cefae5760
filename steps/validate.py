"""validate: refuse spores that are malformed or break the organism's limits."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import LimitExceeded, SporeError
from sporeflow.config.model import Limits
from sporeflow.config.schemas import SCHEMA_REASON, SchemaViolation
from sporeflow.steps.spore import PRIORITY_MAX, PRIORITY_MIN, Spore, SporeType
from sporeflow.steps.types import Batch, Reject

__all__ = ["check_sent_spore", "check_spore", "validate"]

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
    verify: SchemaCheck | None = None,
    checked: set[int] | None = None,
) -> AsyncIterator[Batch]:
    """Pass on the spores that are well formed and within limits; reject the rest.

    ``verify`` runs on each well-formed spore (the broker consumer passes a signature
    check); it raises a :class:`SporeError` whose ``reason`` names the dead-letter reason.
    ``checked`` holds the ``id()`` of spores that passed :func:`check_spore` where they
    entered and are held unchanged since: each is checked once, not twice.
    """
    schemas = schemas if schemas is not None else {}
    checked = checked if checked is not None else set()
    async with streamcontext(source) as batches:
        async for batch in batches:
            valid = []
            for spore in batch:
                try:
                    if checked and id(spore) in checked:
                        checked.discard(id(spore))
                    else:
                        check_spore(spore, limits)
                    if verify is not None:
                        verify(spore)
                    target = spore.to_agent
                    if target is not None and target in schemas:
                        schemas[target](spore)
                except SporeError as exc:
                    on_reject(spore, _reason(exc), exc)
                except Exception as exc:  # hostile input broke a check: refuse, never crash
                    on_reject(spore, "invalid", exc)
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
    hops = spore.hops
    if type(hops) is not int or hops < 0:
        raise SporeError(f"hops must be an integer >= 0, got {hops!r:.40}")
    if hops > limits.max_hops:
        raise LimitExceeded(
            f"spore {spore.id} made {hops} hops, over limits.max_hops={limits.max_hops}")
    # Names and the fields later stages compare or hash: one quick test for the common
    # case, the detailed checks (and their messages) only when it fails.
    from_agent, channel, to_agent = spore.from_agent, spore.channel, spore.to_agent
    if not (type(from_agent) is str and 0 < len(from_agent) <= MAX_NAME_LENGTH
            and type(channel) is str and 0 < len(channel) <= MAX_NAME_LENGTH
            and (to_agent is None or (type(to_agent) is str
                                      and 0 < len(to_agent) <= MAX_NAME_LENGTH))):
        _check_name("from_agent", from_agent)
        _check_name("channel", channel)
        if to_agent is not None:
            _check_name("to_agent", to_agent)
    spore_id, expires_at, reply_to = spore.id, spore.expires_at, spore.reply_to
    if not (type(spore_id) is str and spore_id and type(spore.metadata) is dict
            and (expires_at is None or type(expires_at) is datetime)
            and (reply_to is None or type(reply_to) is str)) or (
            expires_at is not None and expires_at.utcoffset() is None):
        _check_fields_the_chain_reads(spore)
    _check_size(spore, limits)


def check_sent_spore(spore: Spore, limits: Limits) -> None:
    """:func:`check_spore` for a spore built from a sender's arguments (``Organism.send``,
    ``broadcast``): the fields the builder filled in are right by construction, so only
    the sender's are tested, quickly, and the knowledge measured; should the quick test
    fail, ``check_spore`` names what is wrong."""
    priority, sender, channel = spore.priority, spore.from_agent, spore.channel
    if (type(priority) is int and PRIORITY_MIN <= priority <= PRIORITY_MAX
            and type(sender) is str and 0 < len(sender) <= MAX_NAME_LENGTH
            and type(channel) is str and 0 < len(channel) <= MAX_NAME_LENGTH):
        _check_size(spore, limits)
    else:
        check_spore(spore, limits)


def _check_size(spore: Spore, limits: Limits) -> None:
    """Raise unless ``spore``'s knowledge and metadata are JSON within the size and depth
    limits (the part of a check that a spore's own fields cannot vouch for)."""
    size = _ENVELOPE_BYTES + _bound(spore.knowledge, limits.max_depth, 1)
    if spore.metadata:
        size += _bound(spore.metadata, limits.max_depth, 1)
    if size > limits.max_spore_bytes:
        # The bound is loose for long strings: measure exactly before refusing.
        size = len(spore.to_json().encode("utf-8", "surrogatepass"))
        if size > limits.max_spore_bytes:
            raise LimitExceeded(
                f"spore {spore.id} is {size} bytes as JSON, over "
                f"limits.max_spore_bytes={limits.max_spore_bytes} "
                f"({_human(size)} > {_human(limits.max_spore_bytes)})")


def _check_fields_the_chain_reads(spore: Spore) -> None:
    """Refuse values that would break a later stage (compare, hash) rather than the spore."""
    if type(spore.id) is not str or not spore.id:
        raise SporeError(f"id must be a non-empty string, got {spore.id!r:.80}")
    expires_at = spore.expires_at
    if expires_at is not None and (type(expires_at) is not datetime
                                   or expires_at.utcoffset() is None):
        raise SporeError(f"expires_at must be a timezone-aware datetime, got "
                         f"{expires_at!r:.80}; use datetime.now(UTC) + timedelta(...)")
    if spore.reply_to is not None and type(spore.reply_to) is not str:
        raise SporeError(f"reply_to must be a spore id (a string), got {spore.reply_to!r:.80}")
    if type(spore.metadata) is not dict:
        raise SporeError(f"metadata must be a JSON object (dict), got {spore.metadata!r:.80}")


def _human(size: int) -> str:
    """``size`` bytes for people: ``1 MiB``, ``2.1 MiB``, ``512 KiB``, ``900 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} B"


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
    reason = getattr(exc, "reason", None)  # e.g. "bad signature" from the verify hook
    if type(reason) is str:
        return reason
    if isinstance(exc, SchemaViolation):
        return SCHEMA_REASON
    return "limit exceeded" if isinstance(exc, LimitExceeded) else "invalid"
