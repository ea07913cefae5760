"""Publishing spores to RabbitMQ: the confirming channel of ``amqp_backend``, used through
aiormq, and the broker's answers to a publish as :class:`BrokerError`.

- A spore's properties are built here straight from the spore (``amqp_codec`` gives
  body and headers), with no ``aio_pika.Message`` in between: that builds a dict of
  every property, checks each through ``__setattr__``, and builds the same properties
  again.
- A publish goes to aiormq's ``basic_publish`` with ``wait=False``: its frames are
  queued for the connection's writer and the publish waits for the broker's confirm
  only. aio-pika's ``Exchange.publish`` also waits for the frames to be written,
  holding the channel's lock meanwhile, so that publishes made in one turn of the
  loop went out one per turn; here they go out together, many confirms in flight,
  each tracked by its delivery tag in aiormq.
- :meth:`Outbound.publish_soon` starts a publish and returns: one task around
  ``basic_publish``, the caller told by a callback; at most ``_STARTED_PER_TURN`` start
  in a turn of the loop, the rest in order in the next turns. At-least-once is
  unchanged: the caller settles what the spore stood for only once it was confirmed.

A refused publish (no queue for its key, a full queue, no permission) raises
:class:`BrokerError`; one cut off by the loss of the connection :class:`Disconnected`
(publish it again once ``link`` is up).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from sporeflow.config import BrokerError
from sporeflow.pipeline.broker.amqp_codec import (
    CONTENT_TYPE,
    PERSISTENT,
    expiration_ms,
    spore_body_headers,
)
from sporeflow.pipeline.broker.amqp_inbound import AMQP_ERRORS, broker_failure
from sporeflow.pipeline.broker.backend import BackendStatistics, Published, Topology
from sporeflow.pipeline.broker.link import Disconnected, Link, Unroutable
from sporeflow.pipeline.broker.queue_bounds import full_queue_message
from sporeflow.steps import Spore

__all__ = ["Outbound"]

_LOSS_REPORTED = 1.0  # seconds: an error caused by a lost connection precedes its report
# Publishes started per turn of the loop: each puts its frames in the connection's write
# queue, which holds 10 (aiormq's FRAME_BUFFER_SIZE) and is emptied once a turn. Started
# all at once, the rest would wait for room holding the channel's lock, and the lock
# would pass from one to the next once a turn: one publish per turn.
_STARTED_PER_TURN = 8


class Outbound:
    """Publishes on ``channel`` (aio-pika's, restored after a reconnection) to the
    exchanges named ``exchange`` (topic) and "" (default); ``refused`` is awaited after
    the broker closed the channel on a refused publish (it opens another)."""

    def __init__(self, channel: AbstractChannel, exchange: str, *, user: str,
                 user_id: str | None, link: Link, stats: BackendStatistics, address: str,
                 topology: Topology | None,
                 refused: Callable[[Outbound], Awaitable[None]]) -> None:
        self.channel = channel
        self.exchange = exchange
        self.user, self.user_id = user, user_id
        self.link, self.stats, self.address = link, stats, address
        self.topology = topology
        self._refused = refused
        self._raw: aiormq.Channel | None = None  # aiormq's, while it is open
        # Each publish running, and whom to tell of its end (None: its caller awaits it).
        self._flying: dict[asyncio.Task[Any], Published | None] = {}
        self._cut: set[asyncio.Task[Any]] = set()  # of them, cut off by a lost connection
        self._started = 0  # publishes started in this turn of the loop
        self._queued: deque[tuple[Spore, str, str, str | None, Published]] = deque()

    async def opened(self) -> None:
        """Take aiormq's channel (again, after aio-pika restored it)."""
        self._raw = await self._underlay()

    async def _reopened(self) -> aiormq.Channel:
        """aio-pika's channel once it restored it; :class:`Disconnected` as soon as the
        link is not up (aio-pika's own wait outlasts a link that closes: a stop during an
        outage would wait for it for ever)."""
        link = self.link
        if not link.up:
            raise Disconnected(f"RabbitMQ at {self.address} is {link.state}")
        underlay = asyncio.ensure_future(self._underlay())
        lost = asyncio.ensure_future(link.wait_lost(link.generation, math.inf))
        try:
            await asyncio.wait((underlay, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not underlay.done():
                underlay.cancel()
        if underlay.cancelled():
            raise Disconnected(f"RabbitMQ at {self.address} is {link.state}")
        return underlay.result()

    async def _underlay(self) -> aiormq.Channel:
        # aiormq's Channel (its basic_publish takes wait=, its abstract class does not)
        return cast(aiormq.Channel, await self.channel.get_underlay_channel())

    def _properties(self, spore: Spore, reply_queue: str | None) -> tuple[bytes, Basic.Properties]:
        body, headers = spore_body_headers(spore)
        # The properties spore_to_amqp names, as aio-pika would have encoded them.
        return body, Basic.Properties(
            content_type=CONTENT_TYPE, headers=headers, delivery_mode=PERSISTENT,
            priority=spore.priority, reply_to=reply_queue,
            expiration=None if spore.expires_at is None else expiration_ms(spore),
            message_id=spore.id, timestamp=spore.created_at, user_id=self.user_id)

    async def publish(self, spore: Spore, exchange: str, key: str,
                      reply_queue: str | None) -> None:
        """Publish and wait for the broker's confirm (cut off as ``publish_soon``'s are)."""
        task = asyncio.current_task()
        assert task is not None
        self._flying[task] = None
        try:
            failure = await self._publish(spore, exchange, key, reply_queue)
        finally:
            self._flying.pop(task, None)
        if failure is not None:
            raise failure

    def publish_soon(self, spore: Spore, exchange: str, key: str, reply_queue: str | None,
                     done: Published) -> None:
        """Start publishing and return; ``done`` is told once confirmed or failed."""
        if self._started < _STARTED_PER_TURN and not self._queued:
            self._start((spore, exchange, key, reply_queue, done))
        else:  # started in a later turn, in order
            self._queued.append((spore, exchange, key, reply_queue, done))

    def _start(self, publish: tuple[Spore, str, str, str | None, Published]) -> None:
        loop = asyncio.get_running_loop()
        spore, exchange, key, reply_queue, done = publish
        task = loop.create_task(self._publish(spore, exchange, key, reply_queue, done))
        self._flying[task] = done
        if not self._started:  # after this task: its put wakes the writer before the next
            loop.call_soon(self._next_turn)  # turn's tasks run, so they find room
        self._started += 1

    def _next_turn(self) -> None:
        self._started = 0
        queued = self._queued
        while queued and self._started < _STARTED_PER_TURN:
            self._start(queued.popleft())

    def cut_off(self) -> None:
        """The connection is lost: publishes waiting on it (for room in its write queue,
        for a confirm) would wait for ever; each ends :class:`Disconnected`, published
        again once the link is up."""
        self._cut.update(self._flying)
        for task in self._flying:
            task.cancel()
            task.add_done_callback(self._cut_before_start)

    def _cut_before_start(self, task: asyncio.Task[Any]) -> None:
        """A task cancelled before its first step never ran ``_publish``: told here."""
        self._cut.discard(task)
        if task in self._flying:
            self._told(task, self._flying[task], Disconnected(
                f"RabbitMQ at {self.address} lost the connection before a publish began"))

    async def _publish(self, spore: Spore, exchange: str, key: str, reply_queue: str | None,
                       done: Published | None = None) -> BrokerError | None:
        """Publish; return (and tell ``done``) None once confirmed, else the error."""
        task = asyncio.current_task()
        try:
            failure = await self._attempt(spore, exchange, key, reply_queue)
        except asyncio.CancelledError:
            if task not in self._cut:
                self._told(task, done, asyncio.CancelledError())
                raise
            self._cut.discard(task)
            task.uncancel()  # our own cancellation, taken back: the task goes on
            failure = Disconnected(f"RabbitMQ at {self.address} lost the connection before "
                                   f"confirming spore {spore.id}")
        except BaseException as exc:  # not written as JSON, or a bug: told too
            self._told(task, done, exc)
            raise
        self._told(task, done, failure)
        return failure

    def _told(self, task: asyncio.Task[Any] | None, done: Published | None,
              outcome: BaseException | None) -> None:
        if done is not None:  # in a task of publish_soon's: done with it
            self._flying.pop(task, None)  # type: ignore[arg-type]
            done(outcome)

    async def _attempt(self, spore: Spore, exchange: str, key: str,
                       reply_queue: str | None) -> BrokerError | None:
        generation = self.link.generation
        try:
            body, properties = self._properties(spore, reply_queue)
            raw = self._raw
            if raw is None or raw.is_closed:  # after a loss: aio-pika's current one, or raise
                raw = self._raw = await self._reopened()
            await raw.basic_publish(body, exchange=exchange, routing_key=key,
                                    properties=properties, mandatory=True, wait=False)
        except Disconnected as exc:  # from _reopened: published again once the link is up
            return exc
        except AMQP_ERRORS as exc:
            failure = await self._failure(spore, exchange, key, generation, exc)
            failure.__cause__ = exc
            return failure
        self.stats.published += 1
        return None

    async def _failure(self, spore: Spore, exchange: str, key: str, generation: int,
                       exc: BaseException) -> BrokerError:
        """The error for a publish that raised ``exc``."""
        if isinstance(exc, aiormq.exceptions.PublishError):  # returned: no queue takes it
            self.stats.failed_publishes += 1
            return Unroutable(f"RabbitMQ at {self.address} returned spore {spore.id}: no "
                               f"queue takes routing key {key!r} ({exc})")
        if isinstance(exc, aiormq.exceptions.DeliveryError):  # a nack: a full queue
            self.stats.failed_publishes += 1
            return BrokerError(full_queue_message(
                self.topology, f"spore {spore.id} with routing key {key!r} at "
                               f"{self.address}"))
        if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
            self.stats.failed_publishes += 1
            await self._refused(self)
            return BrokerError(
                f"RabbitMQ at {self.address} refused spore {spore.id}: user {self.user!r} "
                f"may not publish to {exchange or 'the default exchange'!r} with routing "
                f"key {key!r} ({exc}); see sporeflow broker-permissions")
        failure = broker_failure(self.address, f"publishing spore {spore.id}", exc)
        if await self.link.wait_lost(generation, _LOSS_REPORTED):  # not refused: cut off
            return Disconnected(str(failure))
        self.stats.failed_publishes += 1
        return failure
