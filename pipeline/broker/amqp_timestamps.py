"""An AMQP timestamp that ``datetime`` cannot hold, read as the latest one it can.

A timestamp (a header of type ``T``, the ``timestamp`` property) is 64 bits of seconds
on the wire, and RabbitMQ passes any value on unchecked: a millisecond epoch, a Java
client's time before 1970 or a sentinel is past the year 9999. pamqp (4.0.1, its
latest) reads one with ``datetime.fromtimestamp``, which raises: the frame cannot be
read, the connection closes, and the message, never acked, comes back at the
reconnection and closes it again, for ever (aiormq's issue 186; pika fixed the same in
its pull request 1699). With :func:`guard_timestamps`, pamqp reads such a value as
9999-12-31 23:59:59 UTC and every other timestamp as before. A ``datetime`` still, not
the number: aio-pika's messages, our dead letters and what forwards them take
timestamps as datetimes only (an ``int`` made ``dlq list`` fail on the letter).
"""

from __future__ import annotations

import datetime

from pamqp import decode

__all__ = ["guard_timestamps"]

_read_timestamp = decode.timestamp


_LATEST = datetime.datetime.max.replace(microsecond=0, tzinfo=datetime.UTC)


def _timestamp(value: bytes) -> tuple[int, datetime.datetime]:
    try:
        return _read_timestamp(value)
    except (OverflowError, OSError, ValueError):
        if len(value) < 8:
            raise  # too short: pamqp's own error stands
        return 8, _LATEST  # past what a datetime holds


def guard_timestamps() -> None:
    """Make pamqp's reader give a timestamp no ``datetime`` holds as the latest one."""
    decode.TABLE_MAPPING[b"T"] = _timestamp  # a header's value
    decode.METHODS["timestamp"] = _timestamp  # the property
