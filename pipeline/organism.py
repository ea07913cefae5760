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
import dataclasses
import difflib
import inspect
import logging
import time
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiostream import stream

from sporeflow.config import (
    AgentSpec,
    ConfigError,
    DeliveryError,
    Emit,
    HandlerError,
    LimitExceeded,
    OrganismSpec,
    OrganismStateError,
    Problem,
    RequestTimeout,
    SporeError,
    SporeflowError,
    load_organism,
    mask_in_logs,
    organism_from_dict,
    redact_url,
    url_password,
)
from sporeflow.pipeline.backend import Backend
from sporeflow.pipeline.bridge import Bridge, make_bridge, publish_deliveries
from sporeflow.pipeline.budget import ThreadBudget, enforce_budget
from sporeflow.pipeline.context import AgentRuntime, Context
from sporeflow.pipeline.deadletters import DeadLetter, DeadLetterStore
from sporeflow.pipeline.events import (
    AgentStateChanged,
    EventBus,
    OrganismStateChanged,
    SporeAdmitted,
    SporeDeadLettered,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)
from sporeflow.pipeline.intake import Intake
from sporeflow.pipeline.journal import Journal
from sporeflow.pipeline.knowledge import make_knowledge_store
from sporeflow.pipeline.logs import describe_error, spore_fields
from sporeflow.pipeline.metrics import BOUNDS as LATENCY_BOUNDS
from sporeflow.pipeline.metrics import LatencyHistogram
from sporeflow.pipeline.orchestration import orchestrator
from sporeflow.pipeline.procpool import ProcessPool
from sporeflow.pipeline.reload import Reloader, ReloadReport
from sporeflow.pipeline.state import AgentStates
from sporeflow.pipeline.stopping import Stats, parse_condition, wait_until
from sporeflow.pipeline.subscriptions import set_subscription
from sporeflow.pipeline.tracing import SporeTracer, make_tracer
from sporeflow.steps import (
    AgentLane,
    LanePolicy,
    RoutingTable,
    RunnerPool,
    Spore,
    SporeType,
    check_broadcasts,
    check_sent_spore,
    check_spore,
    dispatch,
    expire_filter,
    new_spore,
    permission_error,
    route,
    schema_check,
    shape_replies,
    utc_now,
    validate,
)

__all__ = ["Organism"]


async def _stub(spore: Spore, ctx: Context) -> None:
    """Stands in for the existing agents while a new agent's references are checked."""

OUTSIDE_SENDERS = frozenset({"system", "cli"})


def _refusal_reason(exc: SporeflowError) -> str:
    """The dead-letter reason of a refusal: its own, else by kind."""
    reason = getattr(exc, "reason", None)
    if type(reason) is str:
        return reason
    return "limit exceeded" if isinstance(exc, LimitExceeded) else "invalid"
_ABANDONED_REMEMBERED = 10_000
_OUTBOX_KEPT = 10_000


class Organism:
    """Agents wired by an :class:`OrganismSpec`, running on one event loop."""

    def __init__(self, spec: OrganismSpec, *, now: Callable[[], datetime] = utc_now,
                 tracing: bool | SporeTracer = False,
                 journal: str | Path | Journal | None = None,
                 backend: Backend | str | None = None,
                 hosted: Iterable[str] | None = None) -> None:
        self.spec = spec
        # A broker (a Backend, or a URL overriding spec.backend) and the agents this
        # process runs on it (None: all); see pipeline.bridge.
        self._backend, self._hosted = backend, hosted
        self._bridge: Bridge | None = None
        self.now = now
        self.logger = logging.getLogger(f"sporeflow.organism.{spec.name}")
        # The key and the broker password are masked in every log line from here on.
        mask_in_logs(self.logger, spec.signing_key, url_password(spec.backend),
                     url_password(backend) if isinstance(backend, str) else None)
        self.events = EventBus()  # producers check events.active first: free when unwatched
        self.tracer = make_tracer(tracing)  # None: no span, no per-spore cost
        if journal is None and spec.journal is not None:
            journal = spec.journal
        # None: no journal, and no cost beyond one test per hook.
        self._journal = journal if isinstance(journal, Journal | None) else Journal(journal)
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
        self._refused_why: Counter[tuple[str, str]] = Counter()  # (sender, reason)
        self._checked: set[int] = set()  # ids of held spores check_spore passed at entry
        # Agent name -> its schema check; one dict shared with the chain, so that a reload
        # can swap checks in place (the broadcast check is in the chain only if any is set).
        self._schemas: dict[str, Callable[[Spore], None]] = {}
        # Per channel: broadcasts routed, the deliveries they made, broadcasts refused.
        # [broadcasts, deliveries] per channel: a list bumped in place is the cheapest count.
        self._fanout: dict[str, list[int]] = {}
        self._refused_on: Counter[str] = Counter()
        self._table = RoutingTable(agents=frozenset())
        self._intake: Intake | None = None
        self._chain: asyncio.Task[None] | None = None
        self._state = "new"
        self._started_at = 0.0
        self._pool = RunnerPool(name=f"sporeflow:{spec.name}")
        self._agent_states = AgentStates(spec.name, self.logger)
        self._stop_watchers: set[asyncio.Task[int]] = set()
        self._budget = ThreadBudget.from_limits(spec.limits)
        self._procpool = ProcessPool(spec.limits.process_pool)
        self.knowledge_store = make_knowledge_store(spec)  # what knowledge_references name
        self._reloader = Reloader(self)  # notes the handler modules' files as imported now

    # -- construction -------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, *, tracing: bool | SporeTracer = False,
                  journal: str | Path | None = None, backend: Backend | str | None = None,
                  hosted: Iterable[str] | None = None) -> Organism:
        """Load ``path`` (raising :class:`ConfigError` listing every problem).

        ``journal`` overrides the file's ``organism.journal``, ``backend`` its
        ``organism.backend``; ``hosted`` names the agents this process runs (broker only).
        """
        return cls(load_organism(path), tracing=tracing, journal=journal, backend=backend,
                   hosted=hosted)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path = ".",
                  tracing: bool | SporeTracer = False) -> Organism:
        """Build from a dict shaped like an organism file; handlers may be callables."""
        return cls(organism_from_dict(dict(data), base_dir=base_dir), tracing=tracing)

    @property
    def state(self) -> str:
        return self._state

    @property
    def journal(self) -> Journal | None:
        """The durable journal, when the organism has one."""
        return self._journal

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

        counts = latency.counts

        def on_done(spore: Spore, replies: list[Spore], seconds: float) -> None:
            counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1  # latency.observe, inlined
            latency.total += seconds
            if replies or self._journal is not None or self.events.active:
                self._on_done(spore, replies, name, seconds)
            else:  # nothing came of it and nobody records or listens: just settle it
                self._intake.settle(1)  # type: ignore[union-attr]

        # Bound to this runtime, not looked up by name: after a reload, a removed or
        # replaced agent's lane still finishes its work with its own runtime.
        invoke, shape = self._invoker(spec, lambda: agent), self._shaper(spec)
        if self.tracer is not None:  # a span per invocation; replies carry its context
            invoke, shape = self.tracer.wrap(name, invoke, shape)
        done: Callable[[Spore, list[Spore], float], None] = on_done
        failed: Callable[[Spore, str, BaseException, int], None] = on_failed
        if self._bridge is not None:  # ack a delivery once handled and its output is out
            invoke, done, failed = self._bridge.track(name, invoke, on_done, on_failed)
        lane = AgentLane(
            name, invoke, shape,
            LanePolicy(spec.concurrency, spec.timeout, spec.retry),
            on_done=done, on_failed=failed, now=self.now,
            pool=self._pool,
        )
        agent = AgentRuntime(spec, lane, logging.getLogger(f"sporeflow.agent.{spec.name}"))
        self._agent_states.attach(agent)  # a class agent's holder, state loaded beforehand
        return agent

    def _invoker(self, spec: AgentSpec,
                 runtime: Callable[[], AgentRuntime]) -> Callable[[Spore, int], Any]:
        handler: Callable[..., Any] = orchestrator(spec) or spec.handler  # gather, sequence
        if spec.cpu_bound:  # in a worker process; spores and results cross as JSON
            return self._procpool.invoker(spec, self.spec.base_dir)
        if inspect.isclass(handler):  # one instance per agent handles every spore

            async def invoke_instance(spore: Spore, attempt: int) -> Any:
                agent = runtime()
                return await agent.actor.call(spore, Context(self, agent, spore, attempt))

            return invoke_instance
        # A callable object counts as async when its class's __call__ is.
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__)

        def invoke_async(spore: Spore, attempt: int) -> Any:
            return handler(spore, Context(self, runtime(), spore, attempt))

        def invoke_sync(spore: Spore, attempt: int) -> Any:
            # Plain functions may block: they run on a worker thread, off the loop.
            context = Context(self, runtime(), spore, attempt)
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
        self.logger.debug("starting organism %r on backend %s", self.spec.name, redact_url(
            self._backend if isinstance(self._backend, str) else self.spec.backend))
        # No broker (memory) gives None: lanes are fed by dispatch, the embedded fast path.
        self._bridge = make_bridge(self, self._backend, self._hosted)
        # A foreign or damaged journal is refused here, before anything starts.
        unfinished = await self._journal.open() if self._journal is not None else []
        limits = self.spec.limits
        self._intake = Intake(
            max_in_flight=limits.max_in_flight,
            capacities={c.name: c.capacity for c in self.spec.channels.values()},
        )
        self._agents = {name: self._build_agent(a) for name, a in self.spec.agents.items()}
        self._lanes = {name: agent.lane for name, agent in self._agents.items()}
        self._table = self._routing_table()
        self._schemas.clear()
        self._schemas.update({name: schema_check(name, a.schema)
                              for name, a in self.spec.agents.items() if a.schema is not None})
        self._set_state("running")
        self._started_at = time.monotonic()
        self._chain = asyncio.get_running_loop().create_task(
            self._run_chain(self._intake), name=f"sporeflow:{self.spec.name}")
        try:
            await self._agent_states.start(self._agents)  # class agents with lazy: false
        except OrganismStateError:
            await self.stop(drain_timeout=0)
            raise
        if self._bridge is not None:
            try:
                await self._bridge.start()
            except SporeflowError:
                await self.stop(drain_timeout=0)
                raise
        if self._journal is not None:
            self._replay(self._journal, unfinished)
        for agent in self.spec.agents.values():
            # With a broker, each process boots the agents it hosts.
            if agent.boot is not None and (self._bridge is None
                                           or agent.name in self._bridge.hosted):
                await self._boot(agent.name, agent.boot)

    async def _boot(self, agent: str, knowledge: Mapping[str, Any]) -> None:
        if self._journal is None:
            await self.send(agent, dict(knowledge))
            return
        boot_id = self._journal.boot_id(agent)  # None: this journal sent it already
        if boot_id is not None:
            await self.send(agent, dict(knowledge), id=boot_id)

    def _replay(self, journal: Journal, unfinished: list[Spore]) -> None:
        """Feed what the journal holds unfinished back in, before any new spore.

        They go through the whole chain again: the expire filter dead-letters those
        that expired meanwhile, and the intake takes them highest priority first.
        """
        assert self._intake is not None
        journal.replayed += len(unfinished)
        if unfinished:
            self._intake.feed(unfinished)
            self.logger.info("replaying %d unfinished spore(s) from %s", len(unfinished),
                             journal.path)

    def _set_state(self, new: str) -> None:
        old, self._state = self._state, new
        if self.events.active and old != new:
            at = self.now()
            self.events.emit(OrganismStateChanged(organism=self.spec.name, old=old, new=new,
                                                  at=at))
            for name in self._agents:
                self.events.emit(AgentStateChanged(agent=name, old=old, new=new, at=at))

    def _build_chain(self, intake: Intake) -> Any:
        checked = (
            stream.iterate(intake.batches())
            | validate.pipe(limits=self.spec.limits, on_reject=self._reject,
                            schemas=self._schemas, checked=self._checked)
            | expire_filter.pipe(on_reject=self._reject, now=self.now)
        )
        if self._budget.enforcing:  # only with a per-thread limit: no cost otherwise
            checked = checked | enforce_budget.pipe(budget=self._budget, on_reject=self._reject)
        routed = (
            checked
            | route.pipe(
                table=lambda: self._table, on_reject=self._reject,
                awaited=self._awaiting, abandoned=self._abandoned,
                on_response=self._resolve, outside=self._outside,
                on_outside=self._return_outside if self._bridge is None
                else self._bridge.outside(self._return_outside), on_fanout=intake.fanout)
        )
        if self._schemas:  # a broadcast is checked per subscriber that has a schema
            routed = routed | check_broadcasts.pipe(schemas=self._schemas,
                                                    on_reject=self._reject)
        if self._journal is not None:  # a broadcast to N agents is done after the N-th
            routed = routed | stream.map.pipe(self._journal.count_deliveries)
        return (
            routed
            | (dispatch.pipe(lanes=lambda: self._lanes, on_reject=self._reject)
               if self._bridge is None  # with a broker, the hosted agents' consumers feed lanes
               else publish_deliveries.pipe(bridge=self._bridge))
        )

    async def _run_chain(self, intake: Intake) -> None:
        try:
            async with self._build_chain(intake).stream() as deliveries:
                fanout = self._fanout
                async for batch in deliveries:
                    for spore, targets in batch:
                        if spore.to_agent is None:  # a broadcast: count it for its channel
                            counts = fanout.get(spore.channel)
                            if counts is None:
                                counts = fanout[spore.channel] = [0, 0]
                            counts[0] += 1
                            counts[1] += len(targets)
        except Exception:
            self.logger.critical("the chain of %r crashed; the organism stops", self.spec.name,
                                 exc_info=True)
            self._set_state("failed")
            raise

    async def stop(self, *, drain_timeout: float | None = 30.0) -> int:
        """Stop admitting, finish in-flight work and its replies, then stop.

        What could not finish within ``drain_timeout`` is dead-lettered with reason
        ``shutdown``; returns how many spores that was.
        """
        intake, chain = self._intake, self._chain
        if self._state not in ("running", "failed") or intake is None or chain is None:
            return 0
        self._set_state("stopping")
        intake.close()
        if self._bridge is not None:  # take no new deliveries; finish those taken
            await self._bridge.stop_consuming()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle(), drain_timeout)
        # Pause every lane before cancelling any: a handler's cancellation may still send
        # replies, and they must find lanes that keep them for the dead letters below.
        # Lanes a reload retired (removed or replaced agents) may still hold work too.
        lanes = [(name, agent.lane) for name, agent in self._agents.items()]
        lanes += self._reloader.close()
        for _, lane in lanes:
            lane.pause()
        left = 0
        for _, lane in lanes:
            left += await lane.cancel("shutdown")
        for name, lane in lanes:
            left += self._abandon_queued(name, lane, "shutdown")
        self._checked.clear()  # what the chain did not take is dead-lettered below
        for spore in intake.finish():
            self._record(spore, "shutdown", OrganismStateError("the organism stopped first"))
            intake.settle(1)
            left += 1
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await chain
        for future in self._awaiting.values():
            if not future.done():
                future.set_exception(OrganismStateError("the organism stopped"))
        await self._agent_states.stop(self._agents)  # on_stop hooks, after the drain
        await self._procpool.close()
        await self._pool.close()
        self._pool = RunnerPool(name=f"sporeflow:{self.spec.name}")  # for a restart
        if self._bridge is not None:  # pending acks first; the broker requeues the rest
            await self._bridge.close()
        if self._journal is not None:
            await self._journal.close()  # what was unfinished stays there, for the next start
        self._set_state("stopped")
        if left:
            self.logger.warning("stopped with %d spore(s) unfinished: %s", left,
                                "kept in the journal for the next start"
                                if self._journal is not None else "dead-lettered as 'shutdown'")
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

    async def reload(self, path: str | Path | None = None) -> ReloadReport:
        """Re-read the organism file (or ``path``), check it as ``sporeflow check`` does,
        and apply it agent by agent; an invalid file changes nothing. See
        :mod:`sporeflow.pipeline.reload`. Returns what was applied or why it was refused.
        """
        return await self._reloader.reload(path)

    async def add_agent(self, name: str, agent: Mapping[str, Any]) -> ReloadReport:
        """Add agent ``name``, declared as in an organism file (``handler`` may be a
        callable), through the path a reload takes: it starts and gets its ``boot``.

        Its references (emit, peers, subscriptions) are checked against this organism;
        a problem raises :class:`ConfigError` and changes nothing.
        """
        if name in self.spec.agents:
            raise ConfigError([Problem(file="<python>", line=0, column=0, path=f"agents.{name}",
                                       message=f"agent {name!r} exists already; reload a "
                                               f"changed file to change it")])
        added = self._agent_spec(name, agent)
        spec = dataclasses.replace(self.spec, agents={**self.spec.agents, name: added})
        return await self._reloader.apply(spec, source=f"add_agent({name!r})")

    async def remove_agent(self, name: str) -> ReloadReport:
        """Remove agent ``name`` as a reload would: it finishes what it holds, and spores
        for it afterwards are dead-lettered as ``unknown agent``.

        Raises :class:`ConfigError` while another agent still emits to it or names it
        among its peers.
        """
        if name not in self.spec.agents:
            raise DeliveryError(f"no agent {name!r} in organism {self.spec.name!r}",
                                reason="unknown agent")
        users = sorted(a.name for a in self.spec.agents.values() if a.name != name and (
            (a.emit is not None and a.emit.to == name) or (a.peers and name in a.peers)))
        if users:
            raise ConfigError([Problem(file="<python>", line=0, column=0, path=f"agents.{name}",
                                       message=f"agents {users} still emit to or name {name!r} "
                                               f"as a peer; change them first")])
        agents = {n: a for n, a in self.spec.agents.items() if n != name}
        spec = dataclasses.replace(self.spec, agents=agents)
        return await self._reloader.apply(spec, source=f"remove_agent({name!r})")

    def _agent_spec(self, name: str, agent: Mapping[str, Any]) -> AgentSpec:
        """Check one agent's declaration against this organism's names; return its spec."""
        spec = self.spec
        builtin = ("main", "dead-letter")
        probe = organism_from_dict({
            "organism": {"name": spec.name},
            # The others as stubs: enough for the new agent's references to resolve.
            "agents": {**{n: {"handler": _stub} for n in spec.agents}, name: dict(agent)},
            "channels": {c.name: {k: list(v) for k, v in (("publish", c.publish),
                                                          ("subscribe", c.subscribe))
                                  if v is not None}
                         for c in spec.channels.values() if c.name not in builtin},
        }, base_dir=spec.base_dir)
        return probe.agents[name]

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

    def stop_when(self, condition: str | Callable[[Stats], bool], *, interval: float = 0.1,
                  drain_timeout: float | None = 30.0) -> asyncio.Task[int]:
        """Stop (draining) once ``condition`` holds over :meth:`stats`.

        ``condition`` is a predicate taking the stats dict, or an expression like
        ``"totals.handled >= 100"`` (see ``pipeline.stopping``). It is checked every
        ``interval`` seconds, then the organism stops as :meth:`stop` does. Returns a
        task to await; its result is what :meth:`stop` returns (0 when the organism was
        stopped otherwise first).
        """
        self._require_running()
        predicate = parse_condition(condition) if isinstance(condition, str) else condition

        async def watch() -> int:
            await wait_until(self.stats, lambda stats: self._state != "running"
                             or predicate(stats), interval=interval)
            if self._state != "running":
                return 0
            return await self.stop(drain_timeout=drain_timeout)

        task = asyncio.get_running_loop().create_task(watch(), name="sporeflow:stop_when")
        self._stop_watchers.add(task)
        task.add_done_callback(self._stop_watchers.discard)
        return task

    def _require_running(self) -> tuple[Intake, asyncio.Task[None]]:
        if self._intake is None or self._chain is None or self._state == "new":
            raise OrganismStateError(
                f"organism {self.spec.name!r} is not running; use `async with "
                f"organism.running():` or `await organism.start()` first")
        return self._intake, self._chain

    # -- talking to the organism from outside ----------------------------------------

    async def submit(self, spore: Spore) -> Spore:
        """Admit a ready-made spore from outside; wait while the organism is full."""
        if self._state != "running" or self._intake is None:
            raise self._not_admitting()
        check_spore(spore, self.spec.limits)  # the caller learns at once what validate refuses
        return await self._admit(spore)

    async def _admit(self, spore: Spore) -> Spore:
        """Admit a checked spore from outside; wait while the organism is full."""
        intake = self._intake
        assert intake is not None
        table = self._table
        if table.peers or table.publishers:
            refusal = permission_error(table, spore, outside=self._outside)
            if refusal is not None:
                raise refusal
        sender = spore.from_agent
        if sender not in self._outside and sender not in table.agents:
            self._outside.add(sender)
        if self.tracer is not None:  # the caller's span, if any, becomes the spore's origin
            spore = self.tracer.stamp(spore)
        # The validate stage need not check it again: held by the intake, it keeps its id.
        self._checked.add(id(spore))
        if not intake.try_admit(spore):
            try:
                await intake.admit(spore)
            except BaseException:
                self._checked.discard(id(spore))  # never admitted: its id may be reused
                raise
        if self.events.active:  # told before any await, so before it can be handled
            self.events.emit(SporeAdmitted(spore=spore, at=self.now()))
        if self._journal is not None:  # queued with no await since admission: the sender
            await self._journal.record((spore,))  # hears back once it is on disk
        return spore

    def _not_admitting(self) -> OrganismStateError:
        if self._state == "new" or self._intake is None:
            self._require_running()
        return OrganismStateError(f"organism {self.spec.name!r} is {self._state}; it "
                                  f"admits no new spores")

    def _outside_spore(self, knowledge: dict[str, Any], *, to: str | None, channel: str | None,
                       sender: str, spore_type: SporeType, priority: int,
                       expires_in: float | None, extra: dict[str, Any]) -> Spore:
        if self._state != "running":
            raise self._not_admitting()
        if type(knowledge) is not dict:
            raise SporeError(f"knowledge must be a dict (a JSON object), got "
                             f"{type(knowledge).__name__}: {knowledge!r:.60}")
        if to is not None and to not in self._table.agents:
            close = difflib.get_close_matches(to, list(self._table.agents), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DeliveryError(f"no agent {to!r} in organism {self.spec.name!r}{hint}",
                                reason="unknown agent")
        expires_at = (self.now() + timedelta(seconds=expires_in)
                      if expires_in is not None else None)
        if extra:  # fields of the caller's own (id, metadata, ...): check every one
            spore = Spore(knowledge=knowledge, spore_type=spore_type, from_agent=sender,
                          to_agent=to, channel=channel or "main", priority=priority,
                          expires_at=expires_at, **extra)
            check_spore(spore, self.spec.limits)
            return spore
        spore = new_spore(knowledge=knowledge, spore_type=spore_type, from_agent=sender,
                          to_agent=to, channel=channel or "main", priority=priority,
                          expires_at=expires_at)
        check_sent_spore(spore, self.spec.limits)
        return spore

    # send and broadcast return _admit's coroutine rather than being coroutines of their
    # own: one frame less per spore, and a bad argument raises at the call already.
    def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "system",
             channel: str | None = None, priority: int = 5, expires_in: float | None = None,
             spore_type: SporeType = SporeType.KNOWLEDGE,
             **extra: Any) -> Coroutine[Any, Any, Spore]:
        """Send knowledge to one agent; await it for the spore sent."""
        return self._admit(self._outside_spore(
            knowledge, to=to_agent, channel=channel, sender=sender, spore_type=spore_type,
            priority=priority, expires_in=expires_in, extra=extra))

    def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                  sender: str = "system", priority: int = 5,
                  expires_in: float | None = None) -> Coroutine[Any, Any, Spore]:
        """Broadcast knowledge to every subscriber of ``channel``; await it for the spore."""
        return self._admit(self._outside_spore(
            knowledge, to=None, channel=channel, sender=sender,
            spore_type=SporeType.BROADCAST, priority=priority, expires_in=expires_in,
            extra={}))

    async def request(self, to_agent: str, knowledge: dict[str, Any], *, timeout: float = 30.0,
                      sender: str = "system", priority: int = 5) -> Spore:
        """Send a request and return the response spore.

        Raises :class:`RequestTimeout` when no response comes within ``timeout``
        seconds, and :class:`HandlerError` (caused by the handler's exception) as
        soon as the responder fails, without waiting for the timeout.
        """
        spore = self._outside_spore(knowledge, to=to_agent, channel=None, sender=sender,
                                    spore_type=SporeType.REQUEST, priority=priority,
                                    expires_in=None, extra={})
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
        refusal = permission_error(self._table, spore, outside=self._outside)
        if refusal is not None:
            self.logger.warning("refused: %s -> %s: %s", spore.from_agent,
                                spore.to_agent or f"#{spore.channel}", refusal,
                                extra=spore_fields(spore, agent=spore.from_agent,
                                                   event="refused", reason=refusal.reason))
            self._record(spore, refusal.reason, refusal, agent=spore.from_agent)
            if spore.to_agent is None:
                self._refused_on[spore.channel] += 1
            raise refusal
        try:
            check_spore(spore, self.spec.limits)
        except SporeError as exc:
            self.logger.warning("refused: %s -> %s: %s", spore.from_agent,
                                spore.to_agent or f"#{spore.channel}", describe_error(exc),
                                extra=spore_fields(spore, agent=spore.from_agent,
                                                   event="refused", reason=_refusal_reason(exc)))
            self._record(spore, _refusal_reason(exc), exc, agent=spore.from_agent)
            raise
        if self.tracer is not None:  # sent from inside the handler's span
            spore = self.tracer.stamp_sent(spore)
        self._checked.add(id(spore))  # the validate stage need not check it again
        intake.feed((spore,))
        if self._bridge is not None:  # its delivery is acked only once this one is out
            self._bridge.adopt(spore)
        if self._journal is not None and spore.id not in self._awaiting:
            # A request a handler awaits is not kept: a replayed handler asks again.
            self._journal.add((spore,))
        if self.events.active:
            self.events.emit(SporeAdmitted(spore=spore, agent=spore.from_agent, at=self.now()))

    # -- settling spores ----------------------------------------------------------------

    def _on_done(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        intake = self._intake
        assert intake is not None
        if self._journal is not None:  # done and its replies recorded in one transaction
            replies = self._journal.done(spore, replies)
        if replies:
            for reply in replies:
                priority = reply.priority
                if type(priority) is not int or not 1 <= priority <= 10:
                    # The intake orders by priority: refuse it here, it could not be queued.
                    replies = self._refuse_unqueueable(replies)
                    break
            intake.feed(replies)
        intake.settle(1)
        if self.events.active:
            self._announce_handled(spore, replies, agent, latency)

    def _refuse_unqueueable(self, replies: list[Spore]) -> list[Spore]:
        """Dead-letter the replies whose priority cannot be queued; return the rest."""
        kept = []
        for reply in replies:
            priority = reply.priority
            if type(priority) is not int or not 1 <= priority <= 10:
                error = LimitExceeded(f"priority {priority!r:.40} is out of range; use 1..10")
                self._record(reply, "limit exceeded", error, agent=reply.from_agent)
            else:
                kept.append(reply)
        return kept

    def _on_failed(self, agent: str, spore: Spore, reason: str, error: BaseException,
                   attempts: int) -> None:
        self.logger.warning("agent %r failed on spore %s (attempt %d): %s", agent,
                            spore.id, attempts, describe_error(error),
                            extra=spore_fields(spore, agent=agent, event="failed", reason=reason))
        if self.events.active:
            self._announce_failed(spore, agent, reason, error, attempts)
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
                         reason, describe_error(error),
                         extra=spore_fields(spore, event="dead-lettered", reason=reason))
        if self.events.active and reason == "expired":
            self.events.emit(SporeExpired(spore=spore, at=self.now()))
        self._record(spore, reason, error)
        # A refused spore may be malformed in any field: hash only what is a string.
        if type(spore.from_agent) is str and spore.from_agent in self._lanes:
            self._refused_from[spore.from_agent] += 1
            self._refused_why[spore.from_agent, reason] += 1
        if spore.to_agent is None and type(spore.channel) is str:
            self._refused_on[spore.channel] += 1
        future = self._awaiting.get(spore.id) if type(spore.id) is str else None
        if future is None and type(spore.reply_to) is str:
            # A refused response (over budget, too big...) fails its request now, not later.
            future = self._awaiting.get(spore.reply_to)
        if future is not None and not future.done():
            future.set_exception(error if isinstance(error, Exception) else DeliveryError(
                f"request {spore.id} was refused: {reason}", reason=reason))
        assert self._intake is not None
        self._intake.settle(1)
        if self._bridge is not None:
            self._bridge.release(spore)

    def _record(self, spore: Spore, reason: str, error: BaseException | None, *,
                agent: str | None = None, attempts: int = 0) -> None:
        letter = DeadLetter.of(spore, reason, error, agent=agent, attempts=attempts)
        self.dead_letters.add(letter)
        if self._journal is not None and reason != "shutdown":
            # Kept, and no longer pending; what a stop interrupts stays pending instead.
            self._journal.dead(letter)
        if self.events.active:  # every dead letter passes here exactly once
            self.events.emit(SporeDeadLettered(spore=spore, agent=agent, reason=reason,
                                               error=letter.error, at=self.now()))
        self._announce_dead_letter(letter)

    def _announce_dead_letter(self, letter: DeadLetter) -> None:
        """Broadcast on the ``dead-letter`` channel when some agent listens there."""
        listeners = self._table.subscribers.get("dead-letter")
        if not listeners or letter.spore.channel == "dead-letter" or self._intake is None:
            return
        notice = (Spore(
            knowledge={"reason": letter.reason, "error": letter.error, "agent": letter.agent,
                       "attempts": letter.attempts, "spore": letter.spore.to_dict()},
            spore_type=SporeType.NOTIFICATION, from_agent="system", channel="dead-letter",
            thread_id=letter.spore.thread),)
        self._intake.feed(notice)
        if self._journal is not None:
            self._journal.add(notice)

    def _announce_handled(self, spore: Spore, replies: list[Spore], agent: str,
                          latency: float) -> None:
        at = self.now()
        self.events.emit(SporeHandled(spore=spore, agent=agent, latency=latency,
                                      replies=len(replies), at=at))
        for reply in replies:
            self.events.emit(SporeAdmitted(spore=reply, agent=agent, at=at))

    def _announce_failed(self, spore: Spore, agent: str, reason: str, error: BaseException,
                         attempts: int) -> None:
        if reason == "expired":  # it expired waiting in the agent's mailbox
            self.events.emit(SporeExpired(spore=spore, agent=agent, at=self.now()))
        else:
            self.events.emit(SporeFailed(spore=spore, agent=agent, reason=reason,
                                         error=f"{type(error).__name__}: {error}",
                                         attempt=attempts, at=self.now()))

    def _resolve(self, response: Spore) -> None:
        future = self._awaiting.get(response.reply_to or "")
        if future is not None and not future.done():
            future.set_result(response)
        self._ended(response)

    def _return_outside(self, spore: Spore) -> None:
        self.outbox.append(spore)
        self.returned += 1
        for listener in list(self._outside_listeners):
            try:
                listener(spore)
            except Exception:  # a listener is the caller's code: never let it stop the chain
                self.logger.exception("an outside listener failed on spore %s", spore.id,
                                      extra=spore_fields(spore, event="returned"))
        self._ended(spore)

    def _ended(self, spore: Spore) -> None:
        """``spore`` is finished without a handler (resolved a request, or went outside)."""
        if self._journal is not None:
            self._journal.settle(spore)
        assert self._intake is not None
        self._intake.settle(1)
        if self._bridge is not None:
            self._bridge.release(spore)

    # -- wiring at run time --------------------------------------------------------------

    def subscribe(self, agent: str, channel: str) -> bool:
        """Subscribe ``agent`` to ``channel`` now; returns False if it already was.

        Raises :class:`ConfigError` for an unknown agent or channel, or a channel whose
        ``subscribe`` list leaves the agent out.
        """
        return set_subscription(self, agent, channel, subscribed=True)

    def unsubscribe(self, agent: str, channel: str) -> bool:
        """Unsubscribe ``agent`` from ``channel`` now; returns False if it was not."""
        return set_subscription(self, agent, channel, subscribed=False)

    # -- agent state ----------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of every agent's state (see ``pipeline.state``)."""
        return self._agent_states.save(self._agents)

    def load_state(self, snapshot: Mapping[str, Any]) -> None:
        """Restore a :meth:`save_state` snapshot; before start, it applies at start."""
        self._agent_states.load(snapshot, self._agents)

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
                "refused_by_reason": {why: count for (sender, why), count
                                      in self._refused_why.items() if sender == name},
                "latency": self._latency[name].summary(),
                "subscribe": list(agent.spec.subscribe),
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
            "channels": {
                name: {"broadcasts": self._fanout.get(name, (0, 0))[0],
                       "deliveries": self._fanout.get(name, (0, 0))[1],
                       "refused": self._refused_on[name]}
                for name in dict.fromkeys([*self.spec.channels, *self._fanout,
                                           *self._refused_on])
            },
            "journal": self._journal.stats() if self._journal is not None else None,
            "broker": self._bridge.statistics() if self._bridge is not None else None,
            "reload": self._reloader.stats(),
        }

    def latency_histograms(self) -> dict[str, LatencyHistogram]:
        """Each agent's handler-latency histogram (live objects: read them on the loop)."""
        return dict(self._latency)
