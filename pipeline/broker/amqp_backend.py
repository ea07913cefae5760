"""The RabbitMQ backend, through aio-pika: the only module that imports it.

Topology, declared by every process of an organism (declarations are idempotent):

    exchange <name>             durable topic exchange; direct spores by
                                ``agent.<to>.<type>``, broadcasts by
                                ``channel.<channel>.<type>`` (both configurable)
    queue <name>.<agent>        durable, one per agent, shared by every process
                                hosting it (competing consumers); bound to its
                                own key and to its channels' keys;
                                ``x-max-priority: 10``, dead-lettering to:
    exchange <name>.dead        durable fanout, into
    queue <name>.dead-letters   durable; reason, error, agent and attempts in
                                ``x-sporeflow-*`` headers
    reply queue                 one per connection, exclusive, server-named

Publishing waits for the broker's confirm and is mandatory (an unroutable spore
is an error, not a silent drop). Each consumer has its own channel and prefetch.
Every aio-pika/aiormq error is translated here into :class:`BrokerError`, and
the URL's password never appears in a message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from sporeflow.config import BrokerError, SporeError, SporeflowError, redact_text, redact_url
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp
from sporeflow.pipeline.broker.backend import Backend, BackendStatistics, OnMessage, Topology
from sporeflow.steps import Spore

__all__ = ["AmqpBackend"]

_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError,
           ConnectionError, OSError, asyncio.TimeoutError, RuntimeError)
_MAX_ERROR_HEADER = 2000


class AmqpBackend(Backend):
    """A connection to RabbitMQ at ``url`` (``amqp://`` or ``amqps://``).

    TLS options go in the URL's query, as aiormq reads them:
    ``amqps://user:password@host:5671/?cafile=ca.pem&certfile=client.pem&keyfile=key.pem``.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._url = url
        self.address = redact_url(url)
        self.connect_timeout = connect_timeout
        self.stats = BackendStatistics(self.address)
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._default: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None
        self._topology: Topology | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []

    def _fail(self, doing: str, exc: BaseException) -> BrokerError:
        detail = redact_text(f"{type(exc).__name__}: {exc}")
        return BrokerError(f"RabbitMQ at {self.address}: {doing} failed: {detail}")

    async def open(self, topology: Topology) -> None:
        try:
            self._connection = await aio_pika.connect(
                self._url, timeout=self.connect_timeout,
                client_properties={"connection_name": f"sporeflow {topology.exchange}"})
        except _ERRORS as exc:
            raise BrokerError(
                f"cannot reach RabbitMQ at {self.address}: "
                f"{redact_text(f'{type(exc).__name__}: {exc}')}; is the broker running and "
                f"are the host, port and credentials right?") from exc
        try:
            channel = await self._connection.channel(publisher_confirms=True,
                                                     on_return_raises=True)
            self._exchange = await channel.declare_exchange(
                topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            self._dead = await channel.declare_exchange(
                topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
            self._default = channel.default_exchange
            dead_letters = await channel.declare_queue(topology.dead_letter_queue, durable=True)
            await dead_letters.bind(self._dead, routing_key="")
            arguments: dict[str, Any] = {"x-max-priority": topology.max_priority,
                                         "x-dead-letter-exchange":
                                             topology.dead_letter_exchange}
            for agent in topology.subscriptions:
                queue = await channel.declare_queue(topology.queue(agent), durable=True,
                                                    arguments=arguments)
                for pattern in topology.bindings(agent):
                    await queue.bind(self._exchange, routing_key=pattern)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            await self.close()
            raise BrokerError(
                f"RabbitMQ at {self.address} holds exchange or queues of {topology.exchange!r} "
                f"declared with other settings ({exc}); delete them (rabbitmqctl "
                f"delete_queue ...) or set organism.broker.exchange to a new name") from exc
        except _ERRORS as exc:
            await self.close()
            raise self._fail(f"declaring the topology of {topology.exchange!r}", exc) from exc
        self._topology = topology

    async def publish(self, spore: Spore, *, routing_key: str | None = None,
                      queue: str | None = None, reply_queue: str | None = None) -> None:
        exchange = self._default if queue is not None else self._exchange
        if exchange is None:
            raise BrokerError(f"RabbitMQ at {self.address} is not open; call open() first")
        body, headers, properties = spore_to_amqp(spore)
        message = aio_pika.Message(body, headers=headers, reply_to=reply_queue, **properties)
        key = queue if queue is not None else routing_key or ""
        try:
            await exchange.publish(message, routing_key=key, mandatory=True)
        except aiormq.exceptions.PublishError as exc:
            self.stats.failed_publishes += 1
            raise BrokerError(f"RabbitMQ at {self.address} returned spore {spore.id}: no queue "
                              f"takes routing key {key!r} ({exc})") from exc
        except _ERRORS as exc:
            self.stats.failed_publishes += 1
            raise self._fail(f"publishing spore {spore.id}", exc) from exc
        self.stats.published += 1

    async def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> None:
        connection = self._require_connection()
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=max(prefetch, 1))
            declared = await channel.declare_queue(queue, passive=True)
        except _ERRORS as exc:
            raise self._fail(f"consuming {queue!r}", exc) from exc

        async def deliver(message: AbstractIncomingMessage) -> None:
            self.stats.consumed += 1
            on_message(_AmqpInbound(self, message))

        try:
            tag = await declared.consume(deliver)
        except _ERRORS as exc:
            raise self._fail(f"consuming {queue!r}", exc) from exc
        self._consumers.append((declared, tag))

    async def reply_queue(self, on_message: OnMessage) -> str:
        connection = self._require_connection()

        async def deliver(message: AbstractIncomingMessage) -> None:
            self.stats.consumed += 1
            on_message(_AmqpInbound(self, message))

        try:
            channel = await connection.channel(publisher_confirms=False)
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await queue.consume(deliver, no_ack=True)
        except _ERRORS as exc:
            raise self._fail("declaring the reply queue", exc) from exc
        return queue.name

    async def dead_letter(self, message: Any, *, reason: str, error: str,
                          agent: str | None = None, attempts: int = 0) -> None:
        if not isinstance(message, _AmqpInbound) or self._dead is None:
            raise BrokerError(f"RabbitMQ at {self.address}: cannot dead-letter {message!r}")
        raw = message.raw
        headers = dict(raw.headers or {})
        headers.update({"x-sporeflow-reason": reason,
                        "x-sporeflow-error": error[:_MAX_ERROR_HEADER],
                        "x-sporeflow-agent": agent or "", "x-sporeflow-attempts": attempts,
                        "x-sporeflow-routing-key": raw.routing_key or ""})
        letter = aio_pika.Message(raw.body, headers=headers, content_type=raw.content_type,
                                  message_id=raw.message_id, timestamp=raw.timestamp,
                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            await self._dead.publish(letter, routing_key="", mandatory=True)
        except _ERRORS as exc:
            raise self._fail("dead-lettering a message", exc) from exc
        self.stats.dead_lettered += 1

    async def cancel(self) -> None:
        """Stop every consumer; what they hold unacked stays held until ack or close."""
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            try:
                await queue.cancel(tag)
            except _ERRORS:
                pass  # the channel is gone already: nothing more will come from it

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._exchange = self._default = self._dead = None
        self._consumers = []
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except _ERRORS:
                pass  # closing a broken connection: the broker requeues what it held

    async def destroy(self, topology: Topology) -> None:
        connection = self._connection
        owned = connection is None
        try:
            if connection is None:
                connection = await aio_pika.connect(self._url, timeout=self.connect_timeout)
            channel = await connection.channel()
            for agent in topology.subscriptions:
                await channel.queue_delete(topology.queue(agent))
            await channel.queue_delete(topology.dead_letter_queue)
            await channel.exchange_delete(topology.exchange)
            await channel.exchange_delete(topology.dead_letter_exchange)
            await channel.close()
        except _ERRORS as exc:
            raise self._fail(f"deleting the topology of {topology.exchange!r}", exc) from exc
        finally:
            if owned and connection is not None:
                await connection.close()

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(**self.stats.as_dict())

    def _require_connection(self) -> AbstractConnection:
        if self._connection is None:
            raise BrokerError(f"RabbitMQ at {self.address} is not open; call open() first")
        return self._connection


class _AmqpInbound:
    """One delivered message, decoded; its ack and nack raise only :class:`BrokerError`."""

    __slots__ = ("_backend", "raw", "spore", "rejection")

    def __init__(self, backend: AmqpBackend, raw: AbstractIncomingMessage) -> None:
        self._backend = backend
        self.raw = raw
        self.spore: Spore | None = None
        self.rejection: tuple[str, SporeflowError] | None = None
        headers: Mapping[str, Any] = raw.headers or {}
        try:
            self.spore = spore_from_amqp(raw.body, headers)
        except SporeError as exc:
            self.rejection = (Reason.INVALID, exc)

    @property
    def redelivered(self) -> bool:
        return bool(self.raw.redelivered)

    @property
    def reply_queue(self) -> str | None:
        return self.raw.reply_to or None

    async def ack(self) -> None:
        try:
            await self.raw.ack()
        except _ERRORS as exc:
            raise self._backend._fail("acknowledging a message", exc) from exc
        self._backend.stats.acked += 1

    async def nack(self, *, requeue: bool) -> None:
        try:
            await self.raw.nack(requeue=requeue)
        except _ERRORS as exc:
            raise self._backend._fail("rejecting a message", exc) from exc
        self._backend.stats.nacked += 1
