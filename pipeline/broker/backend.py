"""The broker interface: what the runtime needs from a message broker, and names on it.

    Topology     the names on the broker: one exchange per organism, one queue per
                 agent, routing keys for direct spores and channel broadcasts, the
                 dead-letter exchange and queue
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
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sporeflow.config import BrokerError, OrganismSpec, SporeflowError
from sporeflow.steps import Spore

__all__ = [
    "Backend",
    "BackendStatistics",
    "Inbound",
    "Topology",
    "resolve_backend_url",
]

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
AMQP_EXTRA_HINT = "pip install 'sporeflow[amqp]'"

@dataclass(frozen=True, slots=True)
class Topology:
    """The names an organism uses on a broker; every process of it declares the same."""

    exchange: str
    subscriptions: Mapping[str, tuple[str, ...]]  # agent -> the channels it subscribes to
    direct_key: str = "agent.{agent}.{type}"
    broadcast_key: str = "channel.{channel}.{type}"
    max_priority: int = 10

    @classmethod
    def of(cls, spec: OrganismSpec) -> Topology:
        """The topology of ``spec``: its broker settings, all of its agents."""
        broker = spec.broker
        return cls(
            exchange=broker.exchange or f"sporeflow.{spec.name}",
            subscriptions={name: agent.subscribe for name, agent in spec.agents.items()},
            direct_key=broker.direct_key, broadcast_key=broker.broadcast_key)

    def queue(self, agent: str) -> str:
        """The durable queue an agent's consumers (in any process) share."""
        return f"{self.exchange}.{agent}"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange}.dead"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.exchange}.dead-letters"

    def routing_key(self, spore: Spore) -> str:
        """Direct spores go by their recipient, broadcasts by their channel."""
        if spore.to_agent is not None:
            return self.direct_key.format(agent=spore.to_agent, type=spore.spore_type.value)
        return self.broadcast_key.format(channel=spore.channel, type=spore.spore_type.value)

    def bindings(self, agent: str) -> tuple[str, ...]:
        """The topic patterns binding ``agent``'s queue: its own key, its channels' keys."""
        own = self.direct_key.format(agent=agent, type="*")
        return (own, *(self.broadcast_key.format(channel=c, type="*")
                       for c in self.subscriptions.get(agent, ())))

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

    async def ack(self) -> None:
        """Done with it: the broker forgets it."""

    async def nack(self, *, requeue: bool) -> None:
        """Give it back (``requeue=True``) or drop it to the dead-letter exchange."""

OnMessage = Callable[[Inbound], None]

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

class Backend(abc.ABC):
    """A connection to a broker that carries spores between the processes of an organism.

    ``publish`` returns once the broker has taken the spore (publisher confirms);
    a consumer's messages stay the broker's until acked, and a consumer that goes
    away (``close``, or a killed process) gives its unacked messages back.
    """

    address: str = "?"

    @abc.abstractmethod
    async def open(self, topology: Topology) -> None:
        """Connect and declare ``topology`` (idempotent: every process declares it)."""

    @abc.abstractmethod
    async def publish(self, spore: Spore, *, routing_key: str | None = None,
                      queue: str | None = None, reply_queue: str | None = None) -> None:
        """Publish to the exchange by ``routing_key``, or straight to ``queue``.

        ``reply_queue`` tells the consumer of a request where to send its response.
        Raises :class:`BrokerError` when the broker refuses or cannot route it.
        """

    @abc.abstractmethod
    async def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> None:
        """Call ``on_message`` for each message of ``queue``, at most ``prefetch`` unacked."""

    @abc.abstractmethod
    async def reply_queue(self, on_message: OnMessage) -> str:
        """Declare this connection's own reply queue, consume it, and return its name."""

    @abc.abstractmethod
    async def dead_letter(self, message: Inbound, *, reason: str, error: str,
                          agent: str | None = None, attempts: int = 0) -> None:
        """Put ``message`` in the dead-letter queue with why (the caller acks it after)."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop every consumer; messages they hold unacked stay held until ack or close."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming and disconnect; unacked messages go back to their queues."""

    @abc.abstractmethod
    async def destroy(self, topology: Topology) -> None:
        """Delete the queues and exchanges of ``topology`` (tests, teardown)."""

    @abc.abstractmethod
    def statistics(self) -> BackendStatistics:
        """A snapshot of this connection's counters."""

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

# -- choosing a backend --------------------------------------------------------------

def resolve_backend_url(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand each ``${NAME}`` in ``text`` from the environment.

    Credentials stay out of organism files: write ``backend: ${SPOREFLOW_BROKER}``,
    or ``amqp://app:${RABBIT_PASSWORD}@host:5672/``.
    """
    env = os.environ if environ is None else environ

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise BrokerError(
                f"organism.backend {text!r} names ${{{name}}}, which is not set in the "
                f"environment; export {name}=amqp://user:password@host:5672/ (or the part "
                f"it stands for)")
        return env[name]

    return _ENV_REFERENCE.sub(expand, text)
