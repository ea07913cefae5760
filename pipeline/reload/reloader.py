"""Hot reload: re-read the organism file and apply it to the running organism as a diff.

    file ─▶ re-import edited handler modules ─▶ check_organism ─▶ diff_specs ─▶ apply
                                                      │ invalid
                                                      └─▶ refused: nothing changes

Applying works per agent. An unchanged agent keeps its lane: its queue, its
in-flight work and its counters are not touched. A changed agent gets a new
lane at once, so every new spore queues there, but the new lane runs nothing
until the old lane's in-flight handlers have finished with the old settings; the
old lane's queue and pending retries move over, in priority order (a pending
retry runs without waiting out the rest of its backoff); a new schema checks them as
they move, and what it refuses is a ``schema`` dead letter, as at the gate. A removed
agent leaves the routing table (spores made for it later become ``unknown agent`` dead
letters) and its lane drains what it already holds and what the intake held for it
when the wiring swapped (``core.owed``: the chain still routes those to it); it stops
once that is all settled. A new agent starts and gets its ``boot`` spore. Channels
update the intake and the routing table; ``limits.max_in_flight`` applies to the next
admission.

A reload never waits for a swap (a handler may never end): an agent changed or removed
again while its swap still waits stacks on it (:mod:`.swaps`).

What cannot change in a running organism (``organism.*`` such as the backend,
and the limits the chain's stages hold) is kept, and the report warns that it
takes effect at the next start.

The reloader sees the organism through :class:`ReloadPort`: it builds agents and
swaps the wiring snapshot (``rewire``), never the organism's fields. The diff and the
report are in :mod:`.diff`, the handler files in :mod:`.sources`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from sporeflow.config import AgentSpec, ConfigError, OrganismSpec, SporeflowError, check_organism
from sporeflow.config.reasons import reason_of
from sporeflow.pipeline.core.owed import Owed
from sporeflow.pipeline.core.wiring import AgentRuntime, WiringSnapshot
from sporeflow.pipeline.observe.events import AgentStateChanged, EventBus, OrganismReloaded
from sporeflow.pipeline.reload.diff import (
    LIVE_LIMITS,
    ReloadReport,
    SpecDiff,
    broker_bound,
    diff_specs,
    refusal,
    rekeyed,
    restart_only,
    stranded,
)
from sporeflow.pipeline.reload.sources import HandlerSources
from sporeflow.pipeline.reload.swaps import Swap, SwapChain, lane_counts, stacked_notes
from sporeflow.steps import AgentLane, Spore, schema_refusal


class ReloadPort(Protocol):
    """What a reload needs of the running organism."""

    spec: OrganismSpec
    logger: logging.Logger
    events: EventBus

    @property
    def state(self) -> str: ...

    @property
    def brokered(self) -> bool: ...

    @property
    def hosted(self) -> frozenset[str] | None: ...

    def now(self) -> Any: ...

    def wiring(self) -> WiringSnapshot: ...

    def build_agent(self, spec: AgentSpec) -> AgentRuntime: ...

    def rewire(self, spec: OrganismSpec, agents: Mapping[str, AgentRuntime]) -> None: ...

    async def start_agent(self, agent: AgentRuntime) -> None: ...

    async def boot(self, name: str, knowledge: Mapping[str, Any]) -> Any: ...

    def reject(self, spore: Spore, reason: str, error: BaseException) -> None: ...

__all__ = ["ReloadPort", "Reloader"]

_logger = logging.getLogger("sporeflow.reload")

# How often a hand-over looks whether the old lane's remaining handlers all wait on a
# request (they then hold no slot, and the responder may be the new lane itself).
_LENT_CHECK = 0.05
# Seconds a replaced or removed class agent's on_stop may run (a stop's drain timeout, by
# default); past them it is cancelled and let go, as at a stop: a hook that never ends
# would hold its agent's retirement and every swap stacked behind it.
HOOK_LIMIT = 30.0


class Reloader:
    """Reloads one organism: ``Organism.reload`` calls :meth:`reload`.

    Reloads run one at a time, and none waits for a hand-over: one that changes or
    removes an agent still handing over chains onto it (see the module docstring).
    """

    def __init__(self, organism: ReloadPort) -> None:
        self._organism = organism
        self._lock = asyncio.Lock()
        self._sources = HandlerSources()
        self._sources.track(organism.spec)
        self._handovers: dict[str, Swap] = {}  # the newest, by agent in the wiring
        self._swaps: set[Swap] = set()  # every swap whose old lane's counts are not folded
        self._tasks: set[asyncio.Task[None]] = set()  # hand-overs and retirements
        # Lanes that left the routing table and still finish work: stop() cancels them.
        self._retiring: dict[AgentLane, str] = {}
        self._closing = False
        self.count = 0
        self.last: ReloadReport | None = None

    def stats(self) -> dict[str, Any]:
        """``{"count": reloads so far, "last": the last report as a dict, or None}``."""
        return {"count": self.count, "last": self.last.to_dict() if self.last else None}

    def close(self) -> list[tuple[str, AgentLane]]:
        """The organism stops: end the hand-overs, and return the lanes still draining
        (name, lane) so that ``stop()`` cancels and dead-letters what they hold."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        self._handovers.clear()
        lanes = [(name, lane) for lane, name in self._retiring.items()]
        self._retiring.clear()
        return lanes

    def closed(self) -> None:
        """The stop has abandoned what the lanes :meth:`close` returned held: what the old
        lanes of the swaps it cut counted goes to their agents, as a finished swap's does."""
        for swap in self._swaps:
            swap.fold()
        self._swaps.clear()

    async def reload(self, path: str | Path | None = None) -> ReloadReport:
        """Re-read ``path`` (default: the organism's file), validate it fully, apply it."""
        async with self._lock:
            started = time.perf_counter()
            organism = self._organism
            file = Path(path) if path is not None else organism.spec.source
            if file is None:
                report = refusal("<dict>", started, [
                    f"organism {organism.spec.name!r} was built from a dict and has no file "
                    f"to re-read; call reload(path=...) with an organism file"])
            elif organism.state in ("stopping", "failed"):
                report = refusal(str(file), started, [
                    f"{file}: organism {organism.spec.name!r} is {organism.state}; a reload "
                    f"applies only to a new, running or stopped organism"])
            else:
                report = await self._reload_file(file, started)
            self._record(report)
            return report

    async def _reload_file(self, file: Path, started: float) -> ReloadReport:
        importlib.invalidate_caches()  # a handler module written just now must be found
        reimported = self._sources.reimport_edited()
        before = list(sys.modules)
        try:
            new, warnings = check_organism(file)
        except ConfigError as exc:
            self._sources.track_imported(before, file)
            return refusal(str(file), started,
                            [str(p) for p in exc.problems if not p.warning],
                            warnings=[str(p) for p in exc.problems if p.warning],
                            reimported=reimported)
        self._sources.track(new)
        return await self._apply(new, [str(w) for w in warnings], str(file), started,
                                 reimported)

    async def apply(self, new: OrganismSpec, *, source: str) -> ReloadReport:
        """Apply an already checked spec exactly as a reload applies a file (the path
        ``Organism.add_agent`` and ``remove_agent`` take); ``source`` names it in the report."""
        async with self._lock:
            started = time.perf_counter()
            organism = self._organism
            if organism.state in ("stopping", "failed"):
                report = refusal(source, started, [
                    f"{source}: organism {organism.spec.name!r} is {organism.state}; nothing "
                    f"was applied"])
            else:
                report = await self._apply(new, [], source, started, [])
            self._record(report)
            return report

    async def _apply(self, new: OrganismSpec, warnings: list[str], source: str,
                     started: float, reimported: list[str]) -> ReloadReport:
        file = source  # a path, or a name such as "add_agent('x')" for changes from Python
        organism = self._organism
        old = organism.spec
        diff = diff_specs(old, new)
        if organism.brokered and (broker := broker_bound(diff)):
            return refusal(str(file), started, [
                f"{file}: over a broker, {broker}: the broker's queues and bindings are "
                f"declared at start; restart the organism's processes to apply this file "
                f"(each start binds what it declares and unbinds what it no longer does; "
                f"with per-process broker users, run `sporeflow broker-declare` first)"],
                reimported=reimported)
        for rule in (rekeyed(diff), stranded(old.sources, diff)):
            if rule:
                return refusal(str(file), started, [f"{file}: {rule}"], reimported=reimported)
        notes = warnings + restart_only(Path(file), diff)
        applied = replace(
            old, agents=new.agents, channels=new.channels, source=new.source,
            base_dir=new.base_dir, description=new.description,
            limits=replace(old.limits, **{k: getattr(new.limits, k) for k in LIVE_LIMITS}))
        if organism.state == "running":
            notes += stacked_notes(self._handovers, diff.changed)
            self._switch(applied, diff)
            notes += await self._start_added(diff.added)
        else:
            organism.spec = applied  # the next start builds from it
        hosted = organism.hosted  # None: this process runs every agent
        return ReloadReport(
            ok=True, source=str(file), added=diff.added, removed=diff.removed,
            changed={name: what for name, what in diff.changed.items()
                     if hosted is None or name in hosted},
            elsewhere=tuple(name for name in diff.changed
                            if hosted is not None and name not in hosted),
            channels_added=diff.channels_added,
            channels_removed=diff.channels_removed, channels_changed=diff.channels_changed,
            limits_changed=diff.limits_changed, reimported=tuple(reimported),
            warnings=tuple(notes), duration=time.perf_counter() - started)

    def _switch(self, applied: OrganismSpec, diff: SpecDiff) -> None:
        """Swap the tables the chain reads, all at once (no await in here)."""
        organism = self._organism
        self._closing = False
        old_agents = organism.wiring().agents
        built: dict[str, AgentRuntime] = {}
        for name in diff.changed:
            agent = organism.build_agent(applied.agents[name])
            agent.lane.pause()  # it runs nothing until the old lane's handlers are done
            previous = old_agents[name]
            agent.state = previous.state  # ctx.state is the agent's data, not its code
            if previous.actor is not None and agent.actor is not None and (
                    previous.actor.cls is agent.actor.cls):
                agent.actor = previous.actor  # the same class: keep its instance
            built[name] = agent
        for name in diff.added:
            built[name] = organism.build_agent(applied.agents[name])

        # One swap of the snapshot the stages read (and of the admission limits).
        organism.rewire(applied, {name: built.get(name) or old_agents[name]
                                  for name in applied.agents})

        refusers = {}
        for name, fields in diff.changed.items():
            old_lane, new_lane = old_agents[name].lane, built[name].lane
            old_lane.pause()
            refusers[name] = refuse = self._refuser(name) if "schema" in fields else None
            _move(old_lane, new_lane, refuse)
            for counter, value in lane_counts(old_lane).items():  # they go on, not restart
                setattr(new_lane, counter, value)
            self._retiring[old_lane] = name
            if name not in self._handovers:
                self._announce(name, "running", "reloading")
        # What the intake holds for the removed agents is still theirs (core.owed); what
        # an earlier reload owed to the old lanes of agents now back goes to the new ones.
        owed = organism.wiring().retired.owed
        if owed is not None:
            owed.forget(diff.added)
            owed.hold({name: old_agents[name].lane for name in diff.removed})
        for name in diff.removed:
            lane = old_agents[name].lane
            self._retiring[lane] = name
            after = self._handovers.pop(name, None)
            self._spawn(self._retire(name, old_agents[name], after, owed))
            self._announce(name, "reloading" if after else "running", "stopping")
        for name in diff.changed:
            after = self._handovers.get(name)
            chain = after.chain if after is not None else SwapChain(built[name])
            chain.newest = built[name]
            swap = self._handovers[name] = Swap(chain, old_agents[name], after)
            self._swaps.add(swap)
            swap.task = self._spawn(self._hand_over(name, swap, built[name], refusers[name]))

    def _refuser(self, name: str) -> Callable[[Spore], bool] | None:
        """What dead-letters a spore held for ``name`` that its new schema refuses (True:
        it did), as the schema gate would have, had the spore come after the reload."""
        organism = self._organism
        check = organism.wiring().schemas.get(name)
        if check is None:
            return None

        def refused(spore: Spore) -> bool:
            refusal = schema_refusal(check, spore, name)
            if refusal is not None:
                organism.reject(spore, reason_of(refusal), refusal)
            return refusal is not None

        return refused

    async def _start_added(self, names: Iterable[str]) -> list[str]:
        """Start the new agents: class agents with ``lazy: false``, then boot spores."""
        organism, notes = self._organism, []
        for name in names:
            agent = organism.wiring().agents[name]
            try:
                await organism.start_agent(agent)
            except SporeflowError as exc:
                notes.append(f"agent {name!r} did not start: {exc}")
            self._announce(name, "new", "running")
            if agent.spec.boot is not None:
                try:
                    await organism.boot(name, agent.spec.boot)
                except SporeflowError as exc:
                    notes.append(f"the boot spore of new agent {name!r} was not sent: {exc}")
        return notes

    async def _hand_over(self, name: str, swap: Swap, new: AgentRuntime,
                         refuse: Callable[[Spore], bool] | None) -> None:
        """Let the old lane's in-flight handlers finish, then run the new lane.

        ``refuse`` dead-letters what the new schema refuses of what the old lane still
        leaves.
        """
        old, chain, after = swap.old, swap.chain, swap.after
        old_lane, new_lane = old.lane, new.lane
        try:
            if after is not None:
                await after.released.wait()
            await _until_no_slot_held(old_lane)
            if self._closing:
                return
            if old.actor is not None and new.actor is not None and old.actor is not new.actor:
                state = old.actor.save()  # a class agent's state outlives its code
                if state is not None:
                    new.actor.load(state)
            if chain.newest is new:  # else a newer swap replaced it before it ran
                new_lane.resume()
            swap.released.set()
            await old_lane.wait_quiet()
            if self._closing:
                return
            # What the last handlers of the old lane left: retries now due on the newest
            # lane (checked by its schema, should a later reload have changed it).
            newest = chain.newest.lane
            if newest is not new_lane:
                refuse = self._refuser(name)
            counted_twice = _move(old_lane, newest, refuse)
            swap.fold()  # what they did meanwhile
            self._swaps.discard(swap)
            newest.received -= counted_twice
            if after is not None:  # swaps end in order: an older lane may share our actor
                await asyncio.wait([after.task])  # however it ended
                if self._closing:
                    return
            if old.actor is not None and old.actor is not new.actor:
                await self._stop_actor(old)
            if self._handovers.get(name) is swap:
                self._announce(name, "reloading", "running")
        finally:
            swap.released.set()  # a crash must not hold the newer swaps back
            self._retiring.pop(old_lane, None)
            if self._handovers.get(name) is swap:
                del self._handovers[name]

    async def _retire(self, name: str, agent: AgentRuntime, after: Swap | None,
                      owed: Owed | None) -> None:
        """Let a removed agent's lane finish what it holds, retries included (after the
        swap it still waited on, which runs it and gives it what the old lanes left), and
        what was accepted for it before the reload (``owed``: once the chain delivered it)."""
        lane = agent.lane
        try:
            if after is not None:
                await asyncio.wait([after.task])  # however it ended
            if owed is not None:
                await owed.settled(lane)
            while True:
                await lane.wait_quiet()
                if self._closing:
                    return
                retries = lane.cancel_timers()
                if not retries:
                    break
                for spore, tries in retries:  # nothing will swap in: retry at once
                    lane.deliver(spore, tries + 1)
            await self._stop_actor(agent)
            self._announce(name, "stopping", "stopped")
            self._organism.wiring().retired.settled(lane)  # its counts stay, not it
        finally:
            self._retiring.pop(lane, None)

    async def _stop_actor(self, agent: AgentRuntime) -> None:
        if agent.actor is not None:  # the hook is the user's code: logged, the reload goes on
            await agent.actor.stop(self._organism.logger, within=HOOK_LIMIT)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            work, name=f"sporeflow:{self._organism.spec.name}:reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)
        return task

    # -- reporting -------------------------------------------------------------------

    def _announce(self, agent: str, old: str, new: str) -> None:
        events = self._organism.events
        if events.active:
            events.emit(AgentStateChanged(agent=agent, old=old, new=new,
                                          at=self._organism.now()))

    def _record(self, report: ReloadReport) -> None:
        organism = self._organism
        self.count += 1
        self.last = report
        if report.ok:
            organism.logger.info("reload: %s", report.summary())
            for warning in report.warnings:
                organism.logger.warning("reload: %s", warning)
        else:
            organism.logger.error("reload: %s; the organism runs on unchanged:\n%s",
                                  report.summary(), "\n".join(report.errors))
        if organism.events.active:
            organism.events.emit(OrganismReloaded(organism=organism.spec.name,
                                                  report=report.to_dict(), at=organism.now()))


def _move(old: AgentLane, new: AgentLane, refuse: Callable[[Spore], bool] | None) -> int:
    """Move ``old``'s queued spores and pending retries to ``new``, highest priority
    first, but those ``refuse`` dead-letters (they leave ``old`` as failed, as a spore
    expired in its mailbox does: received, so accounted for); return how many first
    attempts moved (``new`` counts those as received)."""
    entries = old.drain_queue() + [(spore, tries + 1) for spore, tries in old.cancel_timers()]
    entries.sort(key=lambda entry: -entry[0].priority)  # stable: FIFO within a priority
    if refuse is not None:
        kept = [entry for entry in entries if not refuse(entry[0])]
        old.taken_out(len(entries) - len(kept))
        entries = kept
    for spore, attempt in entries:
        new.deliver(spore, attempt)
    return sum(1 for _, attempt in entries if attempt == 1)


async def _until_no_slot_held(lane: AgentLane) -> None:
    """Wait until no handler of ``lane`` holds a slot: all finished, or all awaiting a
    request (whose responder may be the agent's new lane: it must be able to run)."""
    if not lane.busy:
        return
    quiet = asyncio.ensure_future(lane.wait_quiet())
    try:
        while lane.busy and not quiet.done():
            await asyncio.wait([quiet], timeout=_LENT_CHECK)
    finally:
        quiet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await quiet


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _logger.error("a reload hand-over failed", exc_info=task.exception())

