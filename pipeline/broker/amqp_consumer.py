"""A consumer of one queue, registered with aiormq on one of aio-pika's robust channels.

aio-pika's ``Queue.consume`` wraps each delivery in an ``IncomingMessage`` (every
property converted and checked again) and runs the callback in a second task of its
own, after the one aiormq starts per delivery. Here aiormq calls the consumer itself:
one task per delivery, its message as aiormq decoded it (``amqp_inbound`` reads it).

aio-pika restores what was declared on the channel after a reconnection (its prefetch,
queues, bindings) but not these consumers, so each restores itself:

- once its channel is reopened (``reopen_callbacks``, after the declarations), it
  consumes again under the same tag;
- a consumer the broker cancels (its queue was deleted) tries again, the pause
  growing from half a second to ten, until it consumes or is cancelled here: the
  channel reopened (the queue declared again, as aio-pika restores it), then consumed.

Nothing is lost meanwhile: unacked deliveries go back to their queue with their
channel, and the broker holds the rest until someone consumes.

A new prefetch (a reload changed the agent's concurrency) is set on the channel, which
aio-pika restores with it, and the consumer consumes again: RabbitMQ applies a channel's
prefetch to the consumers started after it (``global`` off). While the broker is away
that waits, in a task of the consumer's, for the channel to be open again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractRobustChannel

from sporeflow.config import redact_text
from sporeflow.pipeline.broker.amqp_inbound import AMQP_ERRORS
from sporeflow.pipeline.broker.link import Link

__all__ = ["Consumer"]

_PAUSE, _LONGEST_PAUSE = 0.5, 10.0  # seconds between attempts after a broker's cancel
_log = logging.getLogger("sporeflow.broker.amqp")


class Consumer:
    """Consumes ``queue`` on ``channel``, handing each delivery to ``deliver``."""

    def __init__(self, channel: AbstractRobustChannel, queue: str,
                 deliver: Callable[[aiormq.abc.DeliveredMessage], None], *, link: Link,
                 address: str, no_ack: bool = False, exclusive: bool = False) -> None:
        self.channel, self.queue = channel, queue
        self.address = address
        self._link = link
        self.tag = f"sporeflow.{secrets.token_hex(12)}"
        self._deliver = deliver
        self._no_ack, self._exclusive = no_ack, exclusive
        self._cancelled = False
        self._consuming = asyncio.Lock()
        self._retrying: asyncio.Task[None] | None = None
        self._prefetch = 0  # asked by prefetch(), not yet applied (0: none asked)
        self._prefetching: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Consume (raising aiormq's error if the broker refuses), and again after each
        reopening of the channel."""
        await self._consume()
        self.channel.reopen_callbacks.add(self._reopened)

    def stop(self) -> None:
        """Restore this consumer no more (its connection is closing)."""
        self._cancelled = True
        self.channel.reopen_callbacks.discard(self._reopened)
        for task in (self._retrying, self._prefetching):
            if task is not None:
                task.cancel()

    def prefetch(self, count: int) -> None:
        """At most ``count`` unacked deliveries from now on (see the module docstring)."""
        self._prefetch = count
        if self._prefetching is None or self._prefetching.done():
            self._prefetching = asyncio.get_running_loop().create_task(self._prefetched())

    async def _prefetched(self) -> None:
        applied = 0
        while applied != self._prefetch and not self._cancelled:
            applied = self._prefetch
            try:  # aio-pika waits for the channel, then keeps the value for its restores
                await self.channel.set_qos(prefetch_count=applied)
                async with self._consuming:
                    raw = await self._raw()
                    if self.tag in raw.consumers:  # what it delivered stays ours, unacked
                        await raw.basic_cancel(self.tag)
                await self._consume()  # under the new prefetch
            except AMQP_ERRORS as exc:  # lost meanwhile: aio-pika restores what it was given
                _log.debug("RabbitMQ at %s: the prefetch of %r is applied once reconnected: "
                           "%s", self.address, self.queue, redact_text(str(exc)))
                if applied == self._prefetch:
                    return
                # A later reload's value came meanwhile: aio-pika has only the older one.
        _log.info("RabbitMQ at %s: consuming %r, at most %d unacked", self.address,
                  self.queue, applied)

    async def cancel(self) -> None:
        """Consume no more; what was delivered stays unacked until settled or closed."""
        self.stop()
        raw = await self._raw()
        if self.tag in raw.consumers:
            await raw.basic_cancel(self.tag)

    async def _raw(self) -> aiormq.Channel:
        return cast(aiormq.Channel, await self.channel.get_underlay_channel())

    async def _consume(self) -> None:
        async with self._consuming:
            raw = await self._raw()
            if self._cancelled or self.tag in raw.consumers:
                return
            cancels = getattr(raw, "on_consumer_cancel_callbacks", None)  # aiormq >= 6.9
            if cancels is not None:
                cancels.add(self._cancelled_by_broker)
            await raw.basic_consume(self.queue, self._delivered, no_ack=self._no_ack,
                                    exclusive=self._exclusive, consumer_tag=self.tag)

    async def _delivered(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._deliver(message)  # in aiormq's task for this delivery

    async def _reopened(self, _: Any) -> None:
        try:
            await self._consume()
        except AMQP_ERRORS as exc:  # aio-pika would not tell: it gathers these callbacks
            self._retry(f"cannot consume {self.queue!r} again after reconnecting: "
                        f"{redact_text(str(exc))}")

    def _cancelled_by_broker(self, frame: Any) -> None:
        if getattr(frame, "consumer_tag", None) == self.tag and not self._cancelled:
            self._retry(f"the broker cancelled the consumer of {self.queue!r} (was the "
                        f"queue deleted?)")

    def _retry(self, why: str) -> None:
        _log.warning("RabbitMQ at %s: %s; trying again", self.address, why)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._again())

    async def _again(self) -> None:
        pause = _PAUSE
        while not self._cancelled:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE)
            if not self._link.up:
                continue  # reconnected, the channel is reopened: _reopened consumes
            try:
                # The broker closes the channel on consuming a missing queue: reopened
                # (and its queue declared again) as aio-pika does, else nothing happens.
                await self.channel.restore()
                await self._consume()
            except AMQP_ERRORS as exc:
                _log.debug("RabbitMQ at %s: consuming %r failed: %s", self.address,
                           self.queue, redact_text(str(exc)))
                continue
            _log.info("RabbitMQ at %s: consuming %r again", self.address, self.queue)
            return
