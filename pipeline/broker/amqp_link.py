"""The RabbitMQ backend's connection: aio-pika's robust connection, its state in a ``Link``.

``aio_pika.connect_robust`` reconnects by itself and, on the new connection, declares
again what was declared through its channels: exchanges, queues and their bindings,
consumers (same callbacks, same prefetch), the reply queue. Deliveries that were not
acked go back to their queues (the broker requeues them when a connection goes) and
come again, marked redelivered; a publish the loss cut off is not repeated by aio-pika
(its docs leave that to the application: the bridge's ``publisher`` does it). Here:

- the pause between attempts grows (``link.Backoff``: from the URL's
  ``reconnect_interval``, aio-pika's own parameter, 0.5 s unless given, doubling up to
  20 times that, with jitter) rather than staying the same;
- the first connection follows the same rule (aio-pika's ``fail_fast`` off): attempts
  paused by the backoff and reported, until the ``Link`` gives up (``give_up_after``);
- the connection's close and reconnect callbacks drive the backend's ``Link`` (lost,
  each failed attempt, reconnected once everything was declared again);
- ``channel()`` gives one-off channels, never restored (a check, a lock: what a
  failed declaration closes must stay closed); ``lasting()`` gives the channels that
  are restored, for the topology, publishing, consumers and the reply queue;
- ``abort()`` closes it without a word to the broker, its socket dropped: under its
  memory or disk alarm RabbitMQ keeps a publishing connection up but reads nothing
  from it (``connection.blocked``), and a close waits for it as long as the alarm lasts;
- that the broker blocks it, or unblocks it, is told to the ``Link`` (``amqp_blocked``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustChannel
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL

from sporeflow.config import BrokerError
from sporeflow.pipeline.broker.amqp_blocked import listen
from sporeflow.pipeline.broker.link import Backoff, Link

__all__ = ["RECONNECT_BASE", "ReconnectingConnection", "connect", "login_of", "through_losses"]

RECONNECT_BASE = 0.5  # seconds: the first pause after a failed attempt
# The broker's refusals of this process (its credentials; a virtual host it may not use,
# which aiormq reads as a frame out of turn): at the first connection, what trying again
# cannot mend.
REFUSED = (aiormq.exceptions.AuthenticationError, aiormq.exceptions.ProbableAuthenticationError,
           aiormq.exceptions.ConnectionNotAllowed, aiormq.exceptions.IncompatibleProtocolError,
           aiormq.exceptions.ProtocolSyntaxError)
_LOSS_SEEN_WITHIN = 1.0  # seconds: an error may come before the connection's close is seen
_T = TypeVar("_T")
_log = logging.getLogger("sporeflow.broker.amqp")


class _Sockets(TransportFactory):
    """aiormq's way of opening the socket (TLS for ``amqps``), the last one kept: a
    connection the broker reads nothing from ends only by dropping it."""

    def __init__(self, tls: bool) -> None:
        self._opening = TLSTransportFactory() if tls else TCPTransportFactory()
        self._writer: asyncio.StreamWriter | None = None

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader,
                                                              asyncio.StreamWriter]:
        reader, self._writer = await self._opening.create(url, **kwargs)
        return reader, self._writer

    def drop(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()


class ReconnectingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, pausing longer after each failed attempt."""

    backoff: Backoff

    def __init__(self, url: URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._sockets = _Sockets(url.scheme == "amqps")
        self.kwargs["transport_factory"] = self._sockets  # aio-pika passes these to aiormq
        self._aborting: asyncio.Task[None] | None = None
        self.on_blocked: Callable[[str | None], None] | None = None
        listen(self)

    def underlay(self) -> object | None:
        """aiormq's connection, this one's now (``amqp_blocked.Listener``)."""
        return self.transport.connection if self.transport is not None else None

    def heard_blocked(self, reason: str | None) -> None:
        if self.on_blocked is not None:
            self.on_blocked(reason)

    def abort(self, why: str) -> None:
        """Close, the socket dropped at once: nothing waits for the broker's answer, and
        what waited on it raises ConnectionClosed saying ``why`` (aio-pika's default, a
        CancelledError, would cancel whoever waited)."""
        if self._aborting is None:  # first: once closing, it is not made again
            self._aborting = asyncio.ensure_future(
                self.close(aiormq.exceptions.ConnectionClosed(320, why)))
            self._aborting.add_done_callback(lambda task: task.cancelled() or task.exception())
        self._sockets.drop()

    # aio-pika sleeps this long between attempts, and sets it from ``reconnect_interval``:
    # here that is the backoff's base, and each read the pause now due.
    @property
    def reconnect_interval(self) -> float:
        return self.backoff.pause()

    @reconnect_interval.setter
    def reconnect_interval(self, base: float) -> None:
        self.backoff = Backoff(base)

    # A plain channel where aio-pika's gives a robust one: the lasting ones are asked for.
    def channel(self, channel_number: int | None = None,  # type: ignore[override]
                publisher_confirms: bool = True,
                on_return_raises: bool = False) -> AbstractChannel:
        """A one-off channel: not restored after a reconnection, nor after the broker
        closed it (a refused or failed declaration)."""
        if self.transport is None:
            raise aiormq.exceptions.ChannelInvalidStateError("the connection is not open")
        return aio_pika.Channel(self, channel_number=channel_number,
                                publisher_confirms=publisher_confirms,
                                on_return_raises=on_return_raises)

    def lasting(self, *, publisher_confirms: bool) -> AbstractRobustChannel:
        """A channel declared again, with what was declared and consumed through it,
        after each reconnection (and after the broker closed it)."""
        return super().channel(publisher_confirms=publisher_confirms,
                               on_return_raises=publisher_confirms)


async def connect(url: str, link: Link, *, timeout: float, name: str) -> ReconnectingConnection:
    """Connect to ``url``, trying again as after a loss (``link``'s rule: backoff, each
    failed attempt reported) until ``link`` gives up, which raises :class:`BrokerError`;
    then report the connection's losses, failed attempts and reconnections to ``link``.
    The caller tells ``link`` it is connected once its topology is declared."""
    pace: dict[str, Any] = ({} if "reconnect_interval" in URL(url).query
                            else {"reconnect_interval": RECONNECT_BASE})
    # Not aio_pika.connect_robust: its first attempt fails fast, before the callbacks that
    # report attempts are set. fail_fast off, the first attempts retry as later ones do.
    connection = ReconnectingConnection(URL(url), client_properties={"connection_name": name},
                                        fail_fast=False, **pace)

    def on_close(_: object, cause: BaseException | None = None) -> None:
        if link.up:
            connection.backoff.reset()  # each outage starts from the shortest pause
        if isinstance(cause, REFUSED):
            link.refused(cause)
        else:
            link.lost(cause)

    def on_reconnect(_: object) -> None:
        connection.backoff.reset()
        link.connected()

    connection.close_callbacks.add(on_close)
    connection.reconnect_callbacks.add(on_reconnect)
    connection.on_blocked = link.blocked
    link.connecting()
    try:
        await link.unless_ended(connection.connect(timeout=timeout))
    except BaseException:  # given up, or cancelled (a stop while connecting)
        await connection.close()
        raise
    connection.backoff.reset()  # a later outage starts from the shortest pause
    return connection


async def through_losses(connection: ReconnectingConnection, link: Link,
                         attempt: Callable[[], Awaitable[_T]], *, doing: str) -> _T:
    """Run ``attempt`` (``doing`` it, in words); when it fails because the connection was
    lost meanwhile, wait for the robust connection to come back (until ``link`` gives up,
    which raises :class:`BrokerError`) and run it again: a broker restarting while a
    process starts is waited out by the same rule as an outage later. The broker's own
    refusals (a channel it closed: a precondition, access, a lock) are raised at once;
    once ``link`` gave up or was closed, what it says is raised."""
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if link.failure is not None:  # why the connection went, not what that cut off
                raise BrokerError(str(link.failure)) from exc
            if not _from_loss(exc) or not await _was_lost(connection):
                raise
            _log.warning("RabbitMQ at %s: the connection was lost while %s; doing it again "
                         "once reconnected", link.address, doing)
        await link.unless_ended(connection.connected.wait())


def _from_loss(error: BaseException) -> bool:
    """Whether ``error`` (or the AMQP error a BrokerError wraps) may come of a lost
    connection, rather than of a channel the broker closed on purpose."""
    if isinstance(error, BrokerError):
        if error.__cause__ is None:
            return False
        error = error.__cause__
    return not isinstance(error, aiormq.exceptions.ChannelClosed)


async def _was_lost(connection: ReconnectingConnection) -> bool:
    """Whether the connection is down (not closed by us), watching a moment for it."""
    loop = asyncio.get_running_loop()
    until = loop.time() + _LOSS_SEEN_WITHIN
    while not connection.is_closed:
        if not connection.connected.is_set():
            return True
        if loop.time() >= until:
            return False
        await asyncio.sleep(0.02)
    return False


def login_of(url: str) -> tuple[str, str | None]:
    """The user ``url`` logs in as (aiormq's default: guest), and the ``user_id`` to
    publish with: none under EXTERNAL authentication, where the certificate names the
    user (name it in the URL too, ``amqps://NAME@host/?auth=external``, for its reply
    queues' names)."""
    parsed = URL(url)
    user = parsed.user or "guest"
    return user, (user if parsed.query.get("auth", "plain").lower() == "plain" else None)
