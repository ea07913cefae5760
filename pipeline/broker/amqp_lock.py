"""A lock on RabbitMQ between the processes of a deployment: an exclusive queue.

RabbitMQ lets one connection at a time declare an exclusive queue of a name (another
is refused RESOURCE_LOCKED) and deletes it with the connection holding it, so a
killed process lets go at once. Nothing tells another connection that it is gone:
the others poll, pausing longer each time up to half a second. Held by one process
booting an agent (``amqp_boots``) or declaring the topology (``amqp_declared``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiormq
from aio_pika.abc import AbstractConnection

from sporeflow.config import BrokerError

__all__ = ["LOCK_WAIT", "holding"]

LOCK_WAIT = 300.0  # seconds: past a dead host's heartbeat timeout, RabbitMQ frees its lock
_RETRY_FIRST, _RETRY_MOST = 0.02, 0.5
_log = logging.getLogger("sporeflow.broker.amqp")


@contextlib.asynccontextmanager
async def holding(connection: Callable[[], AbstractConnection], name: str, *, doing: str,
                  address: str, fail: Callable[[str, BaseException], BrokerError],
                  errors: tuple[type[BaseException], ...],
                  refused: Callable[[BaseException], BaseException],
                  wait: float = LOCK_WAIT) -> AsyncIterator[None]:
    """Hold the lock ``name`` while another process does not (``doing``: what for, in
    words, as "booting agent 'a'"). The broker refusing
    the declaration raises ``refused(exc)``; another process holding it past ``wait``
    seconds raises :class:`BrokerError`."""
    deadline = time.monotonic() + wait
    delay = _RETRY_FIRST
    while True:
        try:
            channel = await connection().channel()
        except errors as exc:
            raise fail(f"taking the lock {name!r}", exc) from exc
        try:
            await channel.declare_queue(name, exclusive=True)
            break
        except aiormq.exceptions.ChannelLockedResource:
            pass  # another process holds it now
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise refused(exc) from exc
        except errors as exc:
            raise fail(f"taking the lock {name!r}", exc) from exc
        if time.monotonic() > deadline:
            raise BrokerError(
                f"RabbitMQ at {address}: another process has held {name!r} for over "
                f"{wait:.0f}s while {doing}; if it hangs, stop it (rabbitmqctl list_queues "
                f"name owner_pid shows which)")
        if delay == _RETRY_FIRST:
            _log.info("RabbitMQ at %s: another process is %s; waiting for it", address, doing)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MOST)
    try:
        yield
    finally:
        with contextlib.suppress(*errors):  # a lost connection took it already
            if channel.is_closed:  # the exclusive queue is the connection's: delete it
                channel = await connection().channel()
            await channel.queue_delete(name)
            await channel.close()
