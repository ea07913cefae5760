"""``organism.stats()``: one plain, JSON-serialisable dict of counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sporeflow.config import ChannelSpec
from sporeflow.pipeline.core.deadletters import DeadLetterStore
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import OTHER, Ledger
from sporeflow.pipeline.core.recent import RecentNames
from sporeflow.pipeline.core.wiring import LANE_COUNTS, WiringSnapshot

__all__ = ["organism_stats"]


def organism_stats(*, name: str, state: str, uptime: float, wiring: WiringSnapshot,
                   channels: Mapping[str, ChannelSpec],
                   latency: Mapping[str, LatencyHistogram], intake: Intake | None,
                   ledger: Ledger | None, returned: int, dead_letters: DeadLetterStore,
                   journal: dict[str, Any] | None, broker: dict[str, Any] | None,
                   reload: dict[str, Any], outside: RecentNames | None = None
                   ) -> dict[str, Any]:
    refused_from = ledger.refused_from if ledger is not None else {}
    refused_why = ledger.refused_why if ledger is not None else {}
    refused_on = ledger.refused_on if ledger is not None else {}
    fanout = ledger.fanout if ledger is not None else {}
    agents: dict[str, dict[str, Any]] = {}
    for agent_name, agent in wiring.agents.items():
        lane = agent.lane
        agents[agent_name] = {
            "received": lane.received, "handled": lane.handled, "failed": lane.failed,
            "retried": lane.retried, "in_flight": lane.in_flight, "queued": lane.queued,
            "deduplicated": lane.deduplicated,  # copies dropped (agents.X.dedupe)
            # Slots kept by threads still running a handler given up on (agents.threads).
            "abandoned": lane.stuck,
            "refused_sent": refused_from.get(agent_name, 0),
            "refused_by_reason": {str(why): count for (sender, why), count
                                  in refused_why.items() if sender == agent_name},
            "latency": latency[agent_name].summary() if agent_name in latency else {},
            "subscribe": list(agent.spec.subscribe),
        }
        if agent.keys is not None:  # a keyed agent: its keys live, kept, running...
            agents[agent_name]["keys"] = agent.keys.stats()
    return {
        "organism": name,
        "state": state,
        "uptime_s": uptime,
        "agents": agents,
        "totals": {
            "admitted": intake.admitted if intake else 0,
            # What handlers produced: replayed or delivered spores are fed too, not made.
            "replies": ledger.produced if ledger is not None else 0,
            # Agents a reload removed included: what they did stays counted.
            **{count: sum(a[count] for a in agents.values()) + wiring.retired.count(count)
               for count in LANE_COUNTS},
            "returned": returned,
            "dead_letters": dead_letters.total,
            # Interrupted by a stop and kept for the next start (the journal's), not dead.
            "unfinished_kept": ledger.kept if ledger is not None else 0,
            # Copies of the response that answered a request (a request delivered again).
            "duplicate_responses": ledger.duplicate_responses if ledger is not None else 0,
            "held": intake.held if intake else 0,
            # Spores paged out to disk past limits.max_in_memory: now, and ever.
            "paged_out": intake.spill.count if intake else 0,
            "paged_out_total": intake.spill.spilled_total if intake else 0,
            # Senders that are no agent, remembered now, and forgotten past the limit.
            "outside_senders": len(outside) if outside is not None else 0,
            "outside_senders_forgotten": outside.forgotten if outside is not None else 0,
        },
        "dead_letters": {
            "total": dead_letters.total, "kept": len(dead_letters),
            "evicted": dead_letters.evicted, "bytes": dead_letters.bytes,
            "by_reason": {str(reason): count for reason, count in dead_letters.by_reason.items()},
        },
        "channels": _channels(channels, fanout, refused_on),
        "journal": journal,
        "broker": broker,
        "reload": reload,
    }


def _channels(declared: Mapping[str, ChannelSpec], fanout: Mapping[str, Sequence[int]],
              refused_on: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Counts per declared channel, and ``other`` for the names no one declared (the
    ledger's tallies are kept under those two: ``Ledger._counted_under``). A channel a
    reload removed is left out, as a removed agent is; its counts come back with it."""
    table = {name: {"broadcasts": 0, "deliveries": 0, "refused": 0} for name in declared}
    if OTHER in fanout or OTHER in refused_on:
        table.setdefault(OTHER, {"broadcasts": 0, "deliveries": 0, "refused": 0})
    for name, (broadcasts, deliveries) in fanout.items():
        if name in table:
            table[name]["broadcasts"] += broadcasts
            table[name]["deliveries"] += deliveries
    for name, refused in refused_on.items():
        if name in table:
            table[name]["refused"] += refused
    return table
