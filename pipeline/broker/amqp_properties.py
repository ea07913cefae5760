"""A message whose properties pamqp cannot read, read as one that says so.

RabbitMQ passes a message's properties on unchecked, and pamqp (4.0.1) cannot read some
that any client may write: a header key or a short-string property (``content_type``,
``message_id``...) that is no UTF-8, header tables nested past Python's recursion limit.
Its reader raises, aiormq closes the connection (``InvalidFrameError``, or a
``RecursionError`` out of its reader task), and the message, never acked, comes back at
the reconnection and closes it again, for ever: every agent of the process stops
consuming, and ``dlq`` cannot read a dead-letter queue holding one.

The content header's first 12 bytes (class, weight, body size) are fixed and the frame's
length is known before pamqp reads it, so the stream stays in step whatever the
properties hold. With :func:`guard_properties`, properties that cannot be read are
replaced by the one header :data:`UNREADABLE_HEADER`, saying why: the message is
delivered as any other, and the codec refuses it as no spore (a dead letter, reason
``invalid``), which ``dlq`` lists and purges like any letter.
"""

from __future__ import annotations

from pamqp import commands, header

__all__ = ["UNREADABLE_HEADER", "guard_properties"]

UNREADABLE_HEADER = "x-sporeflow-unreadable-properties"

_read = header.ContentHeader.unmarshal
_MAX_WHY = 300


def _unmarshal(self: header.ContentHeader, data: bytes) -> None:
    try:
        _read(self, data)
    except Exception as exc:  # noqa: BLE001 - untrusted: whatever pamqp cannot read
        if len(data) < 12:
            raise  # no body size: the frame itself is broken, pamqp's error stands
        why = f"{type(exc).__name__}: {exc}"[:_MAX_WHY]
        self.properties = commands.Basic.Properties(headers={UNREADABLE_HEADER: why})


def guard_properties() -> None:
    """Make pamqp read a content header whose properties it cannot read as one holding
    only :data:`UNREADABLE_HEADER`, instead of raising."""
    header.ContentHeader.unmarshal = _unmarshal  # type: ignore[method-assign]
