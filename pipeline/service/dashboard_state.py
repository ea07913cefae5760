"""What the dashboard's page polls: counts per agent and per edge, recent latency, and
the reloads seen since the dashboard was mounted.

Three small watchers, each attached once when the dashboard is mounted:

- :class:`EdgeTally`, a ledger hook, counts spores along each pair of nodes of the
  wiring graph (agent to agent, agent to channel, channel to subscriber, the outside
  world to agents and back). Only names of the current wiring are keys (anything
  else is the outside world, or not counted), so senders cannot grow it.
- :class:`LatencyWindow` turns the agents' cumulative latency histograms into p50/p99
  over about the last ten seconds, from the difference of two samples.
- :class:`ReloadHistory` keeps the last reload reports, from the organism's typed
  ``OrganismReloaded`` events (subscribed to without the per-spore events, which
  would cost the organism an event object per spore).

The page computes rates itself, from the difference of two polls' counts over the
difference of their ``at`` (the server's monotonic clock, so the browser's clock and
the polls' network delays do not skew them).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sporeflow.config import OrganismSpec
from sporeflow.pipeline.core.deadletters import Masker
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.wiring import WiringSnapshot
from sporeflow.pipeline.observe.events import Event, EventBus, OrganismReloaded
from sporeflow.steps import Spore

__all__ = ["EdgeTally", "LatencyWindow", "ReloadHistory", "StatePort", "state_json"]

_OUTSIDE = "outside"


class StatePort(Protocol):
    """What the dashboard reads of an organism."""

    @property
    def spec(self) -> OrganismSpec: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def masker(self) -> Masker: ...

    def stats(self) -> dict[str, Any]: ...

    def latency_histograms(self) -> dict[str, LatencyHistogram]: ...

    def wiring(self) -> WiringSnapshot: ...

    def add_hook(self, hook: LedgerHook) -> None: ...


class EdgeTally(LedgerHook):
    """Counts spores per ``(source, target)`` pair of graph node keys.

    A spore sent or returned by agent A to agent B counts on ``agent:A -> agent:B``, to
    channel C on ``agent:A -> channel:C``; a broadcast handled by subscriber S counts on
    ``channel:C -> agent:S``; what the outside world sends, and replies addressed to it,
    count on edges from and to ``outside``, but a declared source's on ``source:NAME``.
    """

    def __init__(self, wiring: Callable[[], WiringSnapshot]) -> None:
        self._wiring = wiring
        self.counts: Counter[tuple[str, str]] = Counter()

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        snapshot = self._wiring()
        source = f"agent:{agent}" if agent is not None and agent in snapshot.agents else _OUTSIDE
        sources = snapshot.spec.sources
        for spore in spores:
            sender = spore.from_agent  # a declared source's spores count on its own node
            fed = source == _OUTSIDE and type(sender) is str and sender in sources
            self._sent(snapshot, f"source:{sender}" if fed else source, spore)

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        snapshot = self._wiring()
        self._arrived(snapshot, spore, agent)
        source = f"agent:{agent}"
        for reply in replies:
            self._sent(snapshot, source, reply)

    def failed(self, spore: Spore, agent: str, reason: str, error: BaseException,
               attempts: int) -> None:
        self._arrived(self._wiring(), spore, agent)

    def _sent(self, snapshot: WiringSnapshot, source: str, spore: Spore) -> None:
        target, channel = spore.to_agent, spore.channel
        # A spore may be malformed in any field until validated: only strings are keys.
        if target is not None:
            if type(target) is str:
                self.counts[source, f"agent:{target}" if target in snapshot.agents
                            else _OUTSIDE] += 1
        elif type(channel) is str and channel in snapshot.spec.channels:
            self.counts[source, f"channel:{channel}"] += 1

    def _arrived(self, snapshot: WiringSnapshot, spore: Spore, agent: str) -> None:
        channel = spore.channel
        if spore.to_agent is None and type(channel) is str and channel in snapshot.spec.channels:
            self.counts[f"channel:{channel}", f"agent:{agent}"] += 1

    def edges(self) -> list[dict[str, Any]]:
        return [{"source": source, "target": target, "count": count}
                for (source, target), count in self.counts.items()]


class LatencyWindow:
    """p50/p99 per agent over about the last ``span`` seconds.

    Each :meth:`sample` keeps a copy of the cumulative bucket counts (at most one a
    second); the window's histogram is the newest counts less those of the newest
    sample at least ``span`` old (or the oldest kept).
    """

    def __init__(self, span: float = 10.0, *, every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.span, self.every, self.clock = span, every, clock
        self._samples: deque[tuple[float, dict[str, list[int]]]] = deque()

    def sample(self, histograms: Mapping[str, LatencyHistogram]) -> dict[str, dict[str, Any]]:
        now = self.clock()
        counts = {name: list(histogram.counts) for name, histogram in histograms.items()}
        if not self._samples or now - self._samples[-1][0] >= self.every:
            self._samples.append((now, counts))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.span:
            self._samples.popleft()
        base = self._samples[0][1]
        if base is counts:  # no sample before this one: all since start
            base = {}
        window: dict[str, dict[str, Any]] = {}
        for name, current in counts.items():
            before = base.get(name)
            delta = ([now_count - then for now_count, then in zip(current, before, strict=True)]
                     if before is not None and len(before) == len(current) else current)
            if min(delta, default=0) < 0:  # a new histogram (the agent was replaced)
                delta = current
            histogram = LatencyHistogram()
            histogram.counts = delta
            summary = histogram.summary()
            window[name] = {"count": summary["count"], "p50_ms": summary["p50_ms"],
                            "p99_ms": summary["p99_ms"]}
        return window


class ReloadHistory:
    """The last ``size`` reloads (applied or refused), newest first, as plain dicts."""

    def __init__(self, events: EventBus, masker: Masker, size: int = 50) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._masker = masker
        # The organism's own events only: no event is built per spore for this.
        self._unsubscribe = events.subscribe(self._seen, spores=False)

    def _seen(self, event: Event) -> None:
        if isinstance(event, OrganismReloaded):
            report = dict(event.report)
            entry = {"at": event.at.isoformat(), "ok": not event.refused,
                     "source": self._masker.mask(str(report.get("source", ""))),
                     "added": list(event.added), "removed": list(event.removed),
                     "changed": report.get("changed", {}),
                     "channels": report.get("channels", {}),
                     "limits_changed": report.get("limits_changed", []),
                     "errors": [self._masker.mask(error) for error in event.errors],
                     "warnings": [self._masker.mask(str(warning))
                                  for warning in report.get("warnings", ())],
                     "duration_s": report.get("duration_s")}
            self.entries.appendleft(entry)

    def close(self) -> None:
        """Stop listening."""
        self._unsubscribe()


def state_json(organism: StatePort, *, tally: EdgeTally, window: LatencyWindow,
               reloads: ReloadHistory, graph_version: int,
               clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """One poll's worth: read on the event loop, O(agents + edges)."""
    stats = organism.stats()
    last = stats["reload"]["last"]
    recent = window.sample(organism.latency_histograms())
    agents = {}
    for name, agent in stats["agents"].items():
        agents[name] = {key: agent[key] for key in (
            "received", "handled", "failed", "retried", "in_flight", "queued", "abandoned",
            "refused_sent")}
        agents[name]["latency"] = agent["latency"]
        agents[name]["recent"] = recent.get(name, {"count": 0, "p50_ms": None, "p99_ms": None})
    return {
        "organism": stats["organism"], "state": stats["state"], "uptime_s": stats["uptime_s"],
        "at": clock(), "graph_version": graph_version,
        "agents": agents, "channels": stats["channels"], "edges": tally.edges(),
        "totals": stats["totals"], "dead_letters": stats["dead_letters"],
        "reload": {"count": stats["reload"]["count"], "last": _masked(last, organism.masker),
                   "history": list(reloads.entries)},
    }


def _masked(report: dict[str, Any] | None, masker: Masker) -> dict[str, Any] | None:
    """A reload report (``stats()["reload"]["last"]``) with its errors masked."""
    if report is None:
        return None
    return {**report, "errors": [masker.mask(str(error)) for error in report.get("errors", ())]}
