"""The broker interface: what the runtime needs from a message broker, and names on it.

    Topology     the names on the broker: one exchange per organism, one queue per
                 agent, routing keys for direct spores and channel broadcasts, the
                 dead-letter exchange and queue, each broker user's reply queues
    Inbound      one message handed to a consumer: its spore (or why it is not one),
                 ack() once handled, nack(requeue=...) otherwise
    Backend      open / publish / consume / dead_letter / close, an async context
                 manager; implementations: MemoryBackend (in-process) and
                 AmqpBackend (RabbitMQ through aio-pika)

``backend: memory`` (the default) needs none of this: the embedded organism hands
spores to its lanes directly. A backend is used when agents are spread over
processes; see ``bridge`` for how the organism runs on one.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from sporeflow.config import BrokerError, OrganismSpec, SporeflowError
from sporeflow.config.extras import extra_hint
from sporeflow.config.model import DEFAULT_MAX_CRASHES
from sporeflow.config.secrets import ENV_REFERENCE  # secrets_of reads ${NAME} the same way
from sporeflow.pipeline.broker.leftovers import Leftovers
from sporeflow.pipeline.broker.link import Link
from sporeflow.steps import Spore

__all__ = [
    "Backend",
    "BackendStatistics",
    "BootRecord",
    "Inbound",
    "Topology",
    "resolve_backend_url",
]

AMQP_EXTRA_HINT = extra_hint("amqp")
# Reply queues are <exchange>.reply.<user>.<token>, bound by the key reply.<user>.<token>.
REPLY_WORD = "reply"
# What Praval 0.8.4's RabbitMQ backend publishes a broadcast by: broadcast.<type>, with no
# word for the channel (its channels are its own process's), whatever channel it was on.
PRAVAL_BROADCAST_KEY = "broadcast.*"
_KEY_WORD_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_word(text: str) -> str:
    """``text`` as one word of a routing key: ``.``, ``*``, ``#`` and the like %-encoded,
    so that no user name can reach into another's keys or act as a wildcard."""
    return "".join(c if c in _KEY_WORD_SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in text)


@dataclass(frozen=True, slots=True)
class Topology:
    """The names an organism uses on a broker; every process of it declares the same."""

    exchange: str
    subscriptions: Mapping[str, tuple[str, ...]]  # agent -> the channels it subscribes to
    direct_key: str = "agent.{agent}.{type}"
    broadcast_key: str = "channel.{channel}.{type}"
    max_priority: int = 10
    signed: bool = False  # its spores are signed: a process without the key must not join
    # Queue bounds (None: unbounded), as in BrokerSpec: agents' queues, then dead letters'.
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "reject-publish"
    dead_letter_max_length: int | None = None
    dead_letter_max_length_bytes: int | None = None
    # A message too large to hold a spore within it is refused unread (None: not checked).
    max_spore_bytes: int | None = None
    # The agents' queues: classic (priorities) or quorum, where RabbitMQ dead-letters a
    # message given back each agent's max_crashes times (x-delivery-limit, one less).
    queue_type: str = "classic"
    max_crashes: Mapping[str, int] = field(default_factory=dict)
    # The channels external agents' broadcasts are delivered on (config.external): the
    # queues of their subscribers are bound by PRAVAL_BROADCAST_KEY too.
    external_channels: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()  # the file's channels (see ``leftovers``)

    @classmethod
    def of(cls, spec: OrganismSpec) -> Topology:
        """The topology of ``spec``: its broker settings, all of its agents."""
        broker = spec.broker
        return cls(
            exchange=broker.exchange or f"sporeflow.{spec.name}",
            subscriptions={name: agent.subscribe for name, agent in spec.agents.items()},
            direct_key=broker.direct_key, broadcast_key=broker.broadcast_key,
            signed=spec.signs,
            max_length=broker.max_length, max_length_bytes=broker.max_length_bytes,
            overflow=broker.overflow, dead_letter_max_length=broker.dead_letter_max_length,
            dead_letter_max_length_bytes=broker.dead_letter_max_length_bytes,
            max_spore_bytes=spec.limits.max_spore_bytes, queue_type=broker.queue_type,
            max_crashes={name: agent.max_crashes for name, agent in spec.agents.items()},
            external_channels=frozenset(agent.channel for agent in spec.external.values()),
            channels=frozenset(spec.channels))

    def queue_arguments(self, agent: str) -> dict[str, Any]:
        """The arguments of ``agent``'s queue (RabbitMQ's ``x-`` names)."""
        arguments = {"x-dead-letter-exchange": self.dead_letter_exchange,
                     **_bounds(self.max_length, self.max_length_bytes, self.overflow)}
        if self.queue_type != "quorum":  # classic: declared as before quorum existed
            return {"x-max-priority": self.max_priority, **arguments}
        # A quorum queue refuses x-max-priority (RabbitMQ 3.10). A message given back
        # (its consumer died, stopped or nacked it) more than x-delivery-limit times is
        # dead-lettered `delivery_limit`: max_crashes deliveries in all, as the journal's
        # poison rule counts. At-least-once: kept until the dead-letter queue confirms it
        # (RabbitMQ does so with reject-publish only).
        limit = self.max_crashes.get(agent, DEFAULT_MAX_CRASHES) - 1
        arguments.update({"x-queue-type": "quorum", "x-delivery-limit": limit})
        if self.overflow == "reject-publish":
            arguments["x-dead-letter-strategy"] = "at-least-once"
        return arguments

    def dead_letter_arguments(self) -> dict[str, Any]:
        """The arguments of the dead-letter queue."""
        return _bounds(self.dead_letter_max_length, self.dead_letter_max_length_bytes,
                       self.overflow)

    def queue(self, agent: str) -> str:
        """The durable queue an agent's consumers (in any process) share."""
        return f"{self.exchange}.{agent}"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange}.dead"

    @property
    def signing_marker(self) -> str:
        """An exchange that exists on the broker once a signing process has declared it."""
        return f"{self.exchange}.signed"

    def unsigned_joiner(self, address: str) -> BrokerError:
        """The error of a process without a key joining an organism that signs."""
        return BrokerError(
            f"the processes of {self.exchange!r} on {address} sign their spores (the "
            f"broker holds the exchange {self.signing_marker!r}), but this process has no "
            f"signing key, so every spore it sent would be refused: set organism.signing "
            f"(the same key_env) here too; if signing was turned off for good, delete that "
            f"exchange")

    # A ':' is in no agent's name: these never meet an agent's queue.
    def boot_marker(self, agent: str) -> str:
        """An exchange that exists once the deployment sent ``agent``'s boot spore."""
        return f"{self.exchange}.booted:{agent}"

    def boot_lock(self, agent: str) -> str:
        """An exclusive queue held by the one process booting ``agent`` just now."""
        return f"{self.exchange}.booting:{agent}"

    @property
    def record_queue(self) -> str:
        """A queue holding the record of the bindings last declared (``leftovers``)."""
        return f"{self.exchange}.declared:topology"

    @property
    def declaring_lock(self) -> str:
        """An exclusive queue held by the one process declaring the topology just now."""
        return f"{self.exchange}.declaring:topology"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.exchange}.dead-letters"

    def reply_prefix(self, user: str) -> str:
        """How the reply queues of broker user ``user`` are named: a per-process user may
        declare and read these queues only (``sporeflow broker-permissions``)."""
        return f"{self.exchange}.{REPLY_WORD}.{key_word(user)}."

    def reply_key(self, queue: str) -> str | None:
        """The routing key that reaches reply queue ``queue`` through the exchange, where
        it is bound (None: not a reply queue of this organism). Responses never go by the
        default exchange: publishing there would reach any queue by its name."""
        head = f"{self.exchange}.{REPLY_WORD}."
        return f"{REPLY_WORD}.{queue[len(head):]}" if queue.startswith(head) else None

    def routing_key(self, spore: Spore) -> str:
        """Direct spores go by their recipient, broadcasts by their channel."""
        if spore.to_agent is not None:
            return self.direct_key.format(agent=spore.to_agent, type=spore.spore_type.value)
        return self.broadcast_key.format(channel=spore.channel, type=spore.spore_type.value)

    def bindings(self, agent: str) -> tuple[str, ...]:
        """The topic patterns binding ``agent``'s queue: its own key, its channels' keys."""
        own = self.direct_key.format(agent=agent, type="*")
        channels = self.subscriptions.get(agent, ())
        foreign = ((PRAVAL_BROADCAST_KEY,) if not self.external_channels.isdisjoint(channels)
                   else ())
        return (own, *(self.broadcast_key.format(channel=c, type="*") for c in channels),
                *foreign)

    def declared(self) -> dict[str, tuple[str, ...]]:
        """Each agent's queue and the patterns binding it: the record of this topology."""
        return {self.queue(agent): self.bindings(agent) for agent in self.subscriptions}

    def guessed(self) -> dict[str, tuple[str, ...]]:
        """What an older declaration may have bound the agents' queues by, when no record
        says: the key of each channel of the file (and of any), and Praval's."""
        channels = self.channels.union(*self.subscriptions.values())
        keys = (*(self.broadcast_key.format(channel=c, type="*") for c in sorted(channels)),
                PRAVAL_BROADCAST_KEY)
        return {self.queue(agent): keys for agent in self.subscriptions}

def _bounds(length: int | None, size: int | None, overflow: str) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if length is not None:
        bounds["x-max-length"] = length
    if size is not None:
        bounds["x-max-length-bytes"] = size
    if bounds:
        bounds["x-overflow"] = overflow
    return bounds

class Inbound(Protocol):
    """A message a consumer received; settle it exactly once with ack or nack."""

    @property
    def spore(self) -> Spore | None:
        """The decoded spore; None when ``rejection`` says why it is not one."""

    @property
    def rejection(self) -> tuple[str, SporeflowError] | None:
        """``(reason, error)`` when the message is no valid spore (e.g. ``bad signature``)."""

    @property
    def redelivered(self) -> bool:
        """True when the broker delivered it before (a consumer died or gave it back)."""

    @property
    def reply_queue(self) -> str | None:
        """Where the sender of a request awaits its response (AMQP ``reply_to``)."""

    @property
    def user_id(self) -> str | None:
        """The broker user that published it, as the broker validated it (AMQP ``user_id``;
        None when the publisher set none)."""

    @property
    def given_back(self) -> bool:
        """True once the broker took it back unacked (its connection was lost): it comes
        again, to this or another consumer, and its handler's output is made again."""

    def ack_nowait(self) -> bool:
        """Done with it, acked without waiting (with others of this turn of the loop):
        True if so; False when :meth:`ack` must be awaited instead. Raises as ``ack``."""

    async def ack(self) -> None:
        """Done with it: the broker forgets it."""

    async def nack(self, *, requeue: bool) -> None:
        """Give it back (``requeue=True``) or drop it to the dead-letter exchange."""

OnMessage = Callable[[Inbound], None]
# Told once per publish_soon: None once the broker took the spore, else the error.
Published = Callable[[BaseException | None], None]

class BootRecord(Protocol):
    """What a deployment on a broker knows of its boot spores (see ``boots``)."""

    def holding(self, agent: str) -> AbstractAsyncContextManager[None]:
        """Hold ``agent``'s boot lock, waiting while another process holds it; a process
        that dies lets go of it."""

    async def booted(self, agent: str) -> bool:
        """Whether the deployment sent ``agent``'s boot spore."""

    async def note(self, agent: str) -> None:
        """Record for good that ``agent``'s boot spore was sent."""

@dataclass(slots=True)
class BackendStatistics:
    """Counters of one backend connection, for tests and ``organism.stats()``."""

    address: str
    published: int = 0  # confirmed by the broker
    consumed: int = 0
    acked: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    failed_publishes: int = 0
    queues: dict[str, int] = field(default_factory=dict)  # messages ready, where known
    state: str = "connected"  # the link's: connecting, connected, disconnected, gave up...
    reconnects: int = 0  # connections made again after a loss

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

_PUBLISHING: set[asyncio.Task[None]] = set()  # a reference to each publish_soon's task


def _tell(done: Published, task: asyncio.Task[None]) -> None:
    _PUBLISHING.discard(task)
    done(asyncio.CancelledError() if task.cancelled() else task.exception())

class Backend(abc.ABC):
    """A connection to a broker that carries spores between the processes of an organism.

    ``publish`` returns once the broker has taken the spore (publisher confirms);
    a consumer's messages stay the broker's until acked, and a consumer that goes
    away (``close``, or a killed process) gives its unacked messages back.
    ``link`` is the connection's state across outages (see ``link``).
    """

    address: str = "?"
    _link: Link | None = None
    leftovers: Leftovers = Leftovers()  # what the last open() took away (``leftovers``)

    @property
    def link(self) -> Link:
        """The connection's state; a backend that cannot lose it is always up."""
        if self._link is None:
            self._link = Link(self.address, up=True)
        return self._link

    @abc.abstractmethod
    async def open(self, topology: Topology) -> None:
        """Connect and declare ``topology`` (idempotent: every process declares it),
        taking away the bindings and queues of agents it no longer declares (one
        process at a time; ``leftovers`` says what was taken)."""

    @abc.abstractmethod
    async def publish(self, spore: Spore, *, routing_key: str | None = None,
                      queue: str | None = None, reply_queue: str | None = None) -> None:
        """Publish to the exchange by ``routing_key``, or straight to ``queue``.

        ``reply_queue`` tells the consumer of a request where to send its response.
        Raises :class:`BrokerError` when the broker refuses or cannot route it.
        """

    def publish_soon(self, spore: Spore, done: Published, *,
                     routing_key: str | None = None, queue: str | None = None,
                     reply_queue: str | None = None) -> None:
        """Start :meth:`publish` and return; ``done`` is told None once the broker took
        the spore, or the error ``publish`` would raise. (A backend may publish many so
        without a coroutine each.)"""
        task = asyncio.get_running_loop().create_task(self.publish(
            spore, routing_key=routing_key, queue=queue, reply_queue=reply_queue))
        _PUBLISHING.add(task)
        task.add_done_callback(partial(_tell, done))

    @abc.abstractmethod
    async def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> None:
        """Call ``on_message`` for each message of ``queue``, at most ``prefetch`` unacked."""

    @abc.abstractmethod
    def prefetch(self, queue: str, prefetch: int) -> None:
        """From now on, at most ``prefetch`` unacked messages of ``queue`` for its consumer
        here (a reload changed its agent's concurrency); a broker away, once it is back:
        this never waits for the broker."""

    @abc.abstractmethod
    async def reply_queue(self, on_message: OnMessage) -> str:
        """Declare this connection's own reply queue, consume it, and return its name."""

    @abc.abstractmethod
    def is_reply_queue(self, queue: str) -> bool:
        """Whether ``queue`` (a request's reply_to) is a reply queue of this organism's:
        only there does a response go by that name."""

    @abc.abstractmethod
    async def dead_letter(self, message: Inbound, *, reason: str, error: str,
                          agent: str | None = None, attempts: int = 0) -> None:
        """Put ``message`` in the dead-letter queue with why (the caller acks it after)."""

    @abc.abstractmethod
    async def dead_letter_spore(self, spore: Spore, *, reason: str, error: str,
                                agent: str | None = None, attempts: int = 0) -> None:
        """Put ``spore``, dead-lettered in this process before it was published (no
        delivery), in the dead-letter queue with why (see ``letters_out``)."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop every consumer; messages they hold unacked stay held until ack or close."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming and disconnect; unacked messages go back to their queues."""

    def abort(self, why: str) -> None:
        """Disconnect now, waiting for the broker no more (a stop ran out of time): what
        waits on it ends, unacked messages go back to their queues. A backend whose broker
        always answers has nothing to drop."""
        return None

    @abc.abstractmethod
    async def destroy(self, topology: Topology, *, unused_only: bool = False) -> None:
        """Delete the queues and exchanges of ``topology`` (tests, ``broker-delete``);
        ``unused_only``: refuse (:class:`BrokerError`) a queue a process consumes."""

    async def waiting(self, queue: str) -> int | None:
        """How many messages ``queue`` holds that no consumer has taken (None: unknown)."""
        return None

    async def deployment_queues(self, topology: Topology) -> list[str]:
        """The agents' queues of ``topology``'s deployment, those a declaration kept for
        the spores of agents since removed included (``broker-delete``'s preview)."""
        return sorted(topology.declared())

    @abc.abstractmethod
    def statistics(self) -> BackendStatistics:
        """A snapshot of this connection's counters."""

    def boot_record(self, topology: Topology) -> BootRecord | None:
        """Where the deployment of ``topology`` records its boot spores, once open (None:
        nowhere, and every start boots)."""
        return None

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

# -- choosing a backend --------------------------------------------------------------

def resolve_backend_url(text: str, environ: Mapping[str, str] | None = None, *,
                        origin: str = "organism.backend") -> str:
    """Expand each ``${NAME}`` in ``text`` from the environment; ``origin`` names where
    ``text`` was written, for the error when one is not set.

    Credentials stay out of organism files: write ``backend: ${SPOREFLOW_BROKER}``,
    or ``amqp://app:${RABBIT_PASSWORD}@host:5672/``.
    """
    env = os.environ if environ is None else environ

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            # The variable's name, not ${NAME}: in a URL's password place, that is masked.
            raise BrokerError(
                f"{origin} {text!r} names the environment variable {name}, which is not "
                f"set; export {name}=<{_stands_for(text, match)}>")
        return env[name]

    return ENV_REFERENCE.sub(expand, text)


def _stands_for(text: str, match: re.Match[str]) -> str:
    """What the ``${NAME}`` matched in ``text`` stands for, as the fix says it."""
    if match.group(0) == text:
        return "the broker's URL (amqp://USER:PASSWORD@HOST:5672/)"
    before, after = text[:match.start()], text[match.end():]
    credentials = before.partition("://")[2]
    if ":" in credentials and "@" not in credentials and after.startswith("@"):
        return f"the password of the broker's user {credentials.partition(':')[0]!r}"
    return "the part of the broker's URL it stands for"
