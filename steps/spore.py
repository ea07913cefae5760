"""The spore: the one message type that flows through the chain.

Field names follow Praval's ``Spore`` so that its users feel at home and the
wire forms can interoperate. A spore is immutable and slotted; it is created
on the hot path, so construction does no validation: the ``validate`` step
does that once, where spores enter. ``from_dict``/``from_json`` validate
fully and raise only :class:`SporeError`.

Lineage: ``causation_id`` is the id of the spore whose handling produced this one (None
for a root), ``correlation_id`` its conversation (see :attr:`Spore.conversation`); what
handlers produce gets both where it is made (``steps.replies``, the handler's context).
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
import os
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sporeflow.config.errors import SporeError
from sporeflow.steps.envelope import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    fields_to_xml,
    xml_to_fields,
)

__all__ = [
    "DEFAULT_CHANNEL",
    "SPORE_CLOCK",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "JSONObject",
    "Spore",
    "SporeType",
    "Unreadable",
    "new_spore",
    "new_spore_id",
    "TEXT_FIELDS",
    "spore_as_found",
    "spore_texts",
    "spore_values",
    "spore_from_values",
    "spore_from_xml",
    "spore_to_xml",
]

JSONObject = dict[str, Any]
DEFAULT_CHANNEL = "main"
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 1, 10, 5


class SporeType(StrEnum):
    KNOWLEDGE = "knowledge"
    REQUEST = "request"
    RESPONSE = "response"
    BROADCAST = "broadcast"
    NOTIFICATION = "notification"


# Ids are a random per-process prefix plus a counter: unique across processes,
# and far cheaper than uuid4 on the hot path (a decimal counter formats fastest).
_ID_PREFIX = os.urandom(6).hex() + "-"
_id_counter = itertools.count(1)


def new_spore_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter)}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# The wall clock a spore's ``created_at`` is read from when none is given: the
# organism's own (a TestOrganism's virtual one) in its chain's task and in each runner
# serving its lanes (they set it: what handlers make, returned, yielded or sent, is
# stamped here), the machine's elsewhere. Outside sends and sources, made in their
# caller's task, pass the organism's time themselves.
SPORE_CLOCK: ContextVar[Callable[[], datetime]] = ContextVar("SPORE_CLOCK", default=_utcnow)
_clock_now = SPORE_CLOCK.get


class _Local:
    """What this process keeps with a spore object and never sends: the monotonic
    deadline the expire stage gives it (see :mod:`sporeflow.steps.expire`); whether it
    was checked where it entered, so that the validate stage need not measure it again
    (``set_checked``); and a holder's mark (``mark_of``: the broker bridge's key for the
    delivery it came in). Not fields: no part of the spore's value, equality, repr,
    copies or any serialized form. Kept on the object rather than in a set of ``id()``:
    an id is reused once its object is freed, and the intake's paging makes a new
    object (the spill carries the mark, and drops the check: read back, it is checked
    again)."""

    __slots__ = ("_deadline", "_checked", "_mark")
    _deadline: float
    _checked: bool
    _mark: int


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Spore(_Local):
    """One message: knowledge with a type, a sender and a destination."""

    knowledge: JSONObject
    spore_type: SporeType = SporeType.KNOWLEDGE
    from_agent: str = "system"
    to_agent: str | None = None
    channel: str = DEFAULT_CHANNEL
    priority: int = PRIORITY_DEFAULT
    expires_at: datetime | None = None
    reply_to: str | None = None
    thread_id: str | None = None
    hops: int = 0
    causation_id: str | None = None
    correlation_id: str | None = None
    metadata: JSONObject = field(default_factory=dict)
    knowledge_references: tuple[str, ...] = ()
    data_references: tuple[str, ...] = ()
    id: str = field(default_factory=new_spore_id)
    created_at: datetime = field(default_factory=_utcnow)

    # Built in __new__ rather than by a generated __init__: a frozen dataclass sets each
    # field through object.__setattr__, which makes construction, done for every spore
    # and reply, the costliest step of a delivery. A _Draft has the same slots without
    # the frozen __setattr__; filled with plain stores, it then becomes a Spore.
    def __new__(
        cls,
        *,
        knowledge: JSONObject,
        spore_type: SporeType = SporeType.KNOWLEDGE,
        from_agent: str = "system",
        to_agent: str | None = None,
        channel: str = DEFAULT_CHANNEL,
        priority: int = PRIORITY_DEFAULT,
        expires_at: datetime | None = None,
        reply_to: str | None = None,
        thread_id: str | None = None,
        hops: int = 0,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        metadata: JSONObject | None = None,
        knowledge_references: tuple[str, ...] = (),
        data_references: tuple[str, ...] = (),
        id: str | None = None,
        created_at: datetime | None = None,
    ) -> Spore:
        draft = _Draft()
        draft.knowledge = knowledge
        draft.spore_type = spore_type
        draft.from_agent = from_agent
        draft.to_agent = to_agent
        draft.channel = channel
        draft.priority = priority
        draft.expires_at = expires_at
        draft.reply_to = reply_to
        draft.thread_id = thread_id
        draft.hops = hops
        draft.causation_id = causation_id
        draft.correlation_id = correlation_id
        draft.metadata = {} if metadata is None else metadata
        draft.knowledge_references = knowledge_references
        draft.data_references = data_references
        draft.id = new_spore_id() if id is None else id
        draft.created_at = _clock_now()() if created_at is None else created_at
        draft._checked = False
        draft._mark = 0
        if cls is Spore:
            draft.__class__ = Spore  # type: ignore[assignment]  # same slots: allowed
            return draft  # type: ignore[return-value]
        return _subclass_instance(cls, draft)

    def __reduce__(self) -> tuple[Any, ...]:
        # copy and pickle rebuild through __new__, which takes the fields by keyword.
        return _rebuild, (type(self), {name: getattr(self, name) for name in _FIELD_ORDER})

    @property
    def conversation(self) -> str:
        """The correlation id this spore's replies and sends carry: its own
        ``correlation_id``, or its id when it has none (a root starts one)."""
        return self.correlation_id or self.id

    @property
    def thread(self) -> str:
        """The conversation this spore belongs to (its own id when it starts one)."""
        return self.thread_id or self.id

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or _utcnow())

    def to_dict(self) -> JSONObject:
        """Return the JSON form: datetimes as ISO 8601 strings, the type as its value."""
        return {
            "id": self.id,
            "spore_type": self.spore_type.value,
            "from_agent": self.from_agent,
            "to_agent": self.to_agent,
            "channel": self.channel,
            "knowledge": self.knowledge,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "priority": self.priority,
            "reply_to": self.reply_to,
            "thread_id": self.thread_id,
            "hops": self.hops,
            "causation_id": self.causation_id,
            "correlation_id": self.correlation_id,
            "metadata": self.metadata,
            "knowledge_references": list(self.knowledge_references),
            "data_references": list(self.data_references),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def to_xml(self) -> bytes:
        """The canonical XML envelope (see :mod:`sporeflow.steps.envelope`)."""
        return fields_to_xml(self.to_dict())

    @classmethod
    def from_xml(cls, data: str | bytes) -> Spore:
        """Decode an XML envelope; raise :class:`SporeError` on any malformed input."""
        return spore_from_xml(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Spore:
        """Decode a spore from JSON; raise :class:`SporeError` on any malformed input."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise SporeError(f"spore JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> Spore:
        """Build a spore from its JSON form, checking every field."""
        if not isinstance(data, Mapping):
            raise SporeError(f"a spore must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - _FIELD_NAMES
        if unknown:
            raise SporeError(
                f"unknown spore field(s) {sorted(map(str, unknown))!r}; "
                f"the fields are {sorted(_FIELD_NAMES)!r}"
            )
        if "knowledge" not in data:
            raise SporeError("spore field 'knowledge' is missing; add a JSON object")
        fields: dict[str, Any] = {}
        for name, value in data.items():
            decode = _DECODERS[name]
            if value is None and name in _NULLABLE:
                continue
            fields[name] = decode(name, value)
        return cls(**fields)


# -- field decoders: each checks one field and names it in its error ---------


_FIELD_ORDER = Spore.__slots__
# Sets a spore's monotonic deadline (for the expire stage only): the slot's own setter,
# since a frozen dataclass refuses every assignment.
set_deadline: Callable[[Spore, float], None] = _Local.__dict__["_deadline"].__set__
# Marks a spore checked (True), or takes the mark off (False); the validate stage reads
# the slot (``_checked``, unset: False) and takes it off.
set_checked: Callable[[Spore, bool], None] = _Local.__dict__["_checked"].__set__
# Puts a holder's mark on a spore (the broker bridge's key): see mark_of().
set_mark: Callable[[Spore, int], None] = _Local.__dict__["_mark"].__set__


def mark_of(spore: Spore) -> int:
    """The mark a holder put on ``spore`` (a positive number; 0: none)."""
    return getattr(spore, "_mark", 0)


# A spore's fields as a tuple, in slot order, and back: a compact, fast form for the
# intake's disk spill (the values are a spore's own, already made; nothing is checked).
spore_values: Callable[[Spore], tuple[Any, ...]] = operator.attrgetter(*_FIELD_ORDER)


# A spore's names and ids, which validation holds to be text UTF-8 can write.
TEXT_FIELDS = ("id", "from_agent", "to_agent", "channel", "reply_to", "thread_id",
               "causation_id", "correlation_id")
spore_texts: Callable[[Spore], tuple[Any, ...]] = operator.attrgetter(*TEXT_FIELDS)


def spore_from_values(values: tuple[Any, ...], mark: int = 0) -> Spore:
    """The :class:`Spore` whose :func:`spore_values` are ``values``, with ``mark``
    (not checked: what made the values may have changed them)."""
    draft = _Draft()
    for name, value in zip(_FIELD_ORDER, values, strict=True):
        setattr(draft, name, value)
    draft._checked = False
    draft._mark = mark
    draft.__class__ = Spore  # type: ignore[assignment]  # same slots: allowed
    return draft  # type: ignore[return-value]


# ``Spore(...)``, for the paths that make a spore per message: calling __new__ directly
# skips type.__call__, which packs the keywords into a dict and then runs
# object.__init__, a quarter of the cost of making a spore.
new_spore = functools.partial(Spore.__new__, Spore)


def spore_to_xml(spore: Spore) -> bytes:
    """The canonical (C14N 2.0) XML envelope of ``spore``."""
    return spore.to_xml()


def spore_from_xml(data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_depth: int = DEFAULT_MAX_DEPTH) -> Spore:
    """Decode an XML envelope, checking every field; raise only :class:`SporeError`."""
    return Spore.from_dict(xml_to_fields(data, max_bytes=max_bytes, max_depth=max_depth))


def spore_as_found(data: object) -> Spore:
    """A spore from its JSON form as stored (a journal's row), checking nothing: each
    field is decoded where it decodes and kept as found where not, for the validate
    stage to refuse it naming that field, as it would any malformed spore.

    Raises :class:`SporeError` only for what holds no spore at all: not an object, or
    fields a spore does not have.
    """
    if not isinstance(data, Mapping):
        raise SporeError(f"a spore must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - _FIELD_NAMES
    if unknown:
        raise SporeError(f"unknown spore field(s) {sorted(map(str, unknown))!r}")
    fields: dict[str, Any] = {"knowledge": None}
    found: dict[str, Any] = {}
    for name, value in data.items():
        if value is None and name in _NULLABLE:
            continue
        try:
            fields[name] = _DECODERS[name](name, value)
        except SporeError:
            found[name] = value
    spore = new_spore(**fields)
    for name, value in found.items():  # set after: the constructor would replace a None id
        object.__setattr__(spore, name, value)
    return spore


class Unreadable(Spore):
    """Stands for stored data that holds no spore (a journal row that is none), so that it
    takes the one path like any spore: the validate stage refuses it with ``problem``.
    Its knowledge is the data as found, kept with its dead letter (a copy of it, as the
    intake's disk spill makes, is still refused: its knowledge is no object)."""

    __slots__ = ("problem",)
    problem: SporeError

    @classmethod
    def of(cls, problem: SporeError, *, id: str, data: str) -> Unreadable:
        spore = cast(Unreadable, Spore.__new__(cls, knowledge=cast(Any, data), id=id))
        object.__setattr__(spore, "problem", problem)
        return spore


class _Draft(_Local):
    """A Spore under construction: its slots, writable (see ``Spore.__new__``)."""

    __slots__ = _FIELD_ORDER
    knowledge: JSONObject
    spore_type: SporeType
    from_agent: str
    to_agent: str | None
    channel: str
    priority: int
    expires_at: datetime | None
    reply_to: str | None
    thread_id: str | None
    hops: int
    causation_id: str | None
    correlation_id: str | None
    metadata: JSONObject
    knowledge_references: tuple[str, ...]
    data_references: tuple[str, ...]
    id: str
    created_at: datetime


def _subclass_instance(cls: type[Spore], draft: _Draft) -> Spore:
    """A subclass may add slots or a __dict__: copy the fields over one by one."""
    spore = object.__new__(cls)
    for name in _FIELD_ORDER:
        object.__setattr__(spore, name, getattr(draft, name))
    return spore


def _rebuild(cls: type[Spore], fields: dict[str, Any]) -> Spore:
    return cls(**fields)


def _str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise SporeError(f"spore field {name!r} must be a non-empty string, got {value!r}")
    return value


def _spore_type(name: str, value: object) -> SporeType:
    try:
        return SporeType(value)  # type: ignore[arg-type]  # any value: the error says why
    except ValueError:
        choices = ", ".join(t.value for t in SporeType)
        raise SporeError(f"spore field {name!r} is {value!r}; use one of: {choices}") from None


def _object(name: str, value: object) -> JSONObject:
    if not isinstance(value, dict):
        raise SporeError(f"spore field {name!r} must be a JSON object, got {value!r:.80}")
    return value


def _priority(name: str, value: object) -> int:
    # Its range is a limit, the validate stage's (``limit exceeded``), whatever the
    # spore came from: decoded, an integer out of range is refused there, as one sent is.
    if type(value) is not int:
        raise SporeError(
            f"spore field {name!r} is {value!r:.40}; use an integer from "
            f"{PRIORITY_MIN} to {PRIORITY_MAX}"
        )
    return value


def _hops(name: str, value: object) -> int:
    if type(value) is not int or value < 0:
        raise SporeError(f"spore field {name!r} is {value!r}; use an integer >= 0")
    return value


def _timestamp(name: str, value: object) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise SporeError(
                f"spore field {name!r} is {value!r:.80}; use an ISO 8601 timestamp"
            ) from None
    else:
        raise SporeError(f"spore field {name!r} is {value!r:.80}; use an ISO 8601 timestamp")
    # Praval writes naive local-free timestamps; read them as UTC.
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before the first UTC moment
        raise SporeError(f"spore field {name!r} is {value!r:.80}, out of range in UTC; use "
                         f"a timestamp between years 1 and 9999") from None


def _references(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SporeError(f"spore field {name!r} must be a list of strings, got {value!r:.80}")
    return tuple(value)


_DECODERS: dict[str, Any] = {
    "id": _str,
    "spore_type": _spore_type,
    "from_agent": _str,
    "to_agent": _str,
    "channel": _str,
    "knowledge": _object,
    "created_at": _timestamp,
    "expires_at": _timestamp,
    "priority": _priority,
    "reply_to": _str,
    "thread_id": _str,
    "hops": _hops,
    "causation_id": _str,
    "correlation_id": _str,
    "metadata": _object,
    "knowledge_references": _references,
    "data_references": _references,
}
_FIELD_NAMES = frozenset(_DECODERS)
_NULLABLE = frozenset({"to_agent", "expires_at", "reply_to", "thread_id", "causation_id",
                       "correlation_id"})
