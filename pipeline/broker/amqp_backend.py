"""The RabbitMQ backend, through aio-pika (``dead_letter_queue`` reads the dead letters
at rest, for ``sporeflow dlq``).

Topology, declared by every process of an organism (declarations are idempotent):

    exchange <name>             durable topic exchange; direct spores by
                                ``agent.<to>.<type>``, broadcasts by
                                ``channel.<channel>.<type>`` (both configurable)
    queue <name>.<agent>        durable, one per agent, shared by every process
                                hosting it (competing consumers); bound to its
                                own key and to its channels' keys;
                                ``x-max-priority: 10``, or quorum with an
                                ``x-delivery-limit`` (``Topology.queue_arguments``);
                                dead-lettering to:
    exchange <name>.dead        durable fanout, into
    queue <name>.dead-letters   durable; reason, error, agent and attempts in
                                ``x-sporeflow-*`` headers
    queue <name>.declared:topology
                                the record of the bindings declared last; what the
                                file no longer declares is unbound at each declaration,
                                one process at a time (``amqp_declared``, ``leftovers``)
    queue <name>.reply.<user>.<token>
                                the reply queue: one per process, consumed by it
                                alone; durable, deleted by RabbitMQ once unused for
                                ``x-expires`` (``broker.give_up_after`` and a
                                minute), so that it outlives an outage with the
                                responses sent during it; bound by
                                ``reply.<user>.<token>``; responses go there
                                through the exchange, never by the default
                                exchange (which reaches any queue by its name)

Every message published carries ``user_id``, the user this connection logged in as,
which RabbitMQ validates: no client passes for another. A user allowed to declare
only its reply queues (``sporeflow broker-permissions``) joins the topology an
administrator declared (``sporeflow broker-declare``), checking it passively.

Publishing waits for the broker's confirm and is mandatory (an unroutable spore
is an error, not a silent drop), many publishes in flight at once (``amqp_outbound``).
Each consumer has its own channel and prefetch.
The connection is aio-pika's robust one (``amqp_link``): after an outage it is made
again and all of the above declared and consumed again; ``link`` says its state.
A publish cut off by the loss raises :class:`Disconnected` (publish it again once
``link`` is up); a delivery of a lost connection raises :class:`Requeued` when
settled (the broker gave it back to its queue).
Every aio-pika/aiormq error is translated here into :class:`BrokerError`, and
the URL's password never appears in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from functools import partial
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustChannel,
)
from yarl import URL

from sporeflow.config import BrokerError, redact_text, redact_url
from sporeflow.pipeline.broker.ack_window import AckWindow, AckWindows
from sporeflow.pipeline.broker.amqp_boots import AmqpBootRecord
from sporeflow.pipeline.broker.amqp_consumer import Consumer
from sporeflow.pipeline.broker.amqp_declared import (
    deployment_queues,
    ready_count,
    remember,
    take_away,
    tidy,
)
from sporeflow.pipeline.broker.amqp_inbound import AMQP_ERRORS, AmqpInbound, broker_failure
from sporeflow.pipeline.broker.amqp_letters import delivery_letter, put_letter, spore_letter
from sporeflow.pipeline.broker.amqp_link import (
    ReconnectingConnection,
    connect,
    login_of,
    through_losses,
)
from sporeflow.pipeline.broker.amqp_marks import mark, marked
from sporeflow.pipeline.broker.amqp_outbound import Outbound
from sporeflow.pipeline.broker.backend import (
    Backend,
    BackendStatistics,
    BootRecord,
    OnMessage,
    Published,
    Topology,
)
from sporeflow.pipeline.broker.link import Disconnected, Link
from sporeflow.pipeline.broker.queue_bounds import redeclared_message
from sporeflow.steps import Spore

__all__ = ["AmqpBackend"]

_ERRORS = AMQP_ERRORS
_REPLY_EXPIRES = 3600.0  # seconds a reply queue outlives its process without give_up_after
_log = logging.getLogger("sporeflow.broker.amqp")


class AmqpBackend(Backend):
    """A connection to RabbitMQ at ``url`` (``amqp://`` or ``amqps://``).

    TLS options go in the URL's query, as aiormq reads them:
    ``amqps://user:password@host:5671/?cafile=ca.pem&certfile=client.pem&keyfile=key.pem``.
    """

    _link: Link  # never None here: made with the backend, renewed by open() once ended

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._url = url
        self.address = redact_url(url)
        self.connect_timeout = connect_timeout
        self.stats = BackendStatistics(self.address)
        self._connection: ReconnectingConnection | None = None
        self._closing: ReconnectingConnection | None = None  # while close() closes it
        self._link = Link(self.address)
        self._reply: AbstractQueue | None = None
        self._reply_consumer: Consumer | None = None
        self._out: Outbound | None = None  # publishing, on a channel of its own
        self._exchange: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None
        self._topology: Topology | None = None
        self._consumers: list[Consumer] = []
        self._windows = AckWindows(self._ack_failed)
        self.user, self._user_id = login_of(url)
        self._vhost = URL(url).path[1:] or "/"
        self.declared = False  # True: open() declared the topology, not just joined it
        self._reopening = asyncio.Lock()
        self._recording: asyncio.Task[None] | None = None  # after a reconnection

    def _fail(self, doing: str, exc: BaseException) -> BrokerError:
        return broker_failure(self.address, doing, exc)

    def _received(self, message: aiormq.abc.DeliveredMessage,
                  window: AckWindow | None = None) -> AmqpInbound:
        self.stats.consumed += 1
        topology = self._topology
        return AmqpInbound(message, link=self._link, stats=self.stats, address=self.address,
                           max_spore_bytes=topology.max_spore_bytes if topology else None,
                           window=window)

    def _ack_failed(self, exc: BaseException) -> None:
        # The channel went with its connection: the broker redelivers what was unacked.
        _log.debug("RabbitMQ at %s: acks not sent: %s", self.address, redact_text(str(exc)))

    async def open(self, topology: Topology) -> None:
        """Connect (trying again until the link gives up: ``link``), declare the topology,
        then tell the link it is connected: publishing waits until then."""
        self._link = link = self._link.reopened()
        link.on_give_up.append(self._gave_up)
        link.on_lost.append(self._cut_off)
        self._connection = await connect(self._url, link, timeout=self.connect_timeout,
                                         name=f"sporeflow {topology.exchange}")
        channel = self._connection.lasting(publisher_confirms=True)
        try:  # declared again on this channel after each reconnection
            await through_losses(self._connection, link,
                                 partial(self._declare, channel, topology),
                                 doing=f"declaring the topology of {topology.exchange!r}")
        except aiormq.exceptions.ChannelAccessRefused:
            with contextlib.suppress(*_ERRORS):  # else aio-pika would open it again
                await channel.close()
            await self._join(topology)  # a per-process user: the topology is declared
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            await self.close()
            raise BrokerError(redeclared_message(self.address, topology, str(exc)) or (
                f"RabbitMQ at {self.address} holds exchange or queues of {topology.exchange!r} "
                f"declared with other settings ({exc}); delete them (rabbitmqctl "
                f"delete_queue ...) or set organism.broker.exchange to a new name")) from exc
        except _ERRORS as exc:
            await self.close()
            raise self._fail(f"declaring the topology of {topology.exchange!r}", exc) from exc
        self._topology = topology
        link.connected()

    async def _declare(self, channel: AbstractRobustChannel, topology: Topology) -> None:
        """Declare ``topology`` through ``channel`` (and one-off channels), then publish."""
        if not channel.is_initialized:  # a retry after a loss finds it restored
            await channel
        self._exchange = await channel.declare_exchange(
            topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self._dead = await channel.declare_exchange(
            topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        await self._check_signing(topology)
        dead_letters = await channel.declare_queue(
            topology.dead_letter_queue, durable=True,
            arguments=topology.dead_letter_arguments())
        await dead_letters.bind(self._dead, routing_key="")
        for agent in topology.subscriptions:
            queue = await channel.declare_queue(topology.queue(agent), durable=True,
                                                arguments=topology.queue_arguments(agent))
            for pattern in topology.bindings(agent):
                await queue.bind(self._exchange, routing_key=pattern)
        self.leftovers = await tidy(self._require_connection, topology, vhost=self._vhost,
                                    address=self.address, fail=self._fail, errors=_ERRORS)
        self.leftovers.report(_log, f"RabbitMQ at {self.address}", topology.exchange)
        self.declared = True
        self._require_connection().reconnect_callbacks.add(partial(self._redeclared, topology))
        # Published apart: a refused publish closes that channel, not the topology's.
        await self._publish_on(topology.exchange, topology.dead_letter_exchange,
                               ensure=False, topology=topology)

    def _redeclared(self, topology: Topology, _: object) -> None:
        """aio-pika declared our bindings again on a new connection: record them
        (``amqp_declared.remember``), or a newer file's next declaration keeps them."""
        if self._recording is None or self._recording.done():
            self._recording = asyncio.get_running_loop().create_task(self._record(topology))

    async def _record(self, topology: Topology) -> None:
        try:
            await remember(self._require_connection, topology, address=self.address,
                           fail=self._fail, errors=_ERRORS)
            _log.info("RabbitMQ at %s: the bindings of %r declared again after the "
                      "reconnection are recorded", self.address, topology.exchange)
        except (*_ERRORS, BrokerError) as exc:
            _log.warning("RabbitMQ at %s: the bindings of %r declared again after the "
                         "reconnection are not recorded (%s): a newer organism file's next "
                         "declaration may leave them", self.address, topology.exchange,
                         redact_text(str(exc)))

    async def _publish_on(self, exchange: str, dead: str, *, ensure: bool,
                          topology: Topology | None) -> None:
        """Publish from now on through a new confirming channel, on exchanges that exist
        (``ensure``: checked by a passive declaration, which needs no permission)."""
        channel = await self._require_connection().lasting(publisher_confirms=True)
        self._exchange = await channel.get_exchange(exchange, ensure=ensure)
        self._dead = await channel.get_exchange(dead, ensure=ensure)
        out = Outbound(channel, exchange, user=self.user, user_id=self._user_id,
                       link=self._link, stats=self.stats, address=self.address,
                       topology=topology, refused=self._reopen_publishing)
        await out.opened()
        self._out = out

    async def _join(self, topology: Topology) -> None:
        """Use the exchanges an administrator declared (a passive declaration needs no
        permission); this user may not declare them."""
        try:
            await self._publish_on(topology.exchange, topology.dead_letter_exchange,
                                   ensure=True, topology=topology)
            if not topology.signed:  # declaring the signing mark is the administrator's too
                await self._check_signing(topology)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            await self.close()
            raise BrokerError(
                f"RabbitMQ at {self.address}: user {self.user!r} may not declare the "
                f"exchanges and queues of {topology.exchange!r}, and they are not declared "
                f"yet ({exc}); declare them once as an administrator: sporeflow "
                f"broker-declare ORGANISM --backend amqp://ADMIN@HOST/VHOST") from exc
        except BrokerError:
            await self.close()
            raise
        except _ERRORS as exc:
            await self.close()
            raise self._fail(f"joining the topology of {topology.exchange!r}", exc) from exc
        _log.info("RabbitMQ at %s: user %r may not declare the topology of %r; using the "
                  "one declared on the broker", self.address, self.user, topology.exchange)

    async def _check_signing(self, topology: Topology) -> None:
        """A signing process marks the organism signed; one without a key must not join."""
        connection = self._require_connection()
        if topology.signed:
            await mark(connection, topology.signing_marker)
        elif await marked(connection, topology.signing_marker):
            raise topology.unsigned_joiner(self.address)

    async def publish(self, spore: Spore, *, routing_key: str | None = None,
                      queue: str | None = None, reply_queue: str | None = None) -> None:
        out, exchange, key = self._route(spore, routing_key, queue)
        await out.publish(spore, exchange, key, reply_queue)

    def publish_soon(self, spore: Spore, done: Published, *, routing_key: str | None = None,
                     queue: str | None = None, reply_queue: str | None = None) -> None:
        out, exchange, key = self._route(spore, routing_key, queue)
        out.publish_soon(spore, exchange, key, reply_queue, done)

    def _route(self, spore: Spore, routing_key: str | None,
               queue: str | None) -> tuple[Outbound, str, str]:
        """Where ``spore`` goes: the publishing channel, the exchange's name and the key;
        raise :class:`Disconnected` while the link is down."""
        out = self._out
        if out is None:
            raise BrokerError(f"RabbitMQ at {self.address} is not open; call open() first")
        link = self._link
        if not link.up:
            raise Disconnected(f"RabbitMQ at {self.address} is {link.state}: spore {spore.id} "
                               f"waits for the connection")
        if queue is None:
            return out, out.exchange, routing_key or ""
        reply_key = self._topology.reply_key(queue) if self._topology is not None else None
        if reply_key is not None:  # one of our reply queues: bound to the exchange
            return out, out.exchange, reply_key
        return out, "", queue  # the default exchange: straight to that queue

    def _cut_off(self) -> None:
        if self._out is not None:
            self._out.cut_off()

    async def _reopen_publishing(self, refused: Outbound) -> None:
        """The broker closes a channel on a refused publish: open another for the next."""
        async with self._reopening:
            exchange, dead = self._exchange, self._dead
            if exchange is None or dead is None or refused is not self._out:
                return  # closed by close(), or reopened for a publish refused alongside
            with contextlib.suppress(*_ERRORS):  # else aio-pika would reopen it too
                await refused.channel.close()
            try:
                await self._publish_on(exchange.name, dead.name, ensure=False,
                                       topology=self._topology)
            except (*_ERRORS, BrokerError) as exc:  # the connection is gone: the next says so
                _log.warning("RabbitMQ at %s: cannot reopen the publishing channel: %s",
                             self.address, redact_text(str(exc)))

    async def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> None:
        connection = self._require_connection()

        def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            on_message(self._received(message, self._windows.of(message.channel,
                                                                  message.delivery_tag or 0)))

        try:
            channel = await connection.lasting(publisher_confirms=False)
            await channel.set_qos(prefetch_count=max(prefetch, 1))
            await channel.declare_queue(queue, passive=True)
            consumer = Consumer(channel, queue, deliver, link=self._link, address=self.address)
            await consumer.start()
        except _ERRORS as exc:
            raise self._fail(f"consuming {queue!r}", exc) from exc
        self._consumers.append(consumer)

    def prefetch(self, queue: str, prefetch: int) -> None:
        for consumer in self._consumers:
            if consumer.queue == queue:
                consumer.prefetch(max(prefetch, 1))

    def is_reply_queue(self, queue: str) -> bool:
        return self._topology is not None and self._topology.reply_key(queue) is not None

    async def reply_queue(self, on_message: OnMessage) -> str:
        connection = self._require_connection()

        def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            on_message(self._received(message))

        topology, exchange = self._topology, self._exchange
        if topology is None or exchange is None:
            raise BrokerError(f"RabbitMQ at {self.address} is not open; call open() first")
        # Named after the user, so that its permissions can name its reply queues only.
        name = f"{topology.reply_prefix(self.user)}{secrets.token_hex(8)}"
        # Not exclusive (RabbitMQ deletes those with their connection), so that it outlives
        # an outage with the responses sent during it; nobody else may consume it.
        limit = self._link.give_up_after
        expires = round(((limit if limit is not None else _REPLY_EXPIRES) + 60) * 1000)
        try:
            channel = await connection.lasting(publisher_confirms=False)
            queue = await channel.declare_queue(name, durable=True,
                                                arguments={"x-expires": expires})
            await queue.bind(exchange, routing_key=topology.reply_key(name))
            consumer = Consumer(channel, name, deliver, link=self._link, address=self.address,
                                no_ack=True, exclusive=True)
            await consumer.start()
        except _ERRORS as exc:
            raise self._fail("declaring the reply queue", exc) from exc
        self._reply = queue
        self._reply_consumer = consumer
        return queue.name

    async def dead_letter(self, message: Any, *, reason: str, error: str,
                          agent: str | None = None, attempts: int = 0) -> None:
        if not isinstance(message, AmqpInbound) or self._dead is None:
            raise BrokerError(f"RabbitMQ at {self.address}: cannot dead-letter {message!r}")
        message.check_current("dead-lettering")
        await put_letter(self._dead, delivery_letter(
            message.raw, message.properties, reason=reason, error=error, agent=agent,
            attempts=attempts), topology=self._topology, address=self.address, stats=self.stats)

    async def dead_letter_spore(self, spore: Spore, *, reason: str, error: str,
                                agent: str | None = None, attempts: int = 0) -> None:
        if self._dead is None or self._topology is None:
            raise BrokerError(f"RabbitMQ at {self.address}: not open, no dead-letter queue")
        if not self._link.up:  # aio-pika would wait for the broker: a stop would wait too
            raise BrokerError(f"RabbitMQ at {self.address} is not connected ({self._link.state})")
        await put_letter(self._dead, spore_letter(
            spore, self._topology.routing_key(spore), reason=reason, error=error, agent=agent,
            attempts=attempts), topology=self._topology, address=self.address, stats=self.stats)

    async def cancel(self) -> None:
        """Stop every consumer; what they hold unacked stays held until ack or close."""
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.stop()  # not consumed again after a reconnection either
        if not self._link.up:  # aio-pika would wait for the connection: close() ends it
            return
        for consumer in consumers:
            try:
                await consumer.cancel()
            except _ERRORS:
                pass  # the channel is gone already: nothing more will come from it

    def abort(self, why: str) -> None:
        """Publishes not confirmed end (the link closed, they are not made again), the
        socket is dropped, and a close under way ends (``ReconnectingConnection.abort``)."""
        self._link.dropped(why)
        connection = self._connection or self._closing
        if connection is not None:
            connection.abort(why)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._closing = connection  # for abort(): this close may wait on the broker
        if self._recording is not None:
            self._recording.cancel()
        reply, self._reply = self._reply, None
        replies = self._reply_consumer
        self._link.close("the backend was closed")
        self._exchange = self._dead = self._out = None
        for consumer in [*self._consumers, replies]:
            if consumer is not None:
                consumer.stop()
        self._consumers, self._reply_consumer = [], None
        if connection is not None and not connection.is_closed:
            if reply is not None and connection.connected.is_set():
                with contextlib.suppress(*_ERRORS):  # it would wait for x-expires else
                    if replies is not None:  # else the delete has the broker cancel it,
                        await replies.cancel()  # which aiormq logs as a WARNING
                    await reply.delete(if_unused=False, if_empty=False)
            try:
                await connection.close()
            except _ERRORS:
                pass  # closing a broken connection: the broker requeues what it held
        self._closing = None

    async def destroy(self, topology: Topology, *, unused_only: bool = False) -> None:
        """``unused_only``: delete no queue a process consumes (RabbitMQ refuses)."""
        connection: AbstractConnection | None = self._connection
        owned = connection is None
        try:
            if connection is None:
                connection = await aio_pika.connect(self._url, timeout=self.connect_timeout)
            await take_away(connection, topology, unused_only=unused_only,
                            address=self.address, fail=self._fail, errors=_ERRORS)
        except _ERRORS as exc:
            raise self._fail(f"deleting the topology of {topology.exchange!r}", exc) from exc
        finally:
            if owned and connection is not None:
                await connection.close()

    async def waiting(self, queue: str) -> int | None:
        return await ready_count(self._require_connection, queue, _ERRORS)

    async def deployment_queues(self, topology: Topology) -> list[str]:
        try:
            connection = await aio_pika.connect(self._url, timeout=self.connect_timeout)
            try:
                return await deployment_queues(connection, topology, address=self.address,
                                               fail=self._fail, errors=_ERRORS)
            finally:
                await connection.close()
        except _ERRORS as exc:
            raise self._fail(f"reading the declaration record of {topology.exchange!r}",
                             exc) from exc

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(**{**self.stats.as_dict(), "state": self._link.state,
                                    "reconnects": self._link.reconnects})

    @property
    def link(self) -> Link:
        return self._link

    def _gave_up(self, failure: BrokerError) -> None:
        """Stop reconnecting: a supervisor restarts the process (see ``link``). Dropped,
        not closed: a connection the broker blocks would close once its alarm cleared."""
        connection = self._connection
        if connection is not None:
            connection.abort(str(failure))

    def boot_record(self, topology: Topology) -> BootRecord:
        return AmqpBootRecord(topology, self._require_connection, fail=self._fail,
                              errors=_ERRORS, address=self.address, user=self.user)

    def _require_connection(self) -> ReconnectingConnection:
        if self._connection is None:
            raise BrokerError(f"RabbitMQ at {self.address} is not open; call open() first")
        return self._connection

