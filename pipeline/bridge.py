"""The bridge: an organism's chain over a broker, with at-least-once delivery.

On the embedded path (``backend: memory``) route's deliveries go straight to the
agents' lanes. With a broker, the chain is the same up to route; then

    route ─▶ publish (confirmed) ─▶ broker ─▶ consumer of each hosted agent ─▶ lane
                                                                               │
    chain ◀──────── replies and ctx sends ◀──────── handler ◀──────────────────┘

- A delivery stays unacked while its handler runs, retries included, and until
  every spore the handler produced (returned replies, ``ctx.send``/``broadcast``/
  ``request``) has been confirmed by the broker or settled here (resolved,
  returned, dead-lettered). Then it is acked; after the last failed attempt it is
  dead-lettered on the broker first. A process that dies leaves it unacked, and
  the broker redelivers it to another consumer: handlers may see a spore twice
  and can de-duplicate by ``spore.id``.
- Requests carry this process's reply queue; their responses are published
  straight to it, so a requester never waits behind its own agent's prefetch.
  A responder that fails sends a failure notice there: the requester's
  ``request`` raises :class:`HandlerError` at once, as on the embedded path.
- A broadcast reaches each subscriber's queue through the bindings; the sender's
  own copy (when it subscribes to the channel) is acked and skipped.
- Spores from senders that are no agent of the organism (a Praval agent) are
  handled like outside spores; what goes back to such a sender is published by
  its direct routing key.

The organism calls in at a few seams: ``track`` wraps each lane's callbacks,
``publish_batch`` replaces dispatch, ``outside`` wraps route's outside callback,
and ``adopt``/``release`` mark spores produced and settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from aiostream import pipable_operator, streamcontext

from sporeflow.config import (
    BrokerError,
    ConfigError,
    HandlerError,
    LimitExceeded,
    Problem,
    Secret,
    SporeError,
    SporeflowError,
)
from sporeflow.pipeline.backend import Backend, Inbound, Topology, open_backend
from sporeflow.steps import Delivery, Spore, SporeType, check_spore
from sporeflow.steps.signing import BadSignature, signed, verify

if TYPE_CHECKING:
    from sporeflow.pipeline.organism import Organism

__all__ = ["Bridge", "make_bridge", "publish_deliveries"]

_RESPONSE, _REQUEST = SporeType.RESPONSE, SporeType.REQUEST
_REPLY_ROUTES_KEPT = 10_000
FAILURE_KEY = "sporeflow.failure"  # metadata of a failure notice on a reply queue

# The delivered spore whose handler is running in this task (for ctx.send and friends).
_handling: ContextVar[Spore | None] = ContextVar("sporeflow_bridge_handling", default=None)

Invoke = Callable[[Spore, int], Any]
OnDone = Callable[[Spore, list[Spore], float], None]
OnFailed = Callable[[Spore, str, BaseException, int], None]


@dataclass(eq=False, slots=True)
class _Ticket:
    """One delivery from the broker: acked once handled and its offspring confirmed."""

    message: Inbound
    agent: str
    pending: int = 0  # spores it produced, not yet confirmed or settled
    finished: bool = False
    settling: bool = False
    failure: tuple[str, str, int] | None = None  # (reason, error, attempts): dead-letter it


def make_bridge(organism: Organism, backend: Backend | str | None,
                hosted: Iterable[str] | None) -> Bridge | None:
    """The bridge for ``organism``: None on the embedded path (``memory``)."""
    chosen = open_backend(organism.spec.backend if backend is None else backend) if (
        backend is None or isinstance(backend, str)) else backend
    if chosen is None:
        if hosted is not None:
            raise _usage(organism, "hosting some agents (--agents) needs a broker: set "
                                   "organism.backend or --backend to an amqp:// URL")
        return None
    return Bridge(organism, chosen, hosted=hosted)


def _usage(organism: Organism, message: str) -> ConfigError:
    source = str(organism.spec.source or f"<organism {organism.spec.name}>")
    return ConfigError([Problem(source, 1, 1, "organism.backend", message)])


class Bridge:
    """Runs ``organism``'s chain over ``backend``, hosting the agents named in ``hosted``
    (all of them when None)."""

    def __init__(self, organism: Organism, backend: Backend, *,
                 hosted: Iterable[str] | None = None) -> None:
        spec = organism.spec
        names = frozenset(spec.agents) if hosted is None else frozenset(hosted)
        unknown = sorted(names - set(spec.agents))
        if unknown:
            raise _usage(organism, f"--agents names {unknown!r}, which organism "
                                   f"{spec.name!r} does not have; its agents are "
                                   f"{sorted(spec.agents)!r}")
        self.organism = organism
        self.backend = backend
        self.hosted = names
        self.topology = Topology.of(spec)
        self.logger = logging.getLogger(f"sporeflow.bridge.{spec.name}")
        self._key: Secret | None = spec.signing_key
        self._reply_queue: str | None = None
        self._inflight: dict[int, _Ticket] = {}  # id(delivered spore) -> its ticket
        self._owners: dict[int, _Ticket] = {}  # id(spore a handler produced) -> parent's
        self._reply_routes: OrderedDict[str, str] = OrderedDict()  # request id -> queue
        self._remote: set[str] = set()  # senders that are no agent of the organism
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expected = 0  # published to agents hosted here, not yet consumed back
        self._changed = asyncio.Event()
        self.counts = {"consumed": 0, "redelivered": 0, "own_broadcasts": 0, "refused": 0,
                       "acked": 0, "dead_lettered": 0, "ack_failures": 0, "published": 0,
                       "publish_failures": 0, "failure_notices": 0}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Declare the topology, the reply queue, and consume each hosted agent's queue."""
        await self.backend.open(self.topology)
        self._reply_queue = await self.backend.reply_queue(self._on_reply)
        for name in sorted(self.hosted):
            agent = self.organism.spec.agents[name]
            # Room beyond concurrency for slots lent while handlers await ctx.request:
            # a request to this same agent must be able to arrive meanwhile.
            prefetch = agent.concurrency * 2
            await self.backend.consume(self.topology.queue(name),
                                       partial(self._on_message, name), prefetch=prefetch)
        self.logger.info("on %s: hosting %s; exchange %r, reply queue %r",
                         self.backend.address, sorted(self.hosted) or "no agent",
                         self.topology.exchange, self._reply_queue)

    async def stop_consuming(self) -> None:
        """Take no new deliveries (a stop drains those already taken)."""
        with contextlib.suppress(SporeflowError):
            await self.backend.cancel()

    async def close(self) -> None:
        """Finish pending acks and publishes, then disconnect (the broker requeues the
        rest)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.backend.close()

    async def quiet(self) -> None:
        """Wait until this process holds nothing and each spore it published to an agent it
        hosts came back; with one process hosting everything: until all work is done."""
        while True:
            await self.organism.idle()
            intake = self.organism._intake
            if self._expected <= 0 and not self._tasks and (intake is None or not intake.held):
                return
            self._changed.clear()
            await self._changed.wait()

    # -- from the broker ------------------------------------------------------------------

    def _on_message(self, agent: str, message: Inbound) -> None:
        self.counts["consumed"] += 1
        self._expected -= 1
        self._changed.set()
        if message.redelivered:
            self.counts["redelivered"] += 1
        spore = self._admit(agent, message)
        if spore is None:
            return
        if spore.to_agent is None and spore.from_agent == agent:
            self.counts["own_broadcasts"] += 1  # a broadcast never goes back to its sender
            self._spawn(self._ack(message))
            return
        lane = self.organism._lanes.get(agent)
        intake = self.organism._intake
        if lane is None or intake is None or self.organism.state != "running":
            self._spawn(self._give_back(message))
            return
        sender = spore.from_agent
        if sender not in self.organism.spec.agents and sender not in self.organism._outside:
            # A foreign agent (Praval's, say): what goes back to it goes through the broker.
            # "system", "cli" and this process's own senders are this process's outside.
            self._remote.add(sender)
            self.organism._outside.add(sender)
        reply_queue = message.reply_queue
        if spore.spore_type is _REQUEST and reply_queue:
            routes = self._reply_routes
            routes[spore.id] = reply_queue
            if len(routes) > _REPLY_ROUTES_KEPT:
                routes.popitem(last=False)
        self._inflight[id(spore)] = _Ticket(message, agent)
        intake.fanout(1)  # held like any spore in a lane, settled by on_done/on_failed
        lane.deliver(spore)

    def _admit(self, agent: str | None, message: Inbound) -> Spore | None:
        """The message's spore if it is valid and, when a key is set, signed; else refuse."""
        spore, rejection = message.spore, message.rejection
        if rejection is None and spore is not None:
            try:
                if self._key is not None:
                    verify(spore, self._key)
                check_spore(spore, self.organism.spec.limits)
            except BadSignature as exc:
                rejection = (BadSignature.reason, exc)
            except LimitExceeded as exc:
                rejection = ("limit exceeded", exc)
            except SporeError as exc:
                rejection = ("invalid", exc)
        if rejection is None and spore is not None:
            return spore
        reason, error = rejection or ("invalid", SporeError("the message holds no spore"))
        self.counts["refused"] += 1
        if spore is not None:
            self.organism._record(spore, reason, error, agent=agent)
        else:
            self.logger.warning("refused a message from the broker for %r: %s: %s", agent,
                                reason, error)
        if agent is not None:
            self._spawn(self._dead_letter_now(message, agent, reason, str(error)))
        return None

    def _on_reply(self, message: Inbound) -> None:
        """A response (or a failure notice) for a request awaited in this process."""
        self.counts["consumed"] += 1
        spore = self._admit(None, message)
        intake = self.organism._intake
        if spore is None or intake is None:
            return
        failure = spore.metadata.get(FAILURE_KEY) if spore.spore_type is not _RESPONSE else None
        if isinstance(failure, dict):
            future = self.organism._awaiting.get(spore.reply_to or "")
            if future is not None and not future.done():
                future.set_exception(HandlerError(
                    f"agent {failure.get('agent')!r} failed on request {spore.reply_to} "
                    f"({failure.get('reason')}): {failure.get('error')}",
                    agent=str(failure.get("agent")), spore_id=str(spore.reply_to)))
            return
        intake.feed((spore,))  # route resolves it, or dead-letters it as a late response

    # -- the lanes' callbacks ---------------------------------------------------------------

    def track(self, agent: str, invoke: Invoke, on_done: OnDone,
              on_failed: OnFailed) -> tuple[Invoke, OnDone, OnFailed]:
        """Wrap one lane's callbacks so that deliveries are acked when their work is done."""
        inflight = self._inflight

        async def invoke_tracked(spore: Spore, attempt: int) -> Any:
            token = _handling.set(spore)
            try:
                return await invoke(spore, attempt)
            finally:
                _handling.reset(token)

        def on_done_tracked(spore: Spore, replies: list[Spore], seconds: float) -> None:
            on_done(spore, replies, seconds)
            ticket = inflight.pop(id(spore), None)
            if ticket is None:
                return
            owners = self._owners
            for reply in replies:
                priority = reply.priority  # the organism refuses the others before queueing
                if type(priority) is int and 1 <= priority <= 10:
                    owners[id(reply)] = ticket
                    ticket.pending += 1
            ticket.finished = True
            self._maybe_settle(ticket)

        def on_failed_tracked(spore: Spore, reason: str, error: BaseException,
                              attempts: int) -> None:
            on_failed(spore, reason, error, attempts)
            ticket = inflight.pop(id(spore), None)
            if ticket is None or reason == "shutdown":
                return  # left unacked: the broker gives it to the next consumer
            text = f"{type(error).__name__}: {error}"
            ticket.failure = (reason, text, attempts)
            ticket.finished = True
            queue = self._reply_routes.pop(spore.id, None)
            if spore.spore_type is _REQUEST and queue is not None:
                self._notify_failure(spore, agent, reason, text, queue)
            self._maybe_settle(ticket)

        return invoke_tracked, on_done_tracked, on_failed_tracked

    def adopt(self, spore: Spore) -> None:
        """``spore`` was sent by a running handler: its delivery waits for it too."""
        parent = _handling.get()
        ticket = self._inflight.get(id(parent)) if parent is not None else None
        if ticket is not None:
            self._owners[id(spore)] = ticket
            ticket.pending += 1

    def release(self, spore: Spore) -> None:
        """``spore`` left this process (confirmed, resolved, returned or dead-lettered)."""
        ticket = self._owners.pop(id(spore), None)
        if ticket is not None:
            ticket.pending -= 1
            self._maybe_settle(ticket)

    def _maybe_settle(self, ticket: _Ticket) -> None:
        if ticket.finished and ticket.pending <= 0 and not ticket.settling:
            ticket.settling = True
            if ticket.failure is None:
                self._spawn(self._ack(ticket.message))
            else:
                reason, error, attempts = ticket.failure
                self._spawn(self._dead_letter_now(ticket.message, ticket.agent, reason, error,
                                                  attempts))

    # -- to the broker ----------------------------------------------------------------------

    def publish_batch(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Publish route's deliveries (in place of dispatch); returns them unchanged."""
        jobs = [self._publish(spore, len(targets), targets) for spore, targets in deliveries]
        self._spawn(_gather(jobs))
        return deliveries

    def outside(self, return_outside: Callable[[Spore], None]) -> Callable[[Spore], None]:
        """Route's outside callback: responses to other processes and spores to remote
        senders go through the broker; the rest to this process's outside world."""

        def on_outside(spore: Spore) -> None:
            if (spore.spore_type is _RESPONSE and spore.reply_to in self._reply_routes) or (
                    spore.to_agent in self._remote):
                self._spawn(self._publish(spore, 1, ()))
            else:
                return_outside(spore)

        return on_outside

    async def _publish(self, spore: Spore, count: int, targets: tuple[str, ...]) -> None:
        queue = routing_key = reply_queue = None
        if spore.spore_type is _RESPONSE and spore.reply_to is not None:
            queue = self._reply_routes.pop(spore.reply_to, None)
        if queue is None:
            routing_key = self.topology.routing_key(spore)
            if spore.spore_type is _REQUEST and spore.id in self.organism._awaiting:
                reply_queue = self._reply_queue
        wire = signed(spore, self._key) if self._key is not None else spore
        expected = self._expected_back(spore, targets) if queue is None else 0
        self._expected += expected
        try:
            await self.backend.publish(wire, routing_key=routing_key, queue=queue,
                                       reply_queue=reply_queue)
            self.counts["published"] += 1
        except BrokerError as exc:
            self._expected -= expected
            self.counts["publish_failures"] += 1
            self.logger.warning("could not publish spore %s: %s", spore.id, exc)
            self.organism._record(spore, "broker error", exc)
        finally:
            intake = self.organism._intake
            if intake is not None:
                intake.settle(count)
            self.release(spore)
            self._changed.set()

    def _expected_back(self, spore: Spore, targets: tuple[str, ...]) -> int:
        """How many copies of ``spore`` the broker hands to agents hosted here."""
        if spore.to_agent is not None:
            return 1 if spore.to_agent in self.hosted else 0
        subscribers = self.organism._table.subscribers.get(spore.channel, ())
        return sum(1 for name in subscribers if name in self.hosted)

    def _notify_failure(self, spore: Spore, agent: str, reason: str, error: str,
                        queue: str) -> None:
        notice = Spore(knowledge={}, spore_type=SporeType.NOTIFICATION, from_agent=agent,
                       to_agent=spore.from_agent, reply_to=spore.id, thread_id=spore.thread,
                       metadata={FAILURE_KEY: {"agent": agent, "reason": reason,
                                               "error": error[:2000]}})
        wire = signed(notice, self._key) if self._key is not None else notice

        async def send() -> None:
            try:
                await self.backend.publish(wire, queue=queue)
                self.counts["failure_notices"] += 1
            except BrokerError as exc:  # the requester is gone: its timeout will tell it
                self.logger.info("could not tell %s that request %s failed: %s", queue,
                                 spore.id, exc)

        self._spawn(send())

    async def _ack(self, message: Inbound) -> None:
        try:
            await message.ack()
            self.counts["acked"] += 1
        except BrokerError as exc:
            self.counts["ack_failures"] += 1
            self.logger.warning("could not ack a delivery (the broker will redeliver it): %s",
                                exc)

    async def _give_back(self, message: Inbound) -> None:
        with contextlib.suppress(BrokerError):
            await message.nack(requeue=True)

    async def _dead_letter_now(self, message: Inbound, agent: str, reason: str, error: str,
                               attempts: int = 0) -> None:
        try:
            await self.backend.dead_letter(message, reason=reason, error=error, agent=agent,
                                           attempts=attempts)
            self.counts["dead_lettered"] += 1
        except BrokerError as exc:
            self.logger.warning("could not dead-letter a delivery on the broker (it is "
                                "recorded here): %s", exc)
        await self._ack(message)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            self.logger.error("a broker task failed", exc_info=task.exception())

    # -- observing --------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """This process's view: its hosted agents, counters, and its connection's counters."""
        return {
            "backend": self.backend.address, "exchange": self.topology.exchange,
            "hosted": sorted(self.hosted), "reply_queue": self._reply_queue,
            "in_flight": len(self._inflight), "awaiting_confirms": len(self._owners),
            "expected_back": self._expected, **self.counts,
            "connection": self.backend.statistics().as_dict(),
        }


@pipable_operator
async def publish_deliveries(source: AsyncIterable[list[Delivery]], *,
                             bridge: Bridge) -> AsyncIterator[list[Delivery]]:
    """Publish each batch of deliveries on the broker (in place of dispatch); pass it on."""
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            yield bridge.publish_batch(deliveries)


async def _gather(jobs: list[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*jobs)
