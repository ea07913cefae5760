"""validate: refuse spores that are malformed or break the organism's limits."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import Any

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import LimitExceeded, SporeError
from sporeflow.config.json_shape import (
    JSON_SCALARS,
    first_not_json,
    lone_surrogate,
    long_integer,
    utf8_writable,
)
from sporeflow.config.model import Limits
from sporeflow.config.reasons import reason_of
from sporeflow.config.schemas import field_path
from sporeflow.config.words import shown, with_article
from sporeflow.steps.sizebound import check_bytes, json_size_bound
from sporeflow.steps.spore import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    TEXT_FIELDS,
    Spore,
    SporeType,
    Unreadable,
    set_checked,
)
from sporeflow.steps.types import Batch, Reject, SchemaCheck

__all__ = ["check_spore", "forget_checked", "json_size_bound", "validate"]

MAX_NAME_LENGTH = 128
# A lineage id names another spore: bounded as the AMQP codec bounds every header, so a
# spore that passes here crosses a broker too.
MAX_LINEAGE_ID_LENGTH = 1024
_SCALARS = JSON_SCALARS
_SHOWN = 40  # characters of a value a refusal quotes



@pipable_operator
async def validate(
    source: AsyncIterable[Batch],
    *,
    limits: Limits,
    on_reject: Reject,
    verify: SchemaCheck | None = None,
) -> AsyncIterator[Batch]:
    """Pass on the spores that are well formed and within limits; reject the rest.

    ``verify`` runs on each well-formed spore (a signature check, when signing is on);
    it raises a :class:`SporeError` whose ``reason`` names the dead-letter reason.
    A spore marked checked (``set_checked``: it passed :func:`check_spore` where it
    entered, for a sender that must hear of a refusal at once) is checked once, not
    twice: the mark is taken off here.
    """
    async with streamcontext(source) as batches:
        async for batch in batches:
            valid = []
            for spore in batch:
                try:
                    if getattr(spore, "_checked", False):  # set where it entered (set_checked)
                        set_checked(spore, False)
                    else:
                        check_spore(spore, limits)
                    if verify is not None:
                        verify(spore)
                except Exception as exc:  # hostile input broke a check: refuse, never crash
                    on_reject(spore, reason_of(exc), exc)
                else:
                    valid.append(spore)
            if valid:
                yield valid


@pipable_operator
async def forget_checked(source: AsyncIterable[Batch]) -> AsyncIterator[Batch]:
    """Take the checked mark off each spore: a stage of the user's before
    :func:`validate` may change what it passes on, so each is checked there again."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            for spore in batch:
                set_checked(spore, False)
            yield batch


def check_spore(spore: Any, limits: Limits, *, built: bool = False) -> None:
    """Raise :class:`SporeError` naming the field (and its bad value) or the limit that
    ``spore`` breaks: every field is checked with its type.

    ``built`` says that ``spore`` was just made by :func:`new_spore` from a sender's
    arguments (``organism.send``, ``ctx.send``): the fields the constructor set itself
    (id, timestamps, lineage, metadata, references) are right by construction, and only
    the sender's are tested.
    """
    if spore.__class__ is not Spore:
        problem = getattr(spore, "problem", None) if isinstance(spore, Unreadable) else None
        if problem is not None:  # stored data that held no spore: why it did not
            raise problem
        raise SporeError(f"expected a Spore, got {type(spore).__name__}")
    # One quick test for the common case; the detailed checks (and their messages)
    # only when it fails. First the fields a sender gives, then the others. Names and ids
    # pass it in ASCII only: _explain then finds whether one is text UTF-8 cannot write
    # (a lone surrogate), which a non-ASCII name that can be written is not.
    priority, from_agent, channel, to_agent = (spore.priority, spore.from_agent, spore.channel,
                                               spore.to_agent)
    ok = (spore.knowledge.__class__ is dict and spore.spore_type.__class__ is SporeType
          and priority.__class__ is int and PRIORITY_MIN <= priority <= PRIORITY_MAX
          and from_agent.__class__ is str and 0 < len(from_agent) <= MAX_NAME_LENGTH
          and channel.__class__ is str and 0 < len(channel) <= MAX_NAME_LENGTH
          and (to_agent is None or (to_agent.__class__ is str
                                    and 0 < len(to_agent) <= MAX_NAME_LENGTH)))
    hops = spore.hops
    if not ok:
        pass
    elif built:  # a handler's send is one hop further than what it handles
        # The sender's names: a recipient is an agent's, checked where it is looked up.
        ok = hops <= limits.max_hops and from_agent.isascii() and channel.isascii()
    else:
        spore_id, expires_at, reply_to = spore.id, spore.expires_at, spore.reply_to
        created_at, thread_id = spore.created_at, spore.thread_id
        causation_id, correlation_id = spore.causation_id, spore.correlation_id
        ok = (hops.__class__ is int and 0 <= hops <= limits.max_hops
              and spore_id.__class__ is str and 0 < len(spore_id) <= MAX_LINEAGE_ID_LENGTH
              and spore.metadata.__class__ is dict
              and created_at.__class__ is datetime and created_at.tzinfo is not None
              and (expires_at is None or (expires_at.__class__ is datetime
                                          and expires_at.tzinfo is not None))
              and (reply_to is None or (reply_to.__class__ is str
                                        and len(reply_to) <= MAX_LINEAGE_ID_LENGTH
                                        and reply_to.isascii()))
              and (thread_id is None or (thread_id.__class__ is str
                                         and len(thread_id) <= MAX_LINEAGE_ID_LENGTH
                                         and thread_id.isascii()))
              and (causation_id is None or (causation_id.__class__ is str and 0 < len(
                  causation_id) <= MAX_LINEAGE_ID_LENGTH and causation_id.isascii()))
              and (correlation_id is None or (correlation_id.__class__ is str and 0 < len(
                  correlation_id) <= MAX_LINEAGE_ID_LENGTH and correlation_id.isascii()))
              and (not spore.knowledge_references or _strings(spore.knowledge_references))
              and (not spore.data_references or _strings(spore.data_references))
              and spore_id.isascii() and from_agent.isascii() and channel.isascii()
              and (to_agent is None or to_agent.isascii()))
    if not ok:
        _explain(spore, limits)
    _check_size(spore, limits)


def _strings(values: object) -> bool:
    """A tuple of ASCII strings (others: _explain tells which is wrong, if one is)."""
    return type(values) is tuple and all(type(v) is str and v.isascii() for v in values)


def _explain(spore: Spore, limits: Limits) -> None:
    """Raise the error that names what the quick test of :func:`check_spore` found."""
    if type(spore.knowledge) is not dict:
        raise SporeError(f"knowledge must be a JSON object (dict), got "
                         f"{shown(spore.knowledge, 80)}")
    if spore.spore_type.__class__ is not SporeType:
        raise SporeError(f"spore_type {shown(spore.spore_type, 40)} is not a SporeType; use one of "
                         f"{', '.join('SporeType.' + t.name for t in SporeType)}")
    priority = spore.priority
    if type(priority) is not int:  # a limit, as out of range is (its reason, its class)
        raise LimitExceeded(f"priority must be a whole number from {PRIORITY_MIN} to "
                            f"{PRIORITY_MAX}, got {shown(priority, 40)} (a "
                            f"{type(priority).__name__})")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise LimitExceeded(
            f"priority {shown(priority, 40)} is out of range; use {PRIORITY_MIN}..{PRIORITY_MAX}")
    hops = spore.hops
    if type(hops) is not int or hops < 0:
        raise SporeError(f"hops must be an integer >= 0, got {shown(hops, 40)}")
    if hops > limits.max_hops:
        raise LimitExceeded(
            f"spore {spore.id} made {hops} hops, over limits.max_hops={limits.max_hops}")
    _check_name("from_agent", spore.from_agent)
    _check_name("channel", spore.channel)
    if spore.to_agent is not None:
        _check_name("to_agent", spore.to_agent)
    if type(spore.id) is not str or not 0 < len(spore.id) <= MAX_LINEAGE_ID_LENGTH:
        raise SporeError(f"id must be a non-empty string of at most {MAX_LINEAGE_ID_LENGTH} "
                         f"characters, got {shown(spore.id, 80)}")
    for name in ("created_at", "expires_at"):
        value = getattr(spore, name)
        if (value is not None or name == "created_at") and (
                type(value) is not datetime or value.tzinfo is None):
            raise SporeError(f"{name} must be a timezone-aware datetime, got {shown(value, 80)}; "
                             f"use datetime.now(UTC) (+ timedelta(...))")
    for name in ("reply_to", "thread_id"):
        value = getattr(spore, name)
        if value is not None and (type(value) is not str or len(value) > MAX_LINEAGE_ID_LENGTH):
            raise SporeError(f"{name} must be a spore id (a string of at most "
                             f"{MAX_LINEAGE_ID_LENGTH} characters), got {shown(value, 80)}")
    for name in ("causation_id", "correlation_id"):
        value = getattr(spore, name)
        if value is not None and (type(value) is not str or not 0 < len(
                value) <= MAX_LINEAGE_ID_LENGTH):
            raise SporeError(f"{name} must be a spore id (a non-empty string of at most "
                             f"{MAX_LINEAGE_ID_LENGTH} characters) or None, got {shown(value, 80)}")
    if type(spore.metadata) is not dict:
        raise SporeError(f"metadata must be a JSON object (dict), got {shown(spore.metadata, 80)}")
    for name in ("knowledge_references", "data_references"):
        value = getattr(spore, name)
        if value and not (type(value) is tuple and all(type(v) is str for v in value)):
            raise SporeError(f"{name} must be a tuple of strings, got {shown(value, 80)}")
    for name in (*TEXT_FIELDS, "knowledge_references", "data_references"):
        value = getattr(spore, name)
        for text in value if isinstance(value, tuple) else (value,):
            if type(text) is str and not utf8_writable(text):
                raise SporeError(f"{name} {shown(text, 80)} holds {lone_surrogate(text)}")


def _check_size(spore: Spore, limits: Limits) -> None:
    """Raise unless ``spore``'s knowledge and metadata are JSON within the size and depth
    limits (the part of a check that a spore's own fields cannot vouch for)."""
    try:
        check_bytes(spore, limits)
    except LimitExceeded:
        raise
    except SporeError as exc:  # found in one walk, told with its place by another
        place = (_not_json(spore.knowledge, "knowledge", limits.max_depth)
                 or _not_json(spore.metadata, "metadata", limits.max_depth))
        raise SporeError(place or str(exc)) from None


def _not_json(value: Any, root: str, depth: int) -> str | None:
    """Where in ``value`` (under ``root``) is the first thing JSON cannot write, and what
    to do about it; None if nothing is. Walked only once ``_bound`` refused."""
    found = first_not_json(value, depth)
    if found is None:
        return None
    where, bad = field_path(found.parts, root=root), found.value
    if found.text:
        return (f"{where} has the key {shown(bad, _SHOWN)}, which holds " if found.key
                else f"{where} holds text with ") + lone_surrogate(bad)
    if found.key:
        return (f"{where} has the key {shown(bad, _SHOWN)}, "
                f"{with_article(type(bad).__name__)}: knowledge keys must be strings")
    if found.number:
        return f"{where} holds {bad!r}, which JSON cannot represent; send null or a string"
    if found.digits:
        return f"{where} holds {long_integer()}"
    name = type(bad).__name__
    hint = {"datetime": "; write it as text with .isoformat()", "set": "; make it a list",
            "frozenset": "; make it a list", "bytes": "; decode it to text"}.get(
        name, "; make it a plain dict: dict(it)" if isinstance(bad, dict)
        else "; make it a dict, a list, text or a number")
    return f"{where} holds {with_article(name)}, which is not JSON: {shown(bad, _SHOWN)}{hint}"


def _check_name(field: str, value: object) -> None:
    if type(value) is not str or not value or len(value) > MAX_NAME_LENGTH:
        raise SporeError(
            f"{field} must be a non-empty string of at most {MAX_NAME_LENGTH} characters, "
            f"got {shown(value, 80)}")


