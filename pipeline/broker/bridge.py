"""The bridge: an organism's chain over a broker, with at-least-once delivery.

On the embedded path (``backend: memory``) route's deliveries go straight to the
agents' lanes. With a broker, what route yields for agents is published; what the
broker hands back for the agents hosted here enters the chain's source again, as
untrusted input, and passes every stage (signature, validate, expiry, budget,
route, schemas) before its agent's lane:

    chain ─▶ publish (confirmed) ─▶ broker ─▶ consumer of each hosted agent ─┐
      ▲                                                                      │
      └──────────────────────── source (checked like any spore) ◀────────────┘

- A delivery stays unacked while its handler runs, retries included, and until
  every spore the handler produced (returned replies, ``ctx.send``/``broadcast``/
  ``request``) has been confirmed by the broker or settled here (resolved,
  returned, dead-lettered). Then it is acked; after the last failed attempt, or a
  refusal by the chain, it is dead-lettered on the broker first. A process that
  dies leaves it unacked, and the broker redelivers it to another consumer.
- A spore that arrives in agent X's queue goes to X only: route refuses one
  addressed to another agent, or a broadcast on a channel X does not subscribe to.
- Requests carry this process's reply queue; their responses are published
  straight to it. A responder that fails sends a failure response there: the
  requester's ``request`` raises :class:`HandlerError` at once.
- Across an outage of the broker, publishing waits and is made again once
  reconnected (``publisher``); after ``broker.give_up_after`` the organism fails stop.
- Spores from senders that are no agent of the organism (a Praval agent) are
  handled like outside spores; what goes back to such a sender is published by
  its direct routing key. Declared external agents (``external``) are addressed
  like ours; their broadcasts land on the channel declared for them.

The bridge is a :class:`LedgerHook`: it learns of handled, failed, refused and
settled spores from the ledger, and acks or dead-letters deliveries then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any

from sporeflow.config.errors import BrokerError, SporeError, SporeflowError
from sporeflow.config.model import OrganismSpec
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.broker.backend import Backend, Inbound, Topology
from sporeflow.pipeline.broker.boots import BootOnce
from sporeflow.pipeline.broker.expected import ExpectedBack
from sporeflow.pipeline.broker.external import ExternalAgents
from sporeflow.pipeline.broker.hosting import hosted_names
from sporeflow.pipeline.broker.letters_out import LettersOut
from sporeflow.pipeline.broker.prefetch import Prefetches
from sporeflow.pipeline.broker.publisher import Publisher
from sporeflow.pipeline.broker.settling import Settler, Ticket
from sporeflow.pipeline.broker.stop_deadline import StopDeadline
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.recent import RecentNames
from sporeflow.pipeline.core.run import Run
from sporeflow.steps import Delivery, Spore, SporeType, mark_of, set_mark
from sporeflow.steps.dispatch import hand_to_lanes
from sporeflow.steps.signing import BadSignature, ReplayGuard, signed, verify

__all__ = ["Bridge"]

_RESPONSE, _REQUEST = SporeType.RESPONSE, SporeType.REQUEST
_REPLY_ROUTES_KEPT = 10_000
_LOOK_AGAIN = 0.05  # seconds idle() waits for a copy on its way back before asking the queues
# The marks of every bridge of this process, never given twice: a spore object outlives
# its bridge (kept by a user, a dead letter) and may be submitted to a later start's,
# where a mark counted from 1 again would name one of that bridge's deliveries.
_MARKS = itertools.count(1)


class Bridge(LedgerHook):
    """Runs an organism's chain over ``backend``, hosting the agents named in ``hosted``
    (all of them when None)."""

    def __init__(self, spec: OrganismSpec, backend: Backend, *,
                 hosted: Iterable[str] | None = None) -> None:
        names = hosted_names(spec, hosted)
        self.spec = spec
        self.backend = backend
        self.hosted = names
        self.topology = Topology.of(spec)
        self.logger = logging.getLogger(f"sporeflow.bridge.{spec.name}")
        self.boots = BootOnce(backend, self.topology, lambda: self.run.ledger, self.logger)
        self._keys = spec.signing
        self.external = ExternalAgents(spec)
        self._replays = ReplayGuard(spec.signing.window, spec.signing.max_seen) if (
            spec.signing is not None) else None
        self._run: Run | None = None
        self._reply_queue: str | None = None
        # Spores are known here by a mark put on them (steps.mark_of, from _MARKS), not by
        # id(): the intake's paging makes another object of a spore, and keeps its mark.
        self._inflight: dict[int, Ticket] = {}  # mark of a delivered spore -> its ticket
        self._untrusted: set[int] = set()  # marks of spores from the broker, until settled
        self._owners: dict[int, Ticket] = {}  # mark of a spore a handler made -> parent's
        self._reply_routes: OrderedDict[str, str] = OrderedDict()  # request id -> queue
        # Senders that are no agent of the organism, the least recently seen forgotten.
        self._remote = RecentNames(cap=spec.limits.max_outside_senders)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_air = 0  # publishes started, not yet confirmed or failed
        # Published while start() connects: held until the reply queue exists (None: started)
        self._held: list[tuple[Spore, int, tuple[str, ...]]] | None = []
        self._prefetches = Prefetches(lambda agent, count: self.backend.prefetch(
            self.topology.queue(agent), count))
        self._expected = ExpectedBack()  # published to agents hosted here, not back yet
        self._changed = asyncio.Event()
        self.counts = {"consumed": 0, "redelivered": 0, "own_broadcasts": 0,
                       "external_elsewhere": 0, "refused": 0,
                       "acked": 0, "dead_lettered": 0, "ack_failures": 0, "published": 0,
                       "publish_failures": 0, "failure_notices": 0}
        self.publisher = Publisher(backend, spec.broker, self.counts)  # across outages
        self._settle = Settler(backend, self.counts, self.logger, self._spawn)
        self._letters = LettersOut(backend, self._spawn, self.logger, self.counts, self._signed)
        self._deadline = StopDeadline(backend, lambda: self._tasks, self.logger)

    @property
    def run(self) -> Run:
        assert self._run is not None, "the bridge is used before start()"
        return self._run

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, run: Run) -> None:
        """Declare the topology, the reply queue, and consume each hosted agent's queue."""
        self._run = run
        await self.backend.open(self.topology)
        self.publisher.opened()
        self._reply_queue = await self.backend.reply_queue(self._on_reply)
        self._prefetches.configure(self.spec, self.hosted)
        self._prefetches.watch(run.wiring().lanes)
        for name in sorted(self.hosted):
            await self.backend.consume(self.topology.queue(name), partial(
                self._on_message, name), prefetch=self._prefetches.of(name))
            self._prefetches.consumed(name)
        self.logger.info("on %s: hosting %s; exchange %r, reply queue %r",
                         self.backend.address, sorted(self.hosted) or "no agent",
                         self.topology.exchange, self._reply_queue)
        self._release()

    def starting(self, steps: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
        """The organism's start (its ``steps`` past the chain), which a cancellation ends
        within the stop's deadline, a broker blocking it failing the organism: see
        ``stop_deadline``."""
        return self._deadline.start(steps, self.publisher.on_failure)

    def rewired(self, spec: OrganismSpec) -> None:
        """A reload applied ``spec``: a hosted agent's queue is consumed by its concurrency,
        and the lent slots of its new lane count too."""
        if self._run is not None:
            self._prefetches.configure(spec, self.hosted)
            self._prefetches.watch(self._run.wiring().lanes)

    def _release(self) -> None:
        held, self._held = self._held or [], None
        for spore, count, targets in held:
            self._publish(spore, count, targets)

    async def stop_consuming(self, within: float | None = None) -> None:
        """Take no new deliveries (a stop drains those already taken); wait on the broker
        ``within`` seconds from now at most (None: as long as it takes): see
        ``stop_deadline``."""
        self._deadline.arm(within)
        with contextlib.suppress(SporeflowError):
            await self.backend.cancel()

    async def close(self) -> None:
        """Finish pending acks and publishes, then disconnect (the broker requeues the
        rest)."""
        self.publisher.closing()  # a publish waiting for a lost broker waits no more
        self._release()  # held by a start that failed: each published or failed now
        try:
            while self._tasks or self._in_air:
                if self._tasks:
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                else:
                    self._changed.clear()
                    await self._changed.wait()
            self.publisher.sent.release()  # what is still out now will never be published
            await self.backend.close()
        finally:  # closed, or given up on (cancelled): the deadline has nothing left to do
            self._deadline.disarm()

    async def quiet(self) -> None:
        """Wait until this process holds nothing and each spore it published to an agent it
        hosts came back, or was taken from its queue by another process's consumer (or
        dropped by the broker); with one process hosting everything: all work is done."""
        while True:
            await self.run.idle()
            if not self.run.running():  # stopping: what is still queued never comes here
                return
            self._changed.clear()
            if not (self._tasks or self._in_air or self._held or self.run.intake.held):
                if not self._expected or await self._expected.gone_elsewhere(
                        map(self.topology.queue, self.hosted), self.backend.waiting,
                        self._still_idle):
                    return
            try:  # a copy on its way back sets it; else look at the queues again
                await asyncio.wait_for(self._changed.wait(), _LOOK_AGAIN)
            except TimeoutError:
                pass

    def _still_idle(self) -> bool:
        return not (self._changed.is_set() or self.run.intake.held)

    # -- from the broker: into the chain's source -------------------------------------------

    def arrived(self, spore: Spore) -> str | None:
        """The hosted agent whose queue ``spore`` came from (None: not from an agent queue)."""
        ticket = self._inflight.get(mark_of(spore))
        return ticket.agent if ticket is not None else None

    def verify(self, spore: Spore) -> None:
        """The validate stage's hook on a spore from the broker: with signing, its signature
        must be good, fresh and not seen before; then (never before: a forged copy must
        not redirect the answer, nor its name push out a true sender's) a foreign sender
        is remembered and a request's reply route kept."""
        key = mark_of(spore)
        if key not in self._untrusted:
            return
        ticket = self._inflight.get(key)
        reply_queue = ticket.message.reply_queue if ticket is not None else None
        if (self._keys is not None and self._replays is not None
                and not self.external.unsigned_accepted(spore)):
            signature = verify(spore, self._keys, reply_queue=reply_queue or "")
            scope = ticket.agent if ticket is not None else ""
            if ticket is not None and ticket.message.redelivered:  # no replay: noted only
                self._replays.note(scope, signature)
            else:
                self._replays.check(scope, signature)
        sender = spore.from_agent
        if (ticket is not None and type(sender) is str and sender not in self.spec.agents
                and (sender not in self.run.outside or sender in self._remote)):
            # A foreign agent (Praval's, say): what goes back to it goes through the broker.
            self._remote.add(sender)  # again when known: the last to be forgotten
            self.run.outside.add(sender)
        if ticket is not None and spore.spore_type is _REQUEST and type(spore.id) is str:
            self.run.requests.expect(spore.id, ticket.agent)  # its answer, from that agent
            # Only a reply queue of this organism's, reached through the exchange: a queue
            # named by a forged request would take the response by the default exchange.
            # Another requester's response goes by its routing key, as any spore does.
            if reply_queue and self.backend.is_reply_queue(reply_queue):
                routes = self._reply_routes
                routes[spore.id] = reply_queue
                if len(routes) > _REPLY_ROUTES_KEPT:
                    routes.popitem(last=False)

    def _on_message(self, agent: str, message: Inbound) -> None:
        self.counts["consumed"] += 1
        self._changed.set()
        if message.redelivered:
            self.counts["redelivered"] += 1
        spore = self._decoded(agent, message)
        if spore is None:
            return
        if self._expected:
            self._expected.came_back(spore.id)
        if spore.to_agent is None and spore.from_agent == agent:
            self.counts["own_broadcasts"] += 1  # a broadcast never goes back to its sender
            self._settle.ack_soon(message)
            return
        run = self._run
        if run is None or not run.running():
            self._spawn(self._settle.give_back(message))
            return
        heard = self.external.broadcast_for(agent, spore, run.wiring().table.subscribers)
        if heard is None:
            self.counts["external_elsewhere"] += 1  # a copy for another agent's queue
            self._settle.ack_soon(message)
            return
        spore = heard
        key = self._mark(spore)
        self._inflight[key] = Ticket(message, agent)
        self._untrusted.add(key)
        run.intake.feed((spore,))  # the chain checks it, then route hands it to `agent`

    def _decoded(self, agent: str | None, message: Inbound) -> Spore | None:
        """The message's spore, or None (dead-lettered) when it holds none."""
        if message.rejection is None and message.spore is not None:
            return message.spore
        reason, error = message.rejection or (Reason.INVALID,
                                              SporeError("the message holds no spore"))
        self.counts["refused"] += 1
        self.logger.warning("refused a message from the broker for %r: %s: %s", agent,
                            reason, error)
        if message.spore is not None and self._run is not None:
            self._letters.with_delivery(self._mark(message.spore))  # dead-lettered below
            self._run.ledger.refused(message.spore, reason, error, agent=agent)
        # The reply queue's too (agent None): untrusted, anyone may publish there.
        self._spawn(self._settle.dead_letter(message, agent, reason, str(error)))
        return None

    def _on_reply(self, message: Inbound) -> None:
        """A response (or a failure response) for a request awaited in this process."""
        self.counts["consumed"] += 1
        spore = self._decoded(None, message)
        if spore is None or self._run is None:
            return
        self._untrusted.add(self._mark(spore))
        self._run.intake.feed((spore,))  # route resolves it, or refuses it

    # -- the ledger's hooks -----------------------------------------------------------------

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        """Spores sent by a running handler: its delivery waits for them too."""
        if parent is None:  # from outside: organism.confirmed() waits for them
            self.publisher.sent.sent(spores)
            return
        ticket = self._inflight.get(mark_of(parent))
        if ticket is not None:
            for spore in spores:
                self._owners[self._mark(spore)] = ticket
                ticket.pending += 1

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        self._changed.set()
        key = mark_of(spore)
        self._untrusted.discard(key)
        ticket = self._inflight.pop(key, None)
        if ticket is None:
            return
        for reply in replies:
            self._owners[self._mark(reply)] = ticket
            ticket.pending += 1
        ticket.finished = True
        self._settle.when_done(ticket)

    def failed(self, spore: Spore, agent: str, reason: str, error: BaseException,
               attempts: int) -> None:
        self._changed.set()
        key = mark_of(spore)
        self._untrusted.discard(key)
        ticket = self._inflight.pop(key, None)
        if ticket is None or reason == Reason.SHUTDOWN:
            return  # left unacked: the broker gives it to the next consumer
        self._letters.with_delivery(key)  # its letter, recorded next, goes with the delivery
        text = self.run.ledger.describe(error)  # masked: it goes out on the broker
        ticket.failure = (reason, text, attempts)
        ticket.finished = True
        queue = self._reply_routes.pop(spore.id, None)
        # A requester in this process hears of it from the ledger itself; a notice to our
        # own reply queue would only come back, possibly as the organism stops.
        if (spore.spore_type is _REQUEST and queue is not None
                and not self.run.requests.awaits(spore.id)):
            self._spawn(self.publisher.tell_failure(spore, agent, reason, text, queue,
                                                    self._signed, self.logger))
        self._settle.when_done(ticket)

    def dead_lettered(self, letter: DeadLetter) -> None:
        """A spore from the broker refused by the chain: dead-letter its delivery there;
        any other letter made here goes to the broker's dead-letter queue on its own."""
        key = mark_of(letter.spore)
        ticket = self._inflight.get(key)
        if ticket is not None and not ticket.finished:
            ticket.failure = (letter.reason, letter.error, letter.attempts)
        else:
            self._letters.recorded(letter, key)

    def _mark(self, spore: Spore) -> int:
        """Put a new mark on ``spore``: the key it is known by here."""
        key = next(_MARKS)
        set_mark(spore, key)
        return key

    def keeps(self, spore: Spore) -> bool:
        """A delivery (or what its handler made) a stop interrupts goes back to the broker
        unacked, for the next consumer: it is no dead letter here."""
        key = mark_of(spore)
        return key in self._inflight or key in self._owners

    def released(self, spore: Spore) -> None:
        """``spore`` left this process (confirmed, resolved, returned or dead-lettered)."""
        self._changed.set()  # quiet() looks again: this may have been the last one held
        key = mark_of(spore)
        self._untrusted.discard(key)
        self.publisher.settled(spore)
        ticket = self._inflight.pop(key, None)
        if ticket is not None:  # refused by the chain before any handler ran
            ticket.finished = True
            self._settle.when_done(ticket)
        owner = self._owners.pop(key, None)
        if owner is not None:
            owner.pending -= 1
            self._settle.when_done(owner)

    # -- to the broker ----------------------------------------------------------------------

    def deliver_or_publish(self, deliveries: list[Delivery]) -> None:
        """The chain's last stage with a broker: a spore that came from the broker goes to
        its agent's lane here; the others are published."""
        local: list[Delivery] = []
        for spore, targets in deliveries:
            ticket = self._inflight.get(mark_of(spore))
            if ticket is None:
                self._publish(spore, len(targets), targets)
            else:
                local.append((spore, (ticket.agent,)))
        if local:
            hand_to_lanes(local, self.run.wiring().lanes, self.run.ledger.reject)

    def outside_or(self, local: Callable[[Spore], None]) -> Callable[[Spore], None]:
        """The ledger's outside callback: a spore for another process (a response to a
        request from there, or a spore for a remote sender) is published, the rest go to
        ``local``, this process's outside world."""

        def on_outside(spore: Spore) -> None:
            if (spore.spore_type is _RESPONSE and spore.reply_to in self._reply_routes) or (
                    spore.to_agent in self._remote):
                self._publish(spore, 1, ())
            else:
                local(spore)

        return on_outside

    def _publish(self, spore: Spore, count: int, targets: tuple[str, ...]) -> None:
        """Start publishing ``spore`` (``count`` deliveries of the intake's); it is settled
        once the broker confirmed it (:meth:`_published`)."""
        if self._held is not None:  # still connecting: see start()
            self._held.append((spore, count, targets))
            return
        queue = routing_key = reply_queue = None
        if spore.spore_type is _RESPONSE and spore.reply_to is not None:
            queue = self._reply_routes.pop(spore.reply_to, None)
        if queue is None:
            routing_key = self.topology.routing_key(spore)
            if spore.spore_type is _REQUEST and self.run.requests.awaits(spore.id):
                reply_queue = self._reply_queue
        expected = self._expected_back(spore, targets) if queue is None else 0
        if expected:
            self._expected.published(spore.id, expected)
        self._in_air += 1
        done = partial(self._published, spore, count, expected)
        try:
            self.publisher.publish_soon(spore, partial(self._signed, spore, reply_queue), done,
                                        routing_key=routing_key, queue=queue,
                                        reply_queue=reply_queue)
        except (BadSignature, BrokerError) as exc:  # told after this stage, as any failure
            asyncio.get_running_loop().call_soon(done, exc)

    def _published(self, spore: Spore, count: int, expected: int,
                   failure: BaseException | None) -> None:
        self._in_air -= 1
        if failure is None:
            self.counts["published"] += 1
            if self.boots.waiting:  # a boot is recorded once the broker holds its spore
                self.boots.confirmed(spore)
        else:
            self._expected.came_back(spore.id, expected)  # it never will
            owner = self._owners.get(mark_of(spore))
            self.publisher.unpublished(spore, failure, self.run.ledger, logger=self.logger,
                                       made_again=owner is not None and owner.message.given_back)
        self.run.intake.settle(count)
        self.publisher.sent.left(spore, failure)  # before released(): it may have failed
        self.released(spore)
        self._changed.set()

    def _signed(self, spore: Spore, reply_queue: str | None) -> Spore:
        """``spore`` as published: signed for its sender and reply queue, with signing."""
        if self._keys is None:
            return spore
        return signed(spore, self._keys, reply_queue=reply_queue or "")

    def _expected_back(self, spore: Spore, targets: tuple[str, ...]) -> int:
        """How many copies of ``spore`` the broker hands to agents hosted here."""
        if spore.to_agent is not None:
            return 1 if spore.to_agent in self.hosted else 0
        subscribers = self.run.wiring().table.subscribers.get(spore.channel, ())
        return sum(1 for name in subscribers if name in self.hosted)

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
            "expected_back": self._expected.total, **self.counts,
            "waiting_sends": self.publisher.waiting,  # outside sends, on a lost broker
            "connection": self.backend.statistics().as_dict(),
        }

