"""The running organism: a façade over the engine (``core``) and its features.

    intake ─▶ validate ─▶ expire ─▶ [budget] ─▶ route ─▶ schema ─▶ dispatch ─▶ lanes
      ▲                                                                          │
      └──────────────── the ledger feeds handler replies back ◀──────────────────┘

Every spore, whatever its origin, enters the intake and passes every stage; the
ledger (``core.ledger``) settles each once, with the journal, events and broker bridge
as its hooks; the wiring (``core.wiring``) is one snapshot, swapped whole. See
ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Unpack

from sporeflow.config import (
    AgentSpec,
    OrganismSpec,
    OrganismStateError,
    SecretFilter,
    StageSpec,
    load_organism,
    mask_in_logs,
    organism_from_dict,
    redact_url,
    secrets_of,
)
from sporeflow.pipeline.agents.builder import AgentBuilder
from sporeflow.pipeline.agents.context import RunPort
from sporeflow.pipeline.agents.knowledge import make_knowledge_store
from sporeflow.pipeline.agents.procpool import ProcessPool
from sporeflow.pipeline.agents.state import AgentStates
from sporeflow.pipeline.broker.backend import Backend
from sporeflow.pipeline.broker.boots import refuse_journal
from sporeflow.pipeline.broker.bridge import Bridge
from sporeflow.pipeline.broker.bridging import attach_bridge, make_bridge, publish_deliveries
from sporeflow.pipeline.broker.transport import check_transport
from sporeflow.pipeline.core.chain import Stage, declare_chain
from sporeflow.pipeline.core.deadletters import DeadLetterStore
from sporeflow.pipeline.core.ingress import OUTSIDE_SENDERS, Ingress
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.lifecycle import State
from sporeflow.pipeline.core.outbox import Outbox
from sporeflow.pipeline.core.recent import RecentNames
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.core.run import Run
from sporeflow.pipeline.core.shutdown import OneStop, drain_then_abandon, kept_where
from sporeflow.pipeline.core.subscriptions import set_subscription
from sporeflow.pipeline.core.wiring import AgentRuntime, WiringCell, WiringSnapshot
from sporeflow.pipeline.journal import journal_hook, open_journal
from sporeflow.pipeline.observe.budgetwarnings import warned_budget
from sporeflow.pipeline.observe.eventhook import EventHook
from sporeflow.pipeline.observe.events import AgentStateChanged, EventBus, OrganismStateChanged
from sporeflow.pipeline.observe.stats import organism_stats
from sporeflow.pipeline.observe.stopping import Stats, stop_task
from sporeflow.pipeline.observe.tracing import SporeTracer, make_tracer
from sporeflow.pipeline.observe.watchdog import LoopWatchdog
from sporeflow.pipeline.options import OrganismOptions
from sporeflow.pipeline.outside import OutsideApi
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.pipeline.reload.edits import with_agent, without_agent
from sporeflow.pipeline.reload.reloader import Reloader
from sporeflow.pipeline.sources import Sources
from sporeflow.steps import RunnerPool, Spore, utc_now

if TYPE_CHECKING:
    from sporeflow.pipeline.journal.store import Journal

__all__ = ["Organism"]


class Organism(OutsideApi):
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
        # Its keys and broker password are masked in every log line from here on, and
        # in every failure's text (dead letters, events, the broker's headers).
        secrets = secrets_of(spec, backend if isinstance(backend, str) else None)
        self.masker = SecretFilter(secrets)
        mask_in_logs(self.logger, *secrets)
        self.events = EventBus()
        self.events.on_active = self._watch_events
        self._event_hook = EventHook(self.events, now, self.masker)
        self.tracer = make_tracer(tracing, self.masker)  # None: no span, no per-spore cost
        self._journal = open_journal(journal if journal is not None else spec.journal)
        self.dead_letters = DeadLetterStore.within(spec.limits)
        self.outbox = Outbox(spec.limits)  # bounded in bytes too: see core.outbox
        self._outside_listeners: list[Callable[[Spore], None]] = []
        self._outside = RecentNames(OUTSIDE_SENDERS, cap=spec.limits.max_outside_senders)
        self._requests = RequestBook()
        self._cell = WiringCell(WiringSnapshot.empty(spec))  # the current wiring
        self._latency: dict[str, LatencyHistogram] = {}
        self._user_stages = [*spec.stages, *stages]
        self._state = State.NEW
        self.failure: Exception | None = None  # why it failed stop: a broker given up on
        self.failing = asyncio.Event()  # set then; `sporeflow run` exits 1, saying why
        self._started_at = 0.0
        self._returned_before = 0
        self._pool = RunnerPool(name=f"sporeflow:{spec.name}")
        self._agent_states = AgentStates(spec.name, self.logger)
        self._stop_watchers: set[asyncio.Task[int]] = set()
        self._one_stop = OneStop(lambda: [a.lane for a in self._cell.current.agents.values()])
        self._budget = warned_budget(spec.limits, self.events, self.logger, now)
        self._procpool = ProcessPool(spec.limits.process_pool)
        self._watchdog = LoopWatchdog(spec.limits.loop_stall_warning, self.logger)
        self.knowledge_store = make_knowledge_store(spec)  # what knowledge_references name
        self._run: Run | None = None  # this run's intake, ledger, ingress and chain
        self._ingress: Ingress | None = None  # the run's, at hand for the hot path
        self._hooks: list[LedgerHook] = []  # the user's, attached at every start
        self._builder: AgentBuilder | None = None
        self._reloader = Reloader(self)  # notes the handler modules' files as imported now
        self.sources = Sources(self, self.logger)  # sources: in the file, run while it runs

    # -- construction -------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, **options: Unpack[OrganismOptions]) -> Organism:
        """Load ``path`` (raising :class:`ConfigError` listing every problem); ``options``
        as :class:`OrganismOptions` says (``journal``, ``backend``, ``hosted``...)."""
        return cls(load_organism(path), **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path = ".",
                  **options: Unpack[OrganismOptions]) -> Organism:
        """Build from a dict shaped like an organism file; handlers may be callables;
        ``options`` as for :meth:`from_file`."""
        return cls(organism_from_dict(data, base_dir=base_dir), **options)

    @property
    def state(self) -> str:
        return self._state

    @property
    def journal(self) -> Journal | None:
        """The durable journal, when the organism has one."""
        return self._journal

    @property
    def agents(self) -> Mapping[str, AgentSpec]:
        return {name: agent.spec for name, agent in self._cell.current.agents.items()}

    @property
    def returned(self) -> int:
        """How many spores were returned to the outside world."""
        return self._returned_before + (self._run.ledger.returned if self._run else 0)

    @property
    def brokered(self) -> bool:
        return self._bridge is not None

    @property
    def hosted(self) -> frozenset[str] | None:
        """The agents this process runs if a broker runs others elsewhere, else None."""
        bridge = self._bridge
        return None if bridge is None or bridge.hosted >= self.spec.agents.keys() else bridge.hosted

    # -- what the parts see of the organism (narrow ports, see agents/ and reload/) ----

    def wiring(self) -> WiringSnapshot:
        """The current wiring snapshot (read it, never change it)."""
        return self._cell.current

    def rewire(self, spec: OrganismSpec, agents: Mapping[str, AgentRuntime]) -> None:
        """Swap in the wiring of ``spec`` run by ``agents``, at once."""
        self.spec = spec
        self._cell.current = WiringSnapshot.of(spec, agents, self._cell.current)
        if self._bridge is not None:  # a hosted agent's new concurrency: its prefetch
            self._bridge.rewired(spec)
        if self._run is not None:
            self._run.intake.configure(
                max_in_flight=spec.limits.max_in_flight,
                capacities={c.name: c.capacity for c in spec.channels.values()})

    def build_agent(self, spec: AgentSpec) -> AgentRuntime:
        assert self._builder is not None, "agents are built while the organism runs"
        return self._builder.build(spec)

    async def start_agent(self, agent: AgentRuntime) -> None:
        await self._agent_states.start({agent.spec.name: agent})

    def reject(self, spore: Spore, reason: str, error: BaseException) -> None:
        """Dead-letter and settle ``spore``, held for an agent, as a stage refuses one."""
        if self._run is not None:
            self._run.ledger.reject(spore, reason, error)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, *, reboot: bool = False, boot: bool = True) -> None:
        """Start the chain and every agent, then send the ``boot`` spores (:meth:`boot`);
        ``boot=False`` sends none (a one-off run: ``sporeflow send --start``). Over a
        broker it waits for the connection as after an outage, up to
        ``broker.give_up_after``; then it stops and raises :class:`BrokerError`."""
        if self._state in (State.RUNNING, State.STOPPING):
            raise OrganismStateError(f"organism {self.spec.name!r} is already {self._state}")
        if boot:  # a source's unset token fails here, before anything starts
            self.sources.prepare(self.spec)
        self.logger.debug("starting organism %r on backend %s", self.spec.name, redact_url(
            self._backend if isinstance(self._backend, str) else self.spec.backend))
        bridge = make_bridge(self.spec, self._backend, self._hosted)
        if bridge is not None:  # no journal; unsigned over a network if organism.insecure
            refuse_journal(self.spec, self._journal)  # the broker keeps the spores
            check_transport(self.spec, bridge.backend.address, self.logger)
        self._bridge = bridge
        # A foreign or damaged journal is refused here, before anything starts.
        unfinished = await self._journal.open(self.spec) if self._journal is not None else []
        if self._journal is not None:  # dead-lettered 'poison' by the journal as it opened
            for letter in self._journal.poisoned:
                self.dead_letters.add(letter)
        run = self._open_run()
        self._cell.current = WiringSnapshot.empty(self.spec, run.owed)  # a run counts from 0
        self.rewire(self.spec, {name: self.build_agent(a) for name, a in
                                self.spec.agents.items()})
        self._set_state(State.RUNNING)
        self._started_at = time.monotonic()
        self._watchdog.start()  # a daemon thread that names a handler blocking the loop
        run.start_chain(self._declare_chain(run), lambda: self._set_state(State.FAILED))
        steps = self._begin(run, unfinished, boot, reboot)
        try:  # cancelled, it waits on a broker no longer than a stop would (stop_deadline)
            await (steps if self._bridge is None else self._bridge.starting(steps))
        except BaseException:  # cancelled too (wait_for, Ctrl-C): never left half started
            await self.stop(drain_timeout=0)
            raise

    async def _begin(self, run: Run, unfinished: list[Spore], boot: bool, reboot: bool) -> None:
        """The start past the chain: agents, broker, the journal's replay, boots, sources."""
        await self._agent_states.start(self._cell.current.agents, run.ingress)
        if self._bridge is not None:
            await self._bridge.start(run)
        if unfinished and self._journal is not None:  # replayed through the chain, first
            self._journal.replayed += len(unfinished)
            run.intake.feed(unfinished)
            self.logger.info("replaying %d unfinished spore(s) from %s",
                             len(unfinished), self._journal.path)
        if boot:  # the boot spores, then its inputs: a one-off run (boot=False) has neither
            await self._boot_hosted(again=reboot)
            await self.sources.start(self.spec)

    def _open_run(self) -> Run:
        """Make this run's intake, ledger and ingress, and attach the active hooks."""
        if self._run is not None:
            self._returned_before += self._run.ledger.returned
        self._outside.cap = self.spec.limits.max_outside_senders  # a reload's, from now
        self.failure, self.failing = None, asyncio.Event()  # a new run has not failed
        run = self._run = Run(
            spec=self.spec, dead_letters=self.dead_letters, requests=self._requests,
            wiring=self._cell, logger=self.logger, now=self.now,
            outbox=self.outbox, listeners=self._outside_listeners,
            outside=self._outside, masker=self.masker,
            running=lambda: self._state == State.RUNNING)
        ledger, ingress = run.ledger, run.ingress
        self._ingress = ingress
        for hook in self._hooks:
            ledger.add_hook(hook, guarded=True)
        if self._journal is not None:
            writer = journal_hook(self._journal, self._requests, self.now)
            ledger.add_hook(writer)
            ingress.persist = writer  # outside spores too: what it writes is its rule
            self._journal.on_failure = self._fail_stop  # fail stop: see journal.failstop
        if self.events.spores_active:  # events per spore only for those who want them
            ledger.add_hook(self._event_hook)
        if self._bridge is not None:
            attach_bridge(self._bridge, ledger, ingress, on_failure=self._fail_stop)
        if self.tracer is not None:  # the caller's span, if any, becomes the spore's origin
            ingress.stamp_outside, ingress.stamp_sent = self.tracer.stamp, self.tracer.stamp_sent
        port = RunPort(ingress=ingress, wiring=self.wiring, budget=self._budget,
                       knowledge_store=self.knowledge_store, now=self.now)
        self._builder = AgentBuilder(
            port=port, ledger=ledger, pool=self._pool, procpool=self._procpool,
            states=self._agent_states, latency=self._latency, base_dir=self.spec.base_dir,
            now=self.now, limits=self.spec.limits, wrapper=self.tracer if self._journal is None
            else self._journal.wrapping(self.tracer))  # marks what runs: journal.inflight
        return run

    def _fail_stop(self, failure: Exception | None = None) -> None:
        """Admit nothing more: the journal failed, or the broker was given up on."""
        if failure is not None:
            self.failure = failure
            self.failing.set()
        if self._state == State.RUNNING:  # admit nothing more; the failure says why
            self._set_state(State.FAILED)

    def _watch_events(self, active: bool) -> None:
        if self._run is not None:  # events are built only while someone listens
            ledger = self._run.ledger
            (ledger.add_hook if active else ledger.remove_hook)(self._event_hook)

    def _set_state(self, new: State) -> None:
        old, self._state = self._state, new
        if self._run is not None:  # what outside senders are told while not running
            self._run.ingress.refusal = None if new == State.RUNNING else OrganismStateError(
                f"organism {self.spec.name!r} is {new}; it admits no new spores")
        if self.events.active and old != new:
            at = self.now()
            self.events.emit(OrganismStateChanged(organism=self.spec.name, old=old, new=new,
                                                  at=at))
            for name in self._cell.current.agents:
                self.events.emit(AgentStateChanged(agent=name, old=old, new=new, at=at))

    def _declare_chain(self, run: Run) -> list[Stage]:
        """The chain's stages, in order, with the user's stages in their places."""
        bridge = self._bridge
        last = (Stage("dispatch", publish_deliveries.pipe(bridge=bridge))
                if bridge is not None else None)
        return declare_chain(
            limits=self.spec.limits, ledger=run.ledger, requests=self._requests,
            wiring=self.wiring, outside=self._outside, now=self.now,
            budget=self._budget, owed=run.owed, verify=bridge.verify if bridge else None,
            arrived=bridge.arrived if bridge else None, last=last, user=self._user_stages)

    async def stop(self, *, drain_timeout: float | None = 30.0) -> int:
        """Stop admitting, finish in-flight work and its replies, then stop.

        What could not finish within ``drain_timeout`` is dead-lettered with reason
        ``shutdown``; returns how many spores that was. ``drain_timeout`` bounds the
        whole stop: in-flight work gets it less a grace of up to 0.5 s in which cancelled
        handlers end; one that ignores its cancellation is abandoned and reported. Called
        while another stop drains, it returns (0) once that one has ended."""
        return await self._one_stop.run(lambda hurry: self._stop(drain_timeout, hurry))

    async def _stop(self, drain_timeout: float | None, hurry: asyncio.Future[None]) -> int:
        run = self._run
        if self._state not in (State.RUNNING, State.FAILED) or run is None:
            return 0
        self._set_state(State.STOPPING)
        ends = None if drain_timeout is None else asyncio.get_running_loop().time() + drain_timeout
        run.intake.close()
        await self.sources.stop()  # first: they admit nothing more (see sources.runner)
        if self._bridge is not None:  # take no new deliveries; finish those taken
            await self._bridge.stop_consuming(drain_timeout)
        left = await drain_then_abandon(run, lambda: [  # and the lanes a reload retired
            *((name, agent.lane) for name, agent in self._cell.current.agents.items()),
            *self._reloader.close()], drain_timeout, hurry)
        self._reloader.closed()  # the counts of the lanes it cut short
        await run.finish_chain()
        self._requests.stop(lambda: OrganismStateError("the organism stopped"))
        await self._agent_states.stop(self._cell.current.agents, until=ends, hurry=hurry)  # hooks
        if self._builder is not None:  # sync handlers' threads; abandoned ones not waited for
            self._builder.close()
        await self._procpool.close()
        await self._pool.close()
        self._pool = RunnerPool(name=f"sporeflow:{self.spec.name}")  # for a restart
        if self._bridge is not None:  # pending acks first; the broker requeues the rest
            await self._bridge.close()
        if self._journal is not None:
            await self._journal.close()  # what was unfinished stays there, for the next start
        self._watchdog.stop()
        self._set_state(State.STOPPED)
        if left:
            self.logger.warning("stopped with %d spore(s) unfinished: %d %s, the rest "
                                "dead-lettered as 'shutdown'", left, run.ledger.kept,
                                kept_where(self.journal))
        return left

    @contextlib.asynccontextmanager
    async def running(self, *, drain_timeout: float | None = 30.0,
                      reboot: bool = False) -> AsyncIterator[Organism]:
        """``async with organism.running():`` starts it, and drains and stops it after."""
        await self.start(reboot=reboot)
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
        return await self._reloader.apply(with_agent(self.spec, name, agent),
                                          source=f"add_agent({name!r})")

    async def remove_agent(self, name: str) -> ReloadReport:
        """Remove agent ``name`` as a reload would: it finishes what it holds, and spores
        for it afterwards are ``unknown agent`` dead letters. Raises :class:`ConfigError`
        while another agent still emits to it or names it among its peers."""
        return await self._reloader.apply(without_agent(self.spec, name),
                                          source=f"remove_agent({name!r})")

    async def idle(self) -> None:
        """Return once nothing is queued or in flight, here or on the broker on its way to
        agents hosted here (raise if the chain crashed). No source is waited for:
        ``--until-idle`` awaits ``sources.ended()`` first."""
        run, bridge = self._require_running(), self._bridge
        await (bridge.quiet() if bridge is not None else run.idle())

    def threads_running(self) -> int:
        """Sync handlers' calls awaited from their agents' threads (the test clock waits)."""
        return self._builder.threads_running() if self._builder is not None else 0

    def stop_when(self, condition: str | Callable[[Stats], bool], *, interval: float = 0.1,
                  drain_timeout: float | None = 30.0) -> asyncio.Task[int]:
        """Stop (draining) once ``condition`` holds over :meth:`stats`: a predicate taking
        the stats dict, or an expression like ``"totals.handled >= 100"`` (see
        ``pipeline.observe.stopping``), checked every ``interval`` seconds. Returns a task
        to await: what :meth:`stop` returns (0 when the organism was stopped otherwise)."""
        self._require_running()
        task = stop_task(self.stats, lambda: self._state == State.RUNNING,
                         lambda: self.stop(drain_timeout=drain_timeout), condition,
                         interval=interval)
        self._stop_watchers.add(task)
        task.add_done_callback(self._stop_watchers.discard)
        return task

    def _not_started(self) -> NoReturn:
        raise OrganismStateError(
            f"organism {self.spec.name!r} is not running; use `async with "
            f"organism.running():` or `await organism.start()` first")

    def _require_running(self) -> Run:
        if self._run is None or self._state == State.NEW:
            self._not_started()
        return self._run

    def add_hook(self, hook: LedgerHook) -> None:
        """Watch how every spore is settled (see ``pipeline.core.ledger.LedgerHook``)."""
        self._hooks.append(hook)
        if self._run is not None:
            self._run.ledger.add_hook(hook, guarded=True)

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
        """A JSON snapshot of every agent's state and the spores queued (``agents.queued``)."""
        return self._agent_states.save(self._cell.current.agents, self._ingress)

    def load_state(self, snapshot: Mapping[str, Any]) -> None:
        """Restore a :meth:`save_state` snapshot, spores too; before start, at the start."""
        self._agent_states.load(snapshot, self._cell.current.agents, self._ingress)

    # -- observing ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per agent and in total; a plain JSON-serialisable dict."""
        return {**organism_stats(
            name=self.spec.name, state=str(self._state),
            uptime=round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0,
            wiring=self._cell.current, channels=self.spec.channels, latency=self._latency,
            intake=self._run.intake if self._run else None,
            ledger=self._run.ledger if self._run else None, returned=self.returned,
            dead_letters=self.dead_letters,
            journal=self._journal.stats() if self._journal is not None else None,
            broker=self._bridge.statistics() if self._bridge is not None else None,
            reload=self._reloader.stats(), outside=self._outside),
            "sources": self.sources.stats()}

    def latency_histograms(self) -> dict[str, LatencyHistogram]:
        """Each declared agent's handler-latency histogram (live: read them on the loop)."""
        return {name: h for name, h in self._latency.items() if name in self.spec.agents}

