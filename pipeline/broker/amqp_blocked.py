"""RabbitMQ's word that it blocks a connection, heard for the RabbitMQ backend.

Under its memory or disk alarm RabbitMQ reads nothing more from a connection that
publishes, and tells it so: ``connection.blocked`` with why ("low on memory"), then
``connection.unblocked`` once every alarm cleared. aiormq handles both frames (its
writer waits meanwhile) and has no callback for them: it tells them in its log only, a
WARNING of ``aiormq.connection`` naming its connection. So they are heard there, by a
filter on that logger that lets every record through (what aiormq logs is shown or not
as before): each record of a connection a :class:`Listener` holds now is told to it.

A process whose logging drops aiormq's WARNINGs before they are made (``aiormq`` set
above WARNING, ``logging.disable``) is not told: it waits as before, and a stop's
deadline still ends a start or a stop the broker blocks (``stop_deadline``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

__all__ = ["Listener", "listen"]

# aiormq's records, word for word (aiormq.connection): a change there is a test's failure.
_BLOCKED = "Connection %r was blocked by: %r"
_UNBLOCKED = "Connection %r was unblocked"
_AIORMQ = "aiormq.connection"


class Listener(Protocol):
    def underlay(self) -> object | None:
        """The aiormq connection it holds now (None: none)."""

    def heard_blocked(self, reason: str | None) -> None:
        """The broker blocked it, saying ``reason``, or (None) unblocked it."""


class _Hearing(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.listeners: weakref.WeakSet[Listener] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in (_BLOCKED, _UNBLOCKED) and isinstance(record.args, tuple):
            connection = record.args[0] if record.args else None
            reason = str(record.args[1]) if record.msg == _BLOCKED else None
            for listener in list(self.listeners):
                if connection is not None and listener.underlay() is connection:
                    _soon(listener, reason)
        return True


def _soon(listener: Listener, reason: str | None) -> None:
    """Tell ``listener`` once this record is out (its own log line is no nested one)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # aiormq logs on its loop: never here, and never raise in a filter
        return
    loop.call_soon(listener.heard_blocked, reason)


_HEARING = _Hearing()


def listen(listener: Listener) -> None:
    """Tell ``listener`` when the broker blocks or unblocks its connection, for as long
    as it lives."""
    logger = logging.getLogger(_AIORMQ)
    if _HEARING not in logger.filters:
        logger.addFilter(_HEARING)
    _HEARING.listeners.add(listener)
