"""The wiring snapshot: agents, their lanes, the routing table and the schema checks,
as one immutable value.

Stages read the current snapshot once per batch; reload, ``add_agent``/
``remove_agent`` and ``subscribe``/``unsubscribe`` build a new one and swap it in
one assignment, so a stage never sees half of a change, and never misses an agent
added after the chain started.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sporeflow.config import AgentSpec, ExternalAgentSpec, OrganismSpec
from sporeflow.steps import AgentLane, RoutingTable, SchemaCheck, schema_check
from sporeflow.steps.keytable import KeyTable

if TYPE_CHECKING:
    from sporeflow.pipeline.core.owed import Owed

__all__ = ["LANE_COUNTS", "AgentRuntime", "Retired", "WiringCell", "WiringSnapshot",
           "routing_table"]

# A lane's cumulative counts, which the organism's totals add up.
LANE_COUNTS = ("received", "handled", "failed", "retried", "deduplicated")


@dataclass(eq=False, slots=True)  # one per agent: no __dict__ each
class AgentRuntime:
    """An agent as the running organism holds it: its spec, lane, logger and state."""

    spec: AgentSpec
    lane: AgentLane
    logger: logging.Logger
    state: dict[str, Any] = field(default_factory=dict)
    actor: Any = None  # the ClassAgent (agents.state) of a class handler, else None
    keys: KeyTable | None = None  # a keyed agent's keys and their states (steps.keytable)


def routing_table(spec: OrganismSpec, removed: frozenset[str] = frozenset()) -> RoutingTable:
    """Who exists, who subscribes to what and who may address whom, per ``spec``;
    ``removed``: the names reloads took out in this run (those of ``spec`` left out)."""
    subscribers: dict[str, list[str]] = {}
    # External agents (on the broker, outside sporeflow) are addressed like ours; the
    # bridge publishes what goes to them, and no lane or queue of theirs exists here.
    listeners: list[AgentSpec | ExternalAgentSpec] = [*spec.agents.values(),
                                                       *spec.external.values()]
    for agent in listeners:
        for channel in agent.subscribe:
            subscribers.setdefault(channel, []).append(agent.name)
    agents = frozenset((*spec.agents, *spec.external))
    return RoutingTable(
        agents=agents,
        subscribers={c: tuple(names) for c, names in subscribers.items()},
        peers={a.name: a.peers for a in spec.agents.values() if a.peers is not None},
        publishers={c.name: c.publish for c in spec.channels.values() if c.publish is not None},
        channels=frozenset(spec.channels),
        organism=spec.name,
        removed=removed - agents,
    )


class Retired:
    """The lanes of agents taken out of the wiring in this run (a reload, ``remove_agent``):
    what they counted, and go on counting while they settle what they held, stays in the
    organism's totals, which never go down. One per run, shared by its snapshots (a
    tally, not wiring). Once a lane has settled (:meth:`settled`), its counts are kept,
    not it: a program adding and removing agents as it goes holds no lane it had.
    ``owed``: the run's spores accepted for those agents before a reload removed them
    (:mod:`.owed`; None outside a run)."""

    __slots__ = ("_dropped", "_sums", "back", "lanes", "owed")

    def __init__(self, owed: Owed | None = None) -> None:
        self.owed = owed
        self.lanes: list[tuple[str, AgentLane]] = []  # those still settling, by name
        self._sums: dict[str, int] = dict.fromkeys(LANE_COUNTS, 0)  # of the settled ones
        self._dropped: dict[str, int] = {}  # their 'deduplicated', by agent name
        self.back: frozenset[str] = frozenset()  # names in the wiring again

    def count(self, counter: str) -> int:
        if counter != "deduplicated":
            return self._sums[counter] + sum(int(getattr(lane, counter)) for _, lane in self.lanes)
        # An agent's dedupe (its window and its count) is one per name in a run, shared by
        # its lanes: counted once a name, and not while the name is in the wiring again.
        dropped = dict(self._dropped)
        for name, lane in self.lanes:
            dropped[name] = max(dropped.get(name, 0), lane.deduplicated)
        return sum(count for name, count in dropped.items() if name not in self.back)

    def after(self, previous: Mapping[str, AgentRuntime],
              agents: Mapping[str, AgentRuntime]) -> Retired:
        """Take in the lanes of ``previous`` agents not among ``agents``."""
        self.lanes += [(name, agent.lane) for name, agent in previous.items()
                       if name not in agents]
        self.back = frozenset(agents)
        return self

    def settled(self, lane: AgentLane) -> None:
        """``lane`` holds nothing more: keep its counts, and let it go."""
        for index, (name, held) in enumerate(self.lanes):
            if held is lane:
                del self.lanes[index]
                for counter in LANE_COUNTS:
                    self._sums[counter] += getattr(lane, counter)
                self._dropped[name] = max(self._dropped.get(name, 0), lane.deduplicated)
                return


@dataclass(frozen=True, slots=True)
class WiringSnapshot:
    """Read it, never change it: its mappings are plain dicts for the stages' speed."""

    spec: OrganismSpec
    agents: Mapping[str, AgentRuntime]
    lanes: Mapping[str, AgentLane]
    table: RoutingTable
    schemas: Mapping[str, SchemaCheck]
    # Each channel's subscribers' lanes: what outside admission looks at per broadcast.
    channel_lanes: Mapping[str, tuple[AgentLane, ...]]
    retired: Retired = field(default_factory=Retired)
    # Agents taken out whose lanes still settle what was accepted for them: their specs.
    retiring: Mapping[str, AgentSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: OrganismSpec, agents: Mapping[str, AgentRuntime],
           previous: WiringSnapshot | None = None) -> WiringSnapshot:
        """The snapshot of ``spec`` run by ``agents`` (one runtime per agent of ``spec``);
        the lanes of ``previous``'s agents that are not among them are ``retired``.

        A retiring agent's spec and schema are kept while its lane settles (``retiring``):
        what was accepted for it before the reload is checked by its schema and charged its
        declared cost on its way there, as it would have been."""
        lanes = {name: agent.lane for name, agent in agents.items()}
        if previous is None:
            table, retired = routing_table(spec), Retired()
        else:
            table = routing_table(spec, previous.table.removed | previous.table.agents)
            retired = previous.retired.after(previous.agents, agents)
        schemas = {name: schema_check(name, a.schema)
                   for name, a in spec.agents.items() if a.schema is not None}
        retiring: dict[str, AgentSpec] = {}
        if previous is not None:
            for name, _ in retired.lanes:
                if name in agents:  # the old lane of a changed agent: its new spec rules
                    continue
                was = previous.agents.get(name)
                kept = was.spec if was is not None else previous.retiring.get(name)
                if kept is not None:
                    retiring[name] = kept
                check = previous.schemas.get(name)
                if check is not None:
                    schemas.setdefault(name, check)
        return cls(
            spec=spec,
            agents=dict(agents),
            lanes=lanes,
            table=table,
            schemas=schemas,
            channel_lanes={channel: tuple(lanes[name] for name in names if name in lanes)
                           for channel, names in table.subscribers.items()},
            retired=retired,
            retiring=retiring,
        )

    @classmethod
    def empty(cls, spec: OrganismSpec, owed: Owed | None = None) -> WiringSnapshot:
        """No agent yet: the first snapshot of a run (whose ``owed`` it is)."""
        return cls(spec=spec, agents={}, lanes={}, table=RoutingTable(agents=frozenset()),
                   schemas={}, channel_lanes={}, retired=Retired(owed))


class WiringCell:
    """Holds the current snapshot; swapping it is one assignment. Calling the cell gives
    the snapshot; hot paths read ``cell.current`` and save the call."""

    __slots__ = ("current",)

    def __init__(self, current: WiringSnapshot) -> None:
        self.current = current

    def __call__(self) -> WiringSnapshot:
        return self.current
