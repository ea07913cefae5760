"""The running organism: a façade over the engine (``core``) and its features.

    intake ─▶ validate ─▶ expire ─▶ [budget] ─▶ route ─▶ schema ─▶ dispatch ─▶ lanes
      ▲                                                                          │
      └──────────────── the ledger feeds handler replies back ◀──────────────────┘

Every spore, from outside, from a handler, from the broker or a journal replay,
enters the intake and passes every stage. The :class:`~sporeflow.pipeline.core.
ledger.Ledger` settles each exactly once; the journal, events, the broker bridge
attach to it as hooks. Agents, lanes, routes and schemas are one
:class:`~sporeflow.pipeline.core.wiring.WiringSnapshot`, swapped whole by reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sporeflow.config import (
    AgentSpec,
    ConfigError,
    DeliveryError,
    OrganismSpec,
    OrganismStateError,
    Problem,
    StageSpec,
    load_organism,
    mask_in_logs,
    organism_from_dict,
    redact_url,
    url_password,
)
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.agents.builder import AgentBuilder
from sporeflow.pipeline.agents.context import Context
from sporeflow.pipeline.agents.knowledge import make_knowledge_store
from sporeflow.pipeline.agents.procpool import ProcessPool
from sporeflow.pipeline.agents.state import AgentStates
from sporeflow.pipeline.broker.backend import Backend
from sporeflow.pipeline.broker.bridge import Bridge, make_bridge, publish_deliveries
from sporeflow.pipeline.core.budget import ThreadBudget, enforce_budget
from sporeflow.pipeline.core.chain import Stage, assemble, place
from sporeflow.pipeline.core.deadletters import DeadLetterStore
from sporeflow.pipeline.core.ingress import OUTSIDE_SENDERS, Ingress
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.lifecycle import State
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.core.run import RunParts
from sporeflow.pipeline.core.subscriptions import set_subscription
from sporeflow.pipeline.core.wiring import AgentRuntime, WiringSnapshot
from sporeflow.pipeline.journal.hook import JournalHook
from sporeflow.pipeline.journal.store import Journal
from sporeflow.pipeline.observe.eventhook import EventHook
from sporeflow.pipeline.observe.events import AgentStateChanged, EventBus, OrganismStateChanged
from sporeflow.pipeline.observe.stats import organism_stats
from sporeflow.pipeline.observe.stopping import Stats, parse_condition, wait_until
from sporeflow.pipeline.observe.tracing import SporeTracer, make_tracer
from sporeflow.pipeline.reload.reloader import Reloader, ReloadReport
from sporeflow.steps import (
    RunnerPool,
    Spore,
    SporeType,
    check_schemas,
    dispatch,
    expire_filter,
    route,
    utc_now,
    validate,
)

__all__ = ["Organism"]


async def _stub(spore: Spore, ctx: Context) -> None:
    """Stands in for the existing agents while a new agent's references are checked."""


class Organism:
    """Agents wired by an :class:`OrganismSpec`, running on one event loop."""

    def __init__(self, spec: OrganismSpec, *, now: Callable[[], datetime] = utc_now,
                 tracing: bool | SporeTracer = False,
                 journal: str | Path | Journal | None = None,
                 backend: Backend | str | None = None,
                 hosted: Iterable[str] | None = None,
                 stages: Sequence[StageSpec] = ()) -> None:
        self.spec = spec
        # A broker (a Backend, or a URL overriding spec.backend) and the agents this
        # process runs on it (None: all); see pipeline.broker.bridge.
        self._backend, self._hosted = backend, hosted
        self._bridge: Bridge | None = None
        self.now = now
        self.logger = logging.getLogger(f"sporeflow.organism.{spec.name}")
        # The key and the broker password are masked in every log line from here on.
        mask_in_logs(self.logger, spec.signing_key, url_password(spec.backend),
                     url_password(backend) if isinstance(backend, str) else None)
        self.events = EventBus()
        self.events.on_active = self._watch_events
        self._event_hook = EventHook(self.events, now)
        self.tracer = make_tracer(tracing)  # None: no span, no per-spore cost
        if journal is None and spec.journal is not None:
            journal = spec.journal
        self._journal = journal if isinstance(journal, Journal | None) else Journal(journal)
        self.dead_letters = DeadLetterStore(spec.limits.max_dead_letters)
        self.outbox: deque[Spore] = deque(maxlen=10_000)
        self._outside_listeners: list[Callable[[Spore], None]] = []
        self._outside: set[str] = set(OUTSIDE_SENDERS)
        self._requests = RequestBook()
        self._wiring = WiringSnapshot.empty(spec)
        self._latency: dict[str, LatencyHistogram] = {}
        self._checked: set[int] = set()  # ids of held spores checked where they entered
        self._user_stages = [*spec.stages, *stages]
        self._state = State.NEW
        self._started_at = 0.0
        self._returned_before = 0
        self._pool = RunnerPool(name=f"sporeflow:{spec.name}")
        self._agent_states = AgentStates(spec.name, self.logger)
        self._stop_watchers: set[asyncio.Task[int]] = set()
        self._budget = ThreadBudget.from_limits(spec.limits)
        self._procpool = ProcessPool(spec.limits.process_pool)
        self.knowledge_store = make_knowledge_store(spec)  # what knowledge_references name
        self._intake: Intake | None = None
        self._ledger: Ledger | None = None
        self._ingress: Ingress | None = None
        self._chain: asyncio.Task[None] | None = None
        self._builder: AgentBuilder | None = None
        self._reloader = Reloader(self)  # notes the handler modules' files as imported now

    # -- construction -------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, *, tracing: bool | SporeTracer = False,
                  journal: str | Path | None = None, backend: Backend | str | None = None,
                  hosted: Iterable[str] | None = None,
                  stages: Sequence[StageSpec] = ()) -> Organism:
        """Load ``path`` (raising :class:`ConfigError` listing every problem).

        ``journal`` overrides the file's ``organism.journal``, ``backend`` its
        ``organism.backend``; ``hosted`` names the agents this process runs (broker only).
        """
        return cls(load_organism(path), tracing=tracing, journal=journal, backend=backend,
                   hosted=hosted, stages=stages)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path = ".",
                  tracing: bool | SporeTracer = False,
                  stages: Sequence[StageSpec] = ()) -> Organism:
        """Build from a dict shaped like an organism file; handlers may be callables."""
        return cls(organism_from_dict(dict(data), base_dir=base_dir), tracing=tracing,
                   stages=stages)

    @property
    def state(self) -> str:
        return self._state

    @property
    def journal(self) -> Journal | None:
        """The durable journal, when the organism has one."""
        return self._journal

    @property
    def agents(self) -> Mapping[str, AgentSpec]:
        return {name: agent.spec for name, agent in self._wiring.agents.items()}

    @property
    def returned(self) -> int:
        """How many spores were returned to the outside world."""
        ledger = self._ledger
        return self._returned_before + (ledger.returned if ledger is not None else 0)

    @property
    def brokered(self) -> bool:
        return self._bridge is not None

    # -- what the parts see of the organism (narrow ports, see agents/ and reload/) ----

    def wiring(self) -> WiringSnapshot:
        """The current wiring snapshot (read it, never change it)."""
        return self._wiring

    def rewire(self, spec: OrganismSpec, agents: Mapping[str, AgentRuntime]) -> None:
        """Swap in the wiring of ``spec`` run by ``agents``, at once."""
        self.spec = spec
        self._wiring = WiringSnapshot.of(spec, agents)
        if self._intake is not None:
            self._intake.configure(
                max_in_flight=spec.limits.max_in_flight,
                capacities={c.name: c.capacity for c in spec.channels.values()})

    def build_agent(self, spec: AgentSpec) -> AgentRuntime:
        assert self._builder is not None, "agents are built while the organism runs"
        return self._builder.build(spec)

    async def start_agent(self, agent: AgentRuntime) -> None:
        await self._agent_states.start({agent.spec.name: agent})

    def emit(self, spore: Spore, parent: Spore, agent: str) -> None:
        self._require_ingress().emit(spore, parent, agent)

    async def ask(self, spore: Spore, timeout: float, parent: Spore, agent: str) -> Spore:
        return await self._require_ingress().request(spore, timeout, parent=parent,
                                                     agent=agent)

    def agent_specs(self) -> Mapping[str, AgentSpec]:
        return self.agents

    def subscribers(self, channel: str) -> tuple[str, ...]:
        return self._wiring.table.subscribers.get(channel, ())

    def spend(self, thread: str, amount: float) -> float:
        return self._budget.spend(thread, amount)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the chain and every agent, then send each agent's ``boot`` spore."""
        if self._state in (State.RUNNING, State.STOPPING):
            raise OrganismStateError(f"organism {self.spec.name!r} is already {self._state}")
        self.logger.debug("starting organism %r on backend %s", self.spec.name, redact_url(
            self._backend if isinstance(self._backend, str) else self.spec.backend))
        self._bridge = make_bridge(self.spec, self._backend, self._hosted)
        # A foreign or damaged journal is refused here, before anything starts.
        unfinished = await self._journal.open() if self._journal is not None else []
        self._open_run()
        ledger, intake = self._ledger, self._intake
        assert ledger is not None
        assert intake is not None
        self.rewire(self.spec, {name: self.build_agent(a) for name, a in
                                self.spec.agents.items()})
        chain = self._declare_chain()
        self._set_state(State.RUNNING)
        self._started_at = time.monotonic()
        self._chain = asyncio.get_running_loop().create_task(
            self._run_chain(chain), name=f"sporeflow:{self.spec.name}")
        try:
            await self._agent_states.start(self._wiring.agents)  # lazy: false classes
            if self._bridge is not None:
                await self._bridge.start(self._run_parts())
        except Exception:
            await self.stop(drain_timeout=0)
            raise
        if unfinished:  # replayed through the whole chain, before anything new
            assert self._journal is not None
            self._journal.replayed += len(unfinished)
            intake.feed(unfinished)
            self.logger.info("replaying %d unfinished spore(s) from %s", len(unfinished),
                             self._journal.path)
        for agent in self.spec.agents.values():
            # With a broker, each process boots the agents it hosts.
            if agent.boot is not None and (self._bridge is None
                                           or agent.name in self._bridge.hosted):
                await self.boot(agent.name, agent.boot)

    def _open_run(self) -> None:
        """Make this run's intake, ledger and ingress, and attach the active hooks."""
        spec = self.spec
        if self._ledger is not None:
            self._returned_before += self._ledger.returned
        intake = self._intake = Intake(
            max_in_flight=spec.limits.max_in_flight,
            capacities={c.name: c.capacity for c in spec.channels.values()})
        ledger = self._ledger = Ledger(
            intake=intake, dead_letters=self.dead_letters, requests=self._requests,
            wiring=self.wiring, logger=self.logger, now=self.now, outbox=self.outbox,
            listeners=self._outside_listeners)
        if self._journal is not None:
            ledger.add_hook(JournalHook(self._journal, self._requests))
        if self.events.active:
            ledger.add_hook(self._event_hook)
        bridge = self._bridge
        if bridge is not None:
            ledger.add_hook(bridge)
            local = ledger.return_outside

            def on_outside(spore: Spore) -> None:
                if not bridge.outside(spore):  # not for another process: it stays here
                    local(spore)

            ledger.on_outside = on_outside
        self._ingress = ingress = Ingress(
            intake=intake, ledger=ledger, requests=self._requests, wiring=self.wiring,
            limits=spec.limits, admitting=self._admission_refusal, now=self.now,
            checked=self._checked, outside=self._outside, organism=spec.name)
        if self.tracer is not None:  # the caller's span, if any, becomes the spore's origin
            ingress.stamp_outside, ingress.stamp_sent = self.tracer.stamp, self.tracer.stamp_sent
        if self._journal is not None:
            ingress.persist = self._journal.record
        self._builder = AgentBuilder(
            port=self, ledger=ledger, pool=self._pool, procpool=self._procpool,
            states=self._agent_states, latency=self._latency, base_dir=spec.base_dir,
            now=self.now, wrapper=self.tracer)

    def _run_parts(self) -> RunParts:
        assert self._intake is not None
        assert self._ledger is not None
        return RunParts(intake=self._intake, ledger=self._ledger, requests=self._requests,
                        wiring=self.wiring, outside=self._outside,
                        running=lambda: self._state == State.RUNNING, idle=self.idle)

    def _watch_events(self, active: bool) -> None:
        if self._ledger is not None:
            if active:
                self._ledger.add_hook(self._event_hook)
            else:
                self._ledger.remove_hook(self._event_hook)

    async def boot(self, agent: str, knowledge: Mapping[str, Any]) -> Spore | None:
        """Send ``agent`` its boot spore (once per journal, when there is one)."""
        if self._journal is None:
            return await self.send(agent, dict(knowledge))
        boot_id = self._journal.boot_id(agent)  # None: this journal sent it already
        if boot_id is None:
            return None
        return await self.send(agent, dict(knowledge), id=boot_id)

    def _set_state(self, new: State) -> None:
        old, self._state = self._state, new
        if self.events.active and old != new:
            at = self.now()
            self.events.emit(OrganismStateChanged(organism=self.spec.name, old=old, new=new,
                                                  at=at))
            for name in self._wiring.agents:
                self.events.emit(AgentStateChanged(agent=name, old=old, new=new, at=at))

    def _declare_chain(self) -> list[Stage]:
        """The chain's stages, in order, with the user's stages in their places."""
        ledger, intake, bridge = self._ledger, self._intake, self._bridge
        assert ledger is not None
        assert intake is not None
        reject = ledger.reject
        stages = [
            Stage("validate", validate.pipe(limits=self.spec.limits, on_reject=reject,
                                            checked=self._checked,
                                            verify=bridge.verify if bridge else None)),
            Stage("expire", expire_filter.pipe(on_reject=reject, now=self.now)),
        ]
        if self._budget.enforcing:  # only with a per-thread limit: no cost otherwise
            stages.append(Stage("budget", enforce_budget.pipe(budget=self._budget,
                                                              on_reject=reject)))
        requests = self._requests
        stages += [
            Stage("route", route.pipe(
                table=lambda: self._wiring.table, on_reject=reject, asked=requests.asked,
                abandoned=requests.abandoned, on_response=ledger.resolve,
                outside=self._outside, on_outside=lambda spore: ledger.on_outside(spore),
                on_broadcast=ledger.broadcast_routed,
                arrived=bridge.arrived if bridge else None)),
            Stage("schema", check_schemas.pipe(schemas=lambda: self._wiring.schemas,
                                               on_reject=reject)),
        ]
        stages.append(Stage("dispatch", dispatch.pipe(lanes=lambda: self._wiring.lanes,
                                                      on_reject=reject)
                            if bridge is None else publish_deliveries.pipe(bridge=bridge)))
        return place(stages, self._user_stages, reject)

    async def _run_chain(self, stages: list[Stage]) -> None:
        intake = self._intake
        assert intake is not None
        try:
            async with assemble(intake.batches(), stages).stream() as deliveries:
                async for _ in deliveries:
                    pass  # the stages did the work; the lanes run the handlers
        except Exception:
            self.logger.critical("the chain of %r crashed; the organism stops", self.spec.name,
                                 exc_info=True)
            self._set_state(State.FAILED)
            raise

    async def stop(self, *, drain_timeout: float | None = 30.0) -> int:
        """Stop admitting, finish in-flight work and its replies, then stop.

        What could not finish within ``drain_timeout`` is dead-lettered with reason
        ``shutdown``; returns how many spores that was.
        """
        intake, chain, ledger = self._intake, self._chain, self._ledger
        if (self._state not in (State.RUNNING, State.FAILED) or intake is None or chain is None
                or ledger is None):
            return 0
        self._set_state(State.STOPPING)
        intake.close()
        if self._bridge is not None:  # take no new deliveries; finish those taken
            await self._bridge.stop_consuming()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle(), drain_timeout)
        # Pause every lane before cancelling any: a handler's cancellation may still send
        # replies, and they must find lanes that keep them for the dead letters below.
        # Lanes a reload retired (removed or replaced agents) may still hold work too.
        lanes = [(name, agent.lane) for name, agent in self._wiring.agents.items()]
        lanes += self._reloader.close()
        for _, lane in lanes:
            lane.pause()
        left = 0
        for _, lane in lanes:
            left += await lane.cancel(Reason.SHUTDOWN)
        for name, lane in lanes:
            left += ledger.abandon(lane.drain_queue() + lane.cancel_timers(), name,
                                   Reason.SHUTDOWN)
        self._checked.clear()  # what the chain did not take is dead-lettered below
        left += ledger.abandon([(spore, 0) for spore in intake.finish()], None,
                               Reason.SHUTDOWN)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await chain
        self._requests.stop(lambda: OrganismStateError("the organism stopped"))
        await self._agent_states.stop(self._wiring.agents)  # on_stop hooks, after the drain
        await self._procpool.close()
        await self._pool.close()
        self._pool = RunnerPool(name=f"sporeflow:{self.spec.name}")  # for a restart
        if self._bridge is not None:  # pending acks first; the broker requeues the rest
            await self._bridge.close()
        if self._journal is not None:
            await self._journal.close()  # what was unfinished stays there, for the next start
        self._set_state(State.STOPPED)
        if left:
            self.logger.warning("stopped with %d spore(s) unfinished: %s", left,
                                "kept in the journal for the next start"
                                if self._journal is not None else "dead-lettered as 'shutdown'")
        return left

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
            raise _python_problem(f"agents.{name}", f"agent {name!r} exists already; reload a "
                                                    f"changed file to change it")
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
                                reason=Reason.UNKNOWN_AGENT)
        users = sorted(a.name for a in self.spec.agents.values() if a.name != name and (
            (a.emit is not None and a.emit.to == name) or (a.peers and name in a.peers)))
        if users:
            raise _python_problem(f"agents.{name}", f"agents {users} still emit to or name "
                                                    f"{name!r} as a peer; change them first")
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
        ``"totals.handled >= 100"`` (see ``pipeline.observe.stopping``). It is checked
        every ``interval`` seconds, then the organism stops as :meth:`stop` does. Returns a
        task to await; its result is what :meth:`stop` returns (0 when the organism was
        stopped otherwise first).
        """
        self._require_running()
        predicate = parse_condition(condition) if isinstance(condition, str) else condition

        async def watch() -> int:
            await wait_until(self.stats, lambda stats: self._state != State.RUNNING
                             or predicate(stats), interval=interval)
            if self._state != State.RUNNING:
                return 0
            return await self.stop(drain_timeout=drain_timeout)

        task = asyncio.get_running_loop().create_task(watch(), name="sporeflow:stop_when")
        self._stop_watchers.add(task)
        task.add_done_callback(self._stop_watchers.discard)
        return task

    def _require_running(self) -> tuple[Intake, asyncio.Task[None]]:
        if self._intake is None or self._chain is None or self._state == State.NEW:
            raise OrganismStateError(
                f"organism {self.spec.name!r} is not running; use `async with "
                f"organism.running():` or `await organism.start()` first")
        return self._intake, self._chain

    def _require_ingress(self) -> Ingress:
        self._require_running()
        assert self._ingress is not None
        return self._ingress

    def _admission_refusal(self) -> OrganismStateError | None:
        if self._state == State.RUNNING:
            return None
        if self._state == State.NEW:
            self._require_running()
        return OrganismStateError(f"organism {self.spec.name!r} is {self._state}; it "
                                  f"admits no new spores")

    # -- talking to the organism from outside ----------------------------------------

    async def submit(self, spore: Spore) -> Spore:
        """Admit a ready-made spore from outside; wait while the organism is full."""
        refusal = self._admission_refusal()
        if refusal is not None:
            raise refusal
        return await self._require_ingress().submit(spore)

    # send and broadcast return submit's coroutine rather than being coroutines of their
    # own: one frame less per spore, and a bad argument raises at the call already.
    def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "system",
             channel: str | None = None, priority: int = 5, expires_in: float | None = None,
             spore_type: SporeType = SporeType.KNOWLEDGE,
             **extra: Any) -> Coroutine[Any, Any, Spore]:
        """Send knowledge to one agent; await it for the spore sent."""
        ingress = self._require_ingress()
        return ingress.submit(ingress.outside_spore(
            knowledge, to=to_agent, channel=channel, sender=sender, spore_type=spore_type,
            priority=priority, expires_in=expires_in, extra=extra))

    def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                  sender: str = "system", priority: int = 5,
                  expires_in: float | None = None) -> Coroutine[Any, Any, Spore]:
        """Broadcast knowledge to every subscriber of ``channel``; await it for the spore."""
        ingress = self._require_ingress()
        return ingress.submit(ingress.outside_spore(
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
        ingress = self._require_ingress()
        spore = ingress.outside_spore(knowledge, to=to_agent, channel=None, sender=sender,
                                      spore_type=SporeType.REQUEST, priority=priority,
                                      expires_in=None, extra={})
        return await ingress.request(spore, timeout)

    def on_outside(self, listener: Callable[[Spore], None]) -> Callable[[], None]:
        """Call ``listener`` with each spore addressed to the outside world; returns an
        unsubscribe function."""
        self._outside_listeners.append(listener)
        return lambda: self._outside_listeners.remove(listener)

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
        """A JSON-serialisable snapshot of every agent's state (see ``agents.state``)."""
        return self._agent_states.save(self._wiring.agents)

    def load_state(self, snapshot: Mapping[str, Any]) -> None:
        """Restore a :meth:`save_state` snapshot; before start, it applies at start."""
        self._agent_states.load(snapshot, self._wiring.agents)

    # -- observing ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per agent and in total; a plain JSON-serialisable dict."""
        return organism_stats(
            name=self.spec.name, state=str(self._state),
            uptime=round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0,
            wiring=self._wiring, channels=self.spec.channels, latency=self._latency,
            intake=self._intake, ledger=self._ledger, returned=self.returned,
            dead_letters=self.dead_letters,
            journal=self._journal.stats() if self._journal is not None else None,
            broker=self._bridge.statistics() if self._bridge is not None else None,
            reload=self._reloader.stats())

    def latency_histograms(self) -> dict[str, LatencyHistogram]:
        """Each agent's handler-latency histogram (live objects: read them on the loop)."""
        return dict(self._latency)


def _python_problem(path: str, message: str) -> ConfigError:
    return ConfigError([Problem(file="<python>", line=0, column=0, path=path, message=message)])
