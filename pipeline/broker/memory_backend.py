"""An in-process broker with the semantics of the RabbitMQ topology, for tests and tools.

    MemoryBroker   the shared state: a topic exchange, bounded priority queues,
                   the dead-letter queue; one per "cluster"
    MemoryBackend  one connection to it (a Backend): several organisms sharing one
                   broker behave like processes sharing a RabbitMQ: competing
                   consumers, redelivery of what a closed connection left unacked

Queues are bounded (``max_queued``): a publisher waits for room, as a sender
waits on a full memory stream. Messages whose ``expires_at`` passed while queued
go to the dead-letter queue with reason ``expired``, as RabbitMQ's per-message
TTL does. Nothing is serialised: spores pass as the immutable objects they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from sporeflow.config import BrokerError, SporeflowError
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.broker.backend import (
    Backend,
    BackendStatistics,
    BootRecord,
    Inbound,
    OnMessage,
    Topology,
)
from sporeflow.pipeline.broker.leftovers import Leftovers, Plan, Record
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.steps import PriorityBuckets, Spore, utc_now

__all__ = ["MemoryBackend", "MemoryBroker"]

_connection_ids = itertools.count(1)
_log = logging.getLogger("sporeflow.broker.memory")


@dataclass(slots=True)
class _Message:
    spore: Spore
    reply_queue: str | None
    redelivered: bool = False


@dataclass(eq=False, slots=True)
class _Consumer:
    connection: MemoryBackend
    on_message: OnMessage
    prefetch: int
    unacked: int = 0
    no_ack: bool = False


@dataclass(eq=False, slots=True)
class _Queue:
    name: str
    messages: PriorityBuckets[_Message] = field(default_factory=PriorityBuckets)
    consumers: list[_Consumer] = field(default_factory=list)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    turn: int = 0  # round-robin position among consumers
    owner: MemoryBackend | None = None  # an exclusive (reply) queue's connection


class MemoryBroker:
    """The broker's state, shared by the :class:`MemoryBackend` connections to it."""

    def __init__(self, *, max_queued: int = 10_000, max_dead_letters: int = 10_000,
                 now: Callable[[], datetime] = utc_now) -> None:
        self.max_queued = max_queued
        self.now = now
        self.queues: dict[str, _Queue] = {}
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> (pattern, queue)
        self.dead_letters: deque[DeadLetter] = deque(maxlen=max_dead_letters)
        self.booted: set[str] = set()  # boot markers (see Topology.boot_marker)
        self.boot_locks: dict[str, asyncio.Lock] = {}
        self.records: dict[str, Record] = {}  # exchange -> its bindings declared last

    def declare(self, topology: Topology, address: str) -> Leftovers:
        """Declare ``topology``, taking away what the one declared before had and it has
        not (``leftovers``; at once: no other connection declares meanwhile)."""
        if topology.signed:  # a process without a key must not join a signing organism
            self.bindings.setdefault(topology.signing_marker, [])
        elif topology.signing_marker in self.bindings:
            raise topology.unsigned_joiner(address)
        bindings = self.bindings.setdefault(topology.exchange, [])
        now = topology.declared()
        for name, patterns in now.items():
            self.queues.setdefault(name, _Queue(name))
            bindings.extend((p, name) for p in patterns if (p, name) not in bindings)
        before = self.records.get(topology.exchange)
        if before is None:
            before = topology.guessed()
        queues = self.queues
        plan = Plan.of(now, before, {name: (len(queues[name].messages),
                                            len(queues[name].consumers))
                                     for name in Plan.asked(now, before) if name in queues})
        unbound = [(name, p) for name, p in plan.unbind if (p, name) in bindings]
        bindings[:] = [b for b in bindings if (b[1], b[0]) not in unbound]
        deleted, kept = [], []
        for name in plan.orphans:
            queue = queues[name]
            if queue.messages or queue.consumers:
                kept.append((name, len(queue.messages), len(queue.consumers)))
            else:
                deleted.append(queues.pop(name).name)
        self.records[topology.exchange] = plan.record(now, (name for name, _, _ in kept))
        return Leftovers(tuple(unbound), tuple(deleted), tuple(kept), left=tuple(plan.left))

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        return [self.queues[name] for pattern, name in self.bindings.get(exchange, ())
                if name in self.queues and _topic(pattern).fullmatch(routing_key)]

    async def push(self, queue: _Queue, message: _Message) -> None:
        while len(queue.messages) >= self.max_queued:
            queue.room.clear()
            await queue.room.wait()
        queue.messages.push(message.spore.priority, message)
        self.pump(queue)

    def pump(self, queue: _Queue) -> None:
        """Hand queued messages to consumers with room, round-robin, highest priority first."""
        messages, consumers = queue.messages, queue.consumers
        while messages and consumers:
            for step in range(len(consumers)):
                consumer = consumers[(queue.turn + step) % len(consumers)]
                if consumer.no_ack or consumer.unacked < consumer.prefetch:
                    queue.turn = (queue.turn + step + 1) % len(consumers)
                    break
            else:
                return
            message = messages.pop()
            queue.room.set()
            expires_at = message.spore.expires_at
            if expires_at is not None and expires_at <= self.now():
                self.dead_letters.append(DeadLetter(
                    message.spore, Reason.EXPIRED, f"expired at {expires_at.isoformat()} while "
                                              f"queued in {queue.name!r}"))
                continue
            inbound = _MemoryInbound(self, queue, consumer, message)
            if not consumer.no_ack:
                consumer.unacked += 1
                consumer.connection.unacked[id(inbound)] = inbound
            consumer.connection.stats.consumed += 1
            consumer.on_message(inbound)

    def give_back(self, queue: _Queue, message: _Message) -> None:
        message.redelivered = True
        queue.messages.push(message.spore.priority, message)
        self.pump(queue)

    def ready(self, name: str) -> int:
        """How many messages ``name`` holds that no consumer has taken."""
        queue = self.queues.get(name)
        return len(queue.messages) if queue is not None else 0

    def delete(self, topology: Topology) -> None:
        for agent in topology.subscriptions:
            self.queues.pop(topology.queue(agent), None)
        self.bindings.pop(topology.exchange, None)
        self.records.pop(topology.exchange, None)
        self.booted -= {topology.boot_marker(agent) for agent in topology.subscriptions}


class _MemoryInbound:
    __slots__ = ("_broker", "_queue", "_consumer", "_message", "_settled", "_spore",
                 "given_back")

    def __init__(self, broker: MemoryBroker, queue: _Queue, consumer: _Consumer,
                 message: _Message) -> None:
        self._broker, self._queue, self._consumer = broker, queue, consumer
        self._message = message
        self._settled = consumer.no_ack
        self.given_back = False  # its connection closed with it unacked
        # A fresh object per delivery, as a decoded AMQP message is: the runtime tells
        # deliveries apart by identity, and one message may reach several queues.
        self._spore = dataclasses.replace(message.spore)

    @property
    def spore(self) -> Spore | None:
        return self._spore

    @property
    def rejection(self) -> tuple[str, SporeflowError] | None:
        return None

    @property
    def redelivered(self) -> bool:
        return self._message.redelivered

    @property
    def reply_queue(self) -> str | None:
        return self._message.reply_queue

    @property
    def user_id(self) -> str | None:
        return None  # in-process: there are no broker users

    def _settle(self) -> bool:
        if self._settled:
            return False  # settled already, or its connection closed and gave it back
        self._settled = True
        self._consumer.unacked -= 1
        self._consumer.connection.unacked.pop(id(self), None)
        return True

    def ack_nowait(self) -> bool:
        return False  # acked by ack(), which may deliver the next at once

    async def ack(self) -> None:
        if self._settle():
            self._consumer.connection.stats.acked += 1
            self._broker.pump(self._queue)

    async def nack(self, *, requeue: bool) -> None:
        if not self._settle():
            return
        self._consumer.connection.stats.nacked += 1
        if requeue:
            self._broker.give_back(self._queue, self._message)
        else:
            self._broker.dead_letters.append(DeadLetter(
                self._message.spore, "rejected", "a consumer rejected it"))
            self._broker.pump(self._queue)


class MemoryBackend(Backend):
    """One connection to a :class:`MemoryBroker` (a private one when none is given)."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self.address = f"memory://{id(self.broker):x}"
        self.stats = BackendStatistics(self.address)
        self._topology: Topology | None = None
        self._consumers: list[tuple[_Queue, _Consumer]] = []
        self.unacked: dict[int, _MemoryInbound] = {}  # what it holds, to give back on close
        self._reply: _Queue | None = None
        self._closed = False

    def _require_open(self) -> Topology:
        if self._topology is None or self._closed:
            raise BrokerError(f"{self.address} is not open; call open(topology) first")
        return self._topology

    async def open(self, topology: Topology) -> None:
        self.leftovers = self.broker.declare(topology, self.address)
        self.leftovers.report(_log, self.address, topology.exchange)
        self._topology = topology
        self._closed = False

    async def publish(self, spore: Spore, *, routing_key: str | None = None,
                      queue: str | None = None, reply_queue: str | None = None) -> None:
        topology = self._require_open()
        if queue is not None:
            target = self.broker.queues.get(queue)
            targets = [target] if target is not None else []
        else:
            targets = self.broker.route(topology.exchange, routing_key or "")
        if not targets:
            self.stats.failed_publishes += 1
            raise BrokerError(f"{self.address}: no queue takes spore {spore.id} (routing key "
                              f"{routing_key!r}, queue {queue!r}); it is unroutable")
        for target in targets:
            await self.broker.push(target, _Message(spore, reply_queue))
        self.stats.published += 1

    async def consume(self, queue: str, on_message: OnMessage, *, prefetch: int) -> None:
        self._require_open()
        target = self.broker.queues.get(queue)
        if target is None:
            raise BrokerError(f"{self.address}: no queue {queue!r} to consume; open() the "
                              f"topology that declares it")
        consumer = _Consumer(self, on_message, max(prefetch, 1))
        target.consumers.append(consumer)
        self._consumers.append((target, consumer))
        self.broker.pump(target)

    def prefetch(self, queue: str, prefetch: int) -> None:
        for held, consumer in self._consumers:
            if held.name == queue:
                consumer.prefetch = max(prefetch, 1)
                self.broker.pump(held)

    async def reply_queue(self, on_message: OnMessage) -> str:
        self._require_open()
        name = f"reply.{next(_connection_ids)}.{id(self):x}"
        queue = _Queue(name, owner=self)
        self.broker.queues[name] = queue
        queue.consumers.append(_Consumer(self, on_message, 0, no_ack=True))
        self._reply = queue
        return name

    async def waiting(self, queue: str) -> int | None:
        return self.broker.ready(queue)

    def is_reply_queue(self, queue: str) -> bool:
        held = self.broker.queues.get(queue)
        return held is not None and held.owner is not None

    async def dead_letter(self, message: Inbound, *, reason: str, error: str,
                          agent: str | None = None, attempts: int = 0) -> None:
        spore = message.spore
        if spore is None:
            raise BrokerError("an undecodable message has no spore to dead-letter here")
        self.broker.dead_letters.append(DeadLetter(spore, reason, error, agent, attempts))
        self.stats.dead_lettered += 1

    async def dead_letter_spore(self, spore: Spore, *, reason: str, error: str,
                                agent: str | None = None, attempts: int = 0) -> None:
        self.broker.dead_letters.append(DeadLetter(spore, reason, error, agent, attempts))
        self.stats.dead_lettered += 1

    async def cancel(self) -> None:
        for queue, consumer in self._consumers:
            if consumer in queue.consumers:
                queue.consumers.remove(consumer)

    async def close(self) -> None:
        """Disconnect: consumers go, and what they held unacked goes back to its queue."""
        if self._closed:
            return
        self._closed = True
        for queue, consumer in self._consumers:
            if consumer in queue.consumers:
                queue.consumers.remove(consumer)
        held = list(self.unacked.values())
        self.unacked.clear()
        self._consumers.clear()
        for inbound in held:
            inbound._settled = True  # a late ack of it is a no-op, as on a closed channel
            inbound.given_back = True
            self.broker.give_back(inbound._queue, inbound._message)
        if self._reply is not None:
            self.broker.queues.pop(self._reply.name, None)
            self._reply = None

    async def destroy(self, topology: Topology, *, unused_only: bool = False) -> None:
        self.broker.delete(topology)

    def boot_record(self, topology: Topology) -> BootRecord:
        return _MemoryBootRecord(self.broker, topology)

    def statistics(self) -> BackendStatistics:
        topology = self._topology
        if topology is not None:
            self.stats.queues = {topology.queue(a): self.broker.ready(topology.queue(a))
                                 for a in topology.subscriptions}
        return BackendStatistics(**self.stats.as_dict())


class _MemoryBootRecord:
    """A deployment's boot record on a :class:`MemoryBroker` (see ``broker.boots``)."""

    def __init__(self, broker: MemoryBroker, topology: Topology) -> None:
        self._broker, self._topology = broker, topology

    @asynccontextmanager
    async def holding(self, agent: str) -> AsyncIterator[None]:
        locks = self._broker.boot_locks
        async with locks.setdefault(self._topology.boot_lock(agent), asyncio.Lock()):
            yield

    async def booted(self, agent: str) -> bool:
        return self._topology.boot_marker(agent) in self._broker.booted

    async def note(self, agent: str) -> None:
        self._broker.booted.add(self._topology.boot_marker(agent))


@lru_cache(maxsize=4096)
def _topic(pattern: str) -> re.Pattern[str]:
    """A topic-exchange binding as a regex: ``*`` one word, ``#`` zero or more."""
    parts = []
    for word in pattern.split("."):
        parts.append({"*": r"[^.]+", "#": r".*"}.get(word, re.escape(word)))
    return re.compile(r"\.".join(parts))
