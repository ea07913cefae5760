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

    async def start(self) -> None:
        """Consume (raising aiormq's error if the broker refuses), and again after each
        reopening of the channel."""
        await self._consume()
        self.channel.reopen_callbacks.add(self._reopened)

    def stop(self) -> None:
        """Restore this consumer no more (its connection is closing)."""
        self._cancelled = True
        self.channel.reopen_callbacks.discard(self._reopened)
        if self._retrying is not None:
            self._retrying.cancel()

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
