"""The running organism: one aiostream chain over the intake, and a lane per agent.

    intake.batches ─▶ validate ─▶ expire_filter ─▶ route ─▶ dispatch ─▶ lanes
          ▲                                                              │
          └───────────────── feed (handler replies) ◀─────────────────────┘

Every spore admitted is held until it is settled exactly once: handled,
dead-lettered, resolved as an awaited response, or returned to the outside
world. ``idle()`` waits for the count to reach zero; ``stop()`` drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiostream import stream

from sporeflow.config import (
    AgentSpec,
    DeliveryError,
    Emit,
    HandlerError,
    OrganismSpec,
    OrganismStateError,
    RequestTimeout,
    SporeError,
    load_organism,
    organism_from_dict,
)
from sporeflow.pipeline.context import AgentRuntime, Context
from sporeflow.pipeline.deadletters import DeadLetter, DeadLetterStore
from sporeflow.pipeline.intake import Intake
from sporeflow.pipeline.metrics import LatencyHistogram
from sporeflow.steps import (
    AgentLane,
    LanePolicy,
    RoutingTable,
    Spore,
    SporeType,
    dispatch,
    expire_filter,
    permission_error,
    route,
    shape_replies,
    utc_now,
    validate,
)

__all__ = ["Organism"]

OUTSIDE_SENDERS = frozenset({"system", "cli"})
_ABANDONED_REMEMBERED = 10_000
_OUTBOX_KEPT = 10_000


class Organism:
    """Agents wired by an :class:`OrganismSpec`, running on one event loop."""

    def __init__(self, spec: OrganismSpec, *, now: Callable[[], datetime] = utc_now) -> None:
        self.spec = spec
        self.now = now
        self.logger = logging.getLogger(f"sporeflow.organism.{spec.name}")
        self.dead_letters = DeadLetterStore(spec.limits.max_dead_letters)
        self.outbox: deque[Spore] = deque(maxlen=_OUTBOX_KEPT)
        self.returned = 0
        self._outside_listeners: list[Callable[[Spore], None]] = []
        self._outside: set[str] = set(OUTSIDE_SENDERS)
        self._awaiting: dict[str, asyncio.Future[Spore]] = {}
        self._abandoned: OrderedDict[str, None] = OrderedDict()
        self._agents: dict[str, AgentRuntime] = {}
        self._lanes: dict[str, AgentLane] = {}
        self._latency: dict[str, LatencyHistogram] = {}
        self._refused_from: Counter[str] = Counter()
        self._table = RoutingTable(agents=frozenset())
        self._intake: Intake | None = None
        self._chain: asyncio.Task[None] | None = None
        self._state = "new"
        self._started_at = 0.0

    # -- construction -------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> Organism:
        """Load ``path`` (raising :class:`ConfigError` listing every problem)."""
        return cls(load_organism(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path = ".") -> Organism:
        """Build from a dict shaped like an organism file; handlers may be callables."""
        return cls(organism_from_dict(dict(data), base_dir=base_dir))

    @property
    def state(self) -> str:
        return self._state

    @property
    def agents(self) -> Mapping[str, AgentSpec]:
        return {name: agent.spec for name, agent in self._agents.items()}

    def _routing_table(self) -> RoutingTable:
        spec = self.spec
        subscribers: dict[str, list[str]] = {}
        for agent in spec.agents.values():
            for channel in agent.subscribe:
                subscribers.setdefault(channel, []).append(agent.name)
        return RoutingTable(
            agents=frozenset(spec.agents),
            subscribers={c: tuple(names) for c, names in subscribers.items()},
            peers={a.name: a.peers for a in spec.agents.values() if a.peers is not None},
            publishers={c.name: c.publish for c in spec.channels.values()
                        if c.publish is not None},
            channels=frozenset(spec.channels),
        )

    def _build_agent(self, spec: AgentSpec) -> AgentRuntime:
        latency = self._latency.setdefault(spec.name, LatencyHistogram())
        name = spec.name

        def on_failed(spore: Spore, reason: str, error: BaseException, attempts: int) -> None:
            self._on_failed(name, spore, reason, error, attempts)

        lane = AgentLane(
            name, self._invoker(spec), self._shaper(spec),
            LanePolicy(spec.concurrency, spec.timeout, spec.retry),
            on_done=self._on_done, on_failed=on_failed, observe=latency.observe, now=self.now,
        )
        return AgentRuntime(spec, lane, logging.getLogger(f"sporeflow.agent.{spec.name}"))

    def _invoker(self, spec: AgentSpec) -> Callable[[Spore, int], Any]:
        handler = spec.handler
        name = spec.name
        # A callable object counts as async when its class's __call__ is.
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__)

        def invoke_async(spore: Spore, attempt: int) -> Any:
            return handler(spore, Context(self, self._agents[name], spore, attempt))

        def invoke_sync(spore: Spore, attempt: int) -> Any:
            # Plain functions may block: they run on a worker thread, off the loop.
            context = Context(self, self._agents[name], spore, attempt)
            return asyncio.to_thread(handler, spore, context)

        return invoke_async if is_async else invoke_sync

    def _shaper(self, spec: AgentSpec) -> Callable[[Any, Spore], Any]:
        name, emit = spec.name, spec.emit

        def shape(result: Any, parent: Spore) -> Any:
            if hasattr(result, "__aiter__"):
                return self._collect(result, parent, name, emit)
            return shape_replies(result, parent=parent, agent=name, emit=emit)

        return shape

    async def _collect(self, results: Any, parent: Spore, name: str,
                       emit: Emit | None) -> list[Spore]:
        """Shape what an async-iterable return value yields, item by item."""
        replies: list[Spore] = []
        async for item in results:
            replies.extend(shape_replies(item, parent=parent, agent=name, emit=emit))
        return replies

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the chain and every agent, then send each agent's ``boot`` spore."""
        if self._state in ("running", "stopping"):
            raise OrganismStateError(f"organism {self.spec.name!r} is already {self._state}")
        limits = self.spec.limits
        self._intake = Intake(
            max_in_flight=limits.max_in_flight,
            capacities={c.name: c.capacity for c in self.spec.channels.values()},
        )
        self._agents = {name: self._build_agent(a) for name, a in self.spec.agents.items()}
        self._lanes = {name: agent.lane for name, agent in self._agents.items()}
        self._table = self._routing_table()
        self._state = "running"
        self._started_at = time.monotonic()
        self._chain = asyncio.get_running_loop().create_task(
            self._run_chain(self._intake), name=f"sporeflow:{self.spec.name}")
        for agent in self.spec.agents.values():
            if agent.boot is not None:
                await self.send(agent.name, dict(agent.boot))

    def _build_chain(self, intake: Intake) -> Any:
        return (
            stream.iterate(intake.batches())
            | validate.pipe(limits=self.spec.limits, on_reject=self._reject)
            | expire_filter.pipe(on_reject=self._reject, now=self.now)
            | route.pipe(
                table=lambda: self._table, on_reject=self._reject,
                awaited=self._awaiting, abandoned=self._abandoned,
                on_response=self._resolve, outside=self._outside,
                on_outside=self._return_outside, on_fanout=intake.fanout)
            | dispatch.pipe(lanes=lambda: self._lanes, on_reject=self._reject)
        )

    async def _run_chain(self, intake: Intake) -> None:
        try:
            async with self._build_chain(intake).stream() as deliveries:
                async for _ in deliveries:
                    pass
        except Exception:
            self.logger.critical("the chain of %r crashed; the organism stops", self.spec.name,
                                 exc_info=True)
            self._state = "failed"
            raise

    async def stop(self, *, drain_timeout: float | None = 30.0) -> int:
        """Stop admitting, finish in-flight work and its replies, then stop.

        What could not finish within ``drain_timeout`` is dead-lettered with reason
        ``shutdown``; returns how many spores that was.
        """
        intake, chain = self._intake, self._chain
        if self._state not in ("running", "failed") or intake is None or chain is None:
            return 0
        self._state = "stopping"
        intake.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle(), drain_timeout)
        # Pause every lane before cancelling any: a handler's cancellation may still send
        # replies, and they must find lanes that keep them for the dead letters below.
        for agent in self._agents.values():
            agent.lane.pause()
        left = 0
        for agent in self._agents.values():
            left += await agent.lane.cancel("shutdown")
        for agent in self._agents.values():
            left += self._abandon_queued(agent.spec.name, agent.lane, "shutdown")
        for spore in intake.finish():
            self._record(spore, "shutdown", OrganismStateError("the organism stopped first"))
            intake.settle(1)
            left += 1
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await chain
        for future in self._awaiting.values():
            if not future.done():
                future.set_exception(OrganismStateError("the organism stopped"))
        self._state = "stopped"
        if left:
            self.logger.warning("stopped with %d spore(s) unfinished: dead-lettered as "
                                "'shutdown'", left)
        return left

    def _abandon_queued(self, name: str, lane: AgentLane, reason: str) -> int:
        """Dead-letter with ``reason`` what a lane still queues or waits to retry."""
        assert self._intake is not None
        held = lane.drain_queue() + lane.cancel_timers()
        for spore, attempts in held:
            self._record(spore, reason, OrganismStateError(f"agent {name!r} stopped first"),
                         agent=name, attempts=attempts)
            self._intake.settle(1)
        return len(held)

    @contextlib.asynccontextmanager
    async def running(self, *, drain_timeout: float | None = 30.0) -> AsyncIterator[Organism]:
        """``async with organism.running():`` starts it, and drains and stops it after."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop(drain_timeout=drain_timeout)

    async def idle(self) -> None:
        """Return once nothing is queued or in flight (raise if the chain crashed)."""
        intake, chain = self._require_running()
        waiter = asyncio.ensure_future(intake.idle())
        try:
            await asyncio.wait([waiter, chain], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if chain.done() and not chain.cancelled() and chain.exception() is not None:
            raise OrganismStateError(f"organism {self.spec.name!r} crashed") from (
                chain.exception())

    def _require_running(self) -> tuple[Intake, asyncio.Task[None]]:
        if self._intake is None or self._chain is None or self._state == "new":
            raise OrganismStateError(
                f"organism {self.spec.name!r} is not running; use `async with "
                f"organism.running():` or `await organism.start()` first")
        return self._intake, self._chain

    # -- talking to the organism from outside ----------------------------------------

    async def submit(self, spore: Spore) -> Spore:
        """Admit a ready-made spore from outside; wait while the organism is full."""
        intake, _ = self._require_running()
        if self._state != "running":
            raise OrganismStateError(f"organism {self.spec.name!r} is {self._state}; it "
                                     f"admits no new spores")
        if spore.from_agent not in self._outside and spore.from_agent not in self._table.agents:
            self._outside.add(spore.from_agent)
        if not intake.try_admit(spore):
            await intake.admit(spore)
        return spore

    def _outside_spore(self, knowledge: dict[str, Any], *, to: str | None, channel: str | None,
                       sender: str, spore_type: SporeType, priority: int,
                       expires_in: float | None, **extra: Any) -> Spore:
        self._require_running()
        if type(knowledge) is not dict:
            raise SporeError(f"knowledge must be a dict (a JSON object), got "
                             f"{type(knowledge).__name__}: {knowledge!r:.60}")
        if to is not None and to not in self._table.agents:
            close = difflib.get_close_matches(to, list(self._table.agents), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DeliveryError(f"no agent {to!r} in organism {self.spec.name!r}{hint}",
                                reason="unknown agent")
        return Spore(
            knowledge=knowledge, spore_type=spore_type, from_agent=sender, to_agent=to,
            channel=channel or "main", priority=priority,
            expires_at=self.now() + timedelta(seconds=expires_in)
            if expires_in is not None else None, **extra)

    async def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "system",
                   channel: str | None = None, priority: int = 5,
                   expires_in: float | None = None,
                   spore_type: SporeType = SporeType.KNOWLEDGE, **extra: Any) -> Spore:
        """Send knowledge to one agent; returns the spore sent."""
        return await self.submit(self._outside_spore(
            knowledge, to=to_agent, channel=channel, sender=sender, spore_type=spore_type,
            priority=priority, expires_in=expires_in, **extra))

    async def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                        sender: str = "system", priority: int = 5,
                        expires_in: float | None = None) -> Spore:
        """Broadcast knowledge to every subscriber of ``channel``."""
        return await self.submit(self._outside_spore(
            knowledge, to=None, channel=channel, sender=sender,
            spore_type=SporeType.BROADCAST, priority=priority, expires_in=expires_in))

    async def request(self, to_agent: str, knowledge: dict[str, Any], *, timeout: float = 30.0,
                      sender: str = "system", priority: int = 5) -> Spore:
        """Send a request and return the response spore.

        Raises :class:`RequestTimeout` when no response comes within ``timeout``
        seconds, and :class:`HandlerError` (caused by the handler's exception) as
        soon as the responder fails, without waiting for the timeout.
        """
        spore = self._outside_spore(knowledge, to=to_agent, channel=None, sender=sender,
                                    spore_type=SporeType.REQUEST, priority=priority,
                                    expires_in=None)
        return await self._request(spore, timeout, from_handler=False)

    async def _request(self, spore: Spore, timeout: float, *, from_handler: bool) -> Spore:
        future: asyncio.Future[Spore] = asyncio.get_running_loop().create_future()
        self._awaiting[spore.id] = future
        try:
            async with asyncio.timeout(timeout):
                if from_handler:
                    self._emit_from_handler(spore)
                else:
                    await self.submit(spore)
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                raise  # the failure came from the responder, not from our clock
            self._abandoned[spore.id] = None
            if len(self._abandoned) > _ABANDONED_REMEMBERED:
                self._abandoned.popitem(last=False)
            raise RequestTimeout(
                f"no response from {spore.to_agent!r} to request {spore.id} within "
                f"{timeout}s") from None
        finally:
            self._awaiting.pop(spore.id, None)

    def on_outside(self, listener: Callable[[Spore], None]) -> Callable[[], None]:
        """Call ``listener`` with each spore addressed to the outside world; returns an
        unsubscribe function."""
        self._outside_listeners.append(listener)
        return lambda: self._outside_listeners.remove(listener)

    # -- what handlers send ---------------------------------------------------------

    def _emit_from_handler(self, spore: Spore) -> None:
        intake, _ = self._require_running()
        refusal = permission_error(self._table, spore)
        if refusal is not None:
            self.logger.warning("refused: %s -> %s: %s", spore.from_agent,
                                spore.to_agent or f"#{spore.channel}", refusal)
            self._record(spore, refusal.reason, refusal, agent=spore.from_agent)
            raise refusal
        intake.feed((spore,))

    # -- settling spores ----------------------------------------------------------------

    def _on_done(self, replies: list[Spore]) -> None:
        intake = self._intake
        assert intake is not None
        if replies:
            intake.feed(replies)
        intake.settle(1)

    def _on_failed(self, agent: str, spore: Spore, reason: str, error: BaseException,
                   attempts: int) -> None:
        self.logger.warning("agent %r failed on spore %s (attempt %d): %s: %s", agent,
                            spore.id, attempts, type(error).__name__, error)
        self._record(spore, reason, error, agent=agent, attempts=attempts)
        future = self._awaiting.get(spore.id)
        if future is not None and not future.done():
            failure = HandlerError(f"agent {agent!r} failed on request {spore.id} "
                                   f"({reason}): {type(error).__name__}: {error}",
                                   agent=agent, spore_id=spore.id)
            failure.__cause__ = error
            future.set_exception(failure)
        assert self._intake is not None
        self._intake.settle(1)

    def _reject(self, spore: Spore, reason: str, error: BaseException | None) -> None:
        self.logger.info("dead letter %s from %r: %s: %s", spore.id, spore.from_agent,
                         reason, error)
        self._record(spore, reason, error)
        if spore.from_agent in self._lanes:
            self._refused_from[spore.from_agent] += 1
        future = self._awaiting.get(spore.id)
        if future is not None and not future.done():
            future.set_exception(error if isinstance(error, Exception) else DeliveryError(
                f"request {spore.id} was refused: {reason}", reason=reason))
        assert self._intake is not None
        self._intake.settle(1)

    def _record(self, spore: Spore, reason: str, error: BaseException | None, *,
                agent: str | None = None, attempts: int = 0) -> None:
        letter = DeadLetter.of(spore, reason, error, agent=agent, attempts=attempts)
        self.dead_letters.add(letter)
        self._announce_dead_letter(letter)

    def _announce_dead_letter(self, letter: DeadLetter) -> None:
        """Broadcast on the ``dead-letter`` channel when some agent listens there."""
        listeners = self._table.subscribers.get("dead-letter")
        if not listeners or letter.spore.channel == "dead-letter" or self._intake is None:
            return
        self._intake.feed((Spore(
            knowledge={"reason": letter.reason, "error": letter.error, "agent": letter.agent,
                       "attempts": letter.attempts, "spore": letter.spore.to_dict()},
            spore_type=SporeType.NOTIFICATION, from_agent="system", channel="dead-letter",
            thread_id=letter.spore.thread),))

    def _resolve(self, response: Spore) -> None:
        future = self._awaiting.get(response.reply_to or "")
        if future is not None and not future.done():
            future.set_result(response)
        assert self._intake is not None
        self._intake.settle(1)

    def _return_outside(self, spore: Spore) -> None:
        self.outbox.append(spore)
        self.returned += 1
        for listener in list(self._outside_listeners):
            try:
                listener(spore)
            except Exception:  # a listener is the caller's code: never let it stop the chain
                self.logger.exception("an outside listener failed on spore %s", spore.id)
        assert self._intake is not None
        self._intake.settle(1)

    # -- observing ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per agent and in total; a plain JSON-serialisable dict."""
        agents: dict[str, dict[str, Any]] = {}
        for name, agent in self._agents.items():
            lane = agent.lane
            agents[name] = {
                "received": lane.received, "handled": lane.handled, "failed": lane.failed,
                "retried": lane.retried, "in_flight": lane.busy, "queued": lane.queued,
                "refused_sent": self._refused_from[name],
                "latency": self._latency[name].summary(),
            }
        intake = self._intake
        return {
            "organism": self.spec.name,
            "state": self._state,
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at
            else 0.0,
            "agents": agents,
            "totals": {
                "admitted": intake.admitted if intake else 0,
                "replies": intake.fed if intake else 0,
                "received": sum(a["received"] for a in agents.values()),
                "handled": sum(a["handled"] for a in agents.values()),
                "failed": sum(a["failed"] for a in agents.values()),
                "retried": sum(a["retried"] for a in agents.values()),
                "returned": self.returned,
                "dead_letters": self.dead_letters.total,
                "held": intake.held if intake else 0,
            },
            "dead_letters": {
                "total": self.dead_letters.total, "kept": len(self.dead_letters),
                "evicted": self.dead_letters.evicted,
                "by_reason": dict(self.dead_letters.by_reason),
            },
        }
