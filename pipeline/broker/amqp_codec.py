"""The AMQP wire form of a spore, laid out as Praval 0.8.4's ``Spore.to_amqp_message``.

    headers   spore_id, spore_type, from_agent, to_agent, created_at, expires_at,
              priority, reply_to, version, causation_id, correlation_id
                                           (Praval's, strings)
              channel, thread_id, hops     (sporeflow's; Praval ignores them)
              each left out when empty or at its default (Praval reads it so too):
              version always (1.0), priority at 5; correlation_id when equal to
              causation_id (read back so)
    body      the knowledge as JSON; or, when the spore carries metadata or
              references, Praval's envelope {"_praval_spore_envelope": "2.0", ...}
    props     message_id, priority, timestamp, expiration (from expires_at),
              persistent delivery, content type application/json

So a Praval agent on its RabbitMQ backend reads what sporeflow publishes and the
other way round. Decoding checks every field and raises only :class:`SporeError`:
whatever arrives from a broker is untrusted. Naive timestamps (Praval writes
``datetime.now()``) are read as local time, as Praval means them.

This module does not import aio-pika (nor, until a delivery's headers are forwarded,
pamqp: the base install has neither): properties are a plain dict of keyword
arguments for ``aio_pika.Message`` (``amqp_outbound`` builds aiormq's from the same
fields, with :func:`spore_body_headers` and :func:`expiration_ms`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sporeflow.config.errors import LimitExceeded, SporeError
from sporeflow.pipeline.broker.amqp_properties import UNREADABLE_HEADER, guard_properties
from sporeflow.pipeline.broker.amqp_timestamps import guard_timestamps
from sporeflow.steps import DEFAULT_CHANNEL, Spore, utc_now
from sporeflow.steps.spore import PRIORITY_DEFAULT

# Every path that reads AMQP frames imports this codec: pamqp's reader is made safe here.
guard_timestamps()
guard_properties()

__all__ = ["CONTENT_TYPE", "MAX_HEADERS_BYTES", "PERSISTENT", "SIGNATURE_HEADER",
           "WIRE_VERSION", "expiration_ms", "forwardable_headers", "headers_size",
           "spore_body_headers", "spore_from_amqp", "spore_to_amqp"]

WIRE_VERSION = "1.0"  # Praval's schema_version of the layout
SIGNATURE_HEADER = "x-sporeflow-signature"
_ENVELOPE_KEY, _ENVELOPE_VERSION = "_praval_spore_envelope", "2.0"
_MAX_HEADER_CHARS = 1024
# A spore's own headers are a dozen short fields; tracing and dead-letter headers add a few.
MAX_HEADERS_BYTES = 64 * 1024
_MiB = 1024 * 1024
CONTENT_TYPE = "application/json"
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def spore_to_amqp(
    spore: Spore, *, now: datetime | None = None,
) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """Return ``(body, headers, properties)`` for publishing ``spore``.

    ``properties["expiration"]`` is the seconds left until ``expires_at`` (0 when it
    has passed: the broker dead-letters it at once), absent without ``expires_at``.
    """
    body, headers = spore_body_headers(spore)
    properties: dict[str, Any] = {
        "message_id": spore.id, "priority": spore.priority, "timestamp": spore.created_at,
        "content_type": CONTENT_TYPE, "delivery_mode": PERSISTENT,
    }
    if spore.expires_at is not None:
        properties["expiration"] = timedelta(seconds=_seconds_left(spore, now))
    return body, headers, properties


def spore_body_headers(spore: Spore) -> tuple[bytes, dict[str, Any]]:
    """The body and headers of ``spore`` (its properties: see :func:`spore_to_amqp`)."""
    if spore.metadata or spore.knowledge_references or spore.data_references:
        payload: Any = {
            _ENVELOPE_KEY: _ENVELOPE_VERSION, "knowledge": spore.knowledge,
            "payload": spore.knowledge, "metadata": spore.metadata, "content_parts": [],
            "knowledge_references": list(spore.knowledge_references),
            "data_references": list(spore.data_references), "trace_context": {},
        }
    else:
        payload = spore.knowledge
    try:
        body = _dumps(payload).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise SporeError(f"spore {spore.id} cannot be written as JSON: {exc}") from None
    # Each header costs the client, the broker and the consumer a table entry to encode
    # or decode: empty and default ones are left out (both decoders, ours and Praval's,
    # read a missing header as its default: priority 5, version WIRE_VERSION).
    headers: dict[str, Any] = {
        "spore_id": spore.id,
        "spore_type": spore.spore_type.value,
        "from_agent": spore.from_agent,
        "created_at": spore.created_at.isoformat(),
    }
    if spore.priority != PRIORITY_DEFAULT:
        headers["priority"] = str(spore.priority)
    if spore.to_agent is not None:
        headers["to_agent"] = spore.to_agent
    if spore.expires_at is not None:
        headers["expires_at"] = spore.expires_at.isoformat()
    if spore.reply_to is not None:
        headers["reply_to"] = spore.reply_to
    if spore.channel != DEFAULT_CHANNEL:
        headers["channel"] = spore.channel
    if spore.thread_id is not None:
        headers["thread_id"] = spore.thread_id
    if spore.hops:
        headers["hops"] = spore.hops
    # The lineage, under Praval's header names. A correlation id equal to the causation id
    # (the parent is a root without one) is left out: Praval pairs a response with its
    # request only when their correlation ids are equal, and its root request has none.
    causation, correlation = spore.causation_id, spore.correlation_id
    if causation is not None:
        headers["causation_id"] = causation
    if correlation is not None and correlation != causation:
        headers["correlation_id"] = correlation
    return body, headers


def expiration_ms(spore: Spore, now: datetime | None = None) -> str:
    """The AMQP ``expiration`` property of a spore with ``expires_at``: milliseconds left,
    as text (what aio-pika makes of :func:`spore_to_amqp`'s ``timedelta``)."""
    return str(int(_seconds_left(spore, now) * 1000))


def _seconds_left(spore: Spore, now: datetime | None) -> float:
    assert spore.expires_at is not None
    return max((spore.expires_at - (now or utc_now())).total_seconds(), 0.0)


def spore_from_amqp(body: bytes, headers: Mapping[str, Any], *,
                    max_spore_bytes: int | None = None) -> Spore:
    """Decode a spore from an AMQP body and headers; raise only :class:`SporeError`.

    With ``max_spore_bytes``, a message too large to hold a spore within that limit is
    refused (:class:`LimitExceeded`) before a byte of it is parsed: parsing JSON takes
    many times its size in memory.
    """
    try:
        if max_spore_bytes is not None:
            _check_sizes(body, headers, max_spore_bytes)
        return _decode(body, headers)
    except SporeError:
        raise
    except Exception as exc:  # untrusted input: any surprise is a bad spore
        raise SporeError(f"AMQP message is not a spore: {type(exc).__name__}: {exc}") from None


def _check_sizes(body: bytes, headers: Mapping[str, Any], max_spore_bytes: int) -> None:
    # Praval's envelope carries the knowledge twice ("knowledge" and "payload"): a body up
    # to twice the limit may hold a spore within it, which the validate stage measures.
    size = len(body)
    if size > 2 * max_spore_bytes:
        named = headers.get("spore_id") if isinstance(headers, Mapping) else None
        raise LimitExceeded(
            f"AMQP message of spore {str(named)[:80]!r} is too large: its body "
            f"is {size} bytes ({size / _MiB:.1f} MiB), and a spore within "
            f"limits.max_spore_bytes={max_spore_bytes} has a body of at most "
            f"{2 * max_spore_bytes} bytes; refused unread")
    if isinstance(headers, Mapping) and headers_size(headers, MAX_HEADERS_BYTES) > (
            MAX_HEADERS_BYTES):
        raise LimitExceeded(f"AMQP message is too large: its headers hold over "
                            f"{MAX_HEADERS_BYTES} bytes; refused unread")


def headers_size(value: Any, budget: int) -> int:
    """``value``'s size in bytes, roughly; counting stops once past ``budget``."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if type(value) is dict:  # a decoded table: text keys, mostly text and number values
        total = 0
        for key, item in value.items():
            kind = type(item)
            total += len(key) if type(key) is str else headers_size(key, budget - total)
            if kind is str or kind is bytes:
                total += len(item)
            elif kind is int or kind is bool or kind is float or item is None:
                total += 8
            else:
                total += headers_size(item, budget - total)
            if total > budget:
                break
        return total
    if isinstance(value, Mapping):
        items: Any = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple):
        items = value
    else:
        return 8
    total = 0
    for item in items:
        total += headers_size(item, budget - total)
        if total > budget:
            break
    return total


def forwardable_headers(found: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers of a delivery, to go with it to the dead-letter queue: all of them, or,
    when they may not fit in one frame with ours added, or cannot be written back (pamqp
    reads some values it cannot write: text that is no UTF-8, a double past a float's
    range), only their count. Raising here would leave the delivery unsettled, its agent
    stalled on it."""
    from pamqp import encode  # aio-pika's: only a broker's delivery comes here

    headers = dict(found or {})
    if headers_size(headers, MAX_HEADERS_BYTES) > MAX_HEADERS_BYTES:
        return {"x-sporeflow-headers-dropped": len(headers)}
    try:
        encode.field_table(headers)
    except Exception:  # noqa: BLE001 - untrusted: whatever the encoder refuses
        return {"x-sporeflow-headers-dropped": len(headers)}
    return headers


def _decode(body: bytes, headers: Mapping[str, Any]) -> Spore:
    if not isinstance(headers, Mapping):
        raise SporeError(f"AMQP headers must be a table, got {type(headers).__name__}")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise SporeError(f"AMQP body must be bytes, got {type(body).__name__}")
    if UNREADABLE_HEADER in headers:  # amqp_properties: pamqp could not read them
        raise SporeError(f"AMQP message's properties could not be read "
                         f"({_text(headers, UNREADABLE_HEADER)}); its sender must write "
                         f"header keys and text properties as UTF-8")
    try:
        payload = json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        raise SporeError(f"AMQP body of spore {_text(headers, 'spore_id')!r} is not JSON: "
                         f"{exc}") from None
    fields: dict[str, Any] = {}
    if isinstance(payload, dict) and payload.get(_ENVELOPE_KEY) == _ENVELOPE_VERSION:
        knowledge = payload.get("knowledge")
        fields["knowledge"] = {} if knowledge is None else knowledge
        for name in ("metadata", "knowledge_references", "data_references"):
            if payload.get(name):
                fields[name] = payload[name]
    else:
        fields["knowledge"] = payload
    for name, field in _REQUIRED:
        value = _text(headers, name)
        if not value:
            raise SporeError(f"AMQP header {name!r} is missing or empty; a spore needs "
                             f"spore_id, spore_type and from_agent")
        fields[field] = value
    for name in _OPTIONAL:  # most are left out: looked up once each
        if headers.get(name) is not None:
            value = _text(headers, name)
            if value:
                fields[name] = _timestamp(name, value) if name in _TIMES else value
    for name in _NUMBERS:
        if headers.get(name) is not None:
            number = _number(headers, name)
            if number is not None:
                fields[name] = number
    if "causation_id" in fields and "correlation_id" not in fields:
        fields["correlation_id"] = fields["causation_id"]  # left out as equal: see above
    return Spore.from_dict(fields)


_REQUIRED = (("spore_id", "id"), ("spore_type", "spore_type"), ("from_agent", "from_agent"))
_OPTIONAL = ("to_agent", "reply_to", "thread_id", "channel", "created_at", "expires_at",
             "causation_id", "correlation_id")
_TIMES = frozenset({"created_at", "expires_at"})
_NUMBERS = ("priority", "hops")


def _text(headers: Mapping[str, Any], name: str) -> str:
    """A header as text: "" when absent; bytes are UTF-8; any other type is refused."""
    value = headers.get(name)
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode()
        except UnicodeDecodeError:
            raise SporeError(f"AMQP header {name!r} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise SporeError(f"AMQP header {name!r} must be text, got {value!r:.60}")
    if len(value) > _MAX_HEADER_CHARS:
        raise SporeError(f"AMQP header {name!r} is {len(value)} characters long; at most "
                         f"{_MAX_HEADER_CHARS}")
    return value


def _number(headers: Mapping[str, Any], name: str) -> int | None:
    """An integer header, written as a number (sporeflow) or as digits (Praval)."""
    value = headers.get(name)
    if value is None or value == "" or value == b"":
        return None
    if type(value) is int:
        return value
    text = _text(headers, name).strip()
    if not text.lstrip("-").isdigit() or len(text) > 9:
        raise SporeError(f"AMQP header {name!r} is {text!r:.40}; use an integer")
    return int(text)


def _timestamp(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SporeError(f"AMQP header {name!r} is {text!r:.60}; use an ISO 8601 "
                         f"timestamp") from None
    # A naive timestamp is local time (Praval's datetime.now()); astimezone reads it so.
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        raise SporeError(f"AMQP header {name!r} is {text!r:.60}, out of range") from None
