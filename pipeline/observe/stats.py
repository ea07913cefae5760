"""``organism.stats()``: one plain, JSON-serialisable dict of counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sporeflow.config import ChannelSpec
from sporeflow.pipeline.core.deadletters import DeadLetterStore
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.wiring import WiringSnapshot

__all__ = ["organism_stats"]


def organism_stats(*, name: str, state: str, uptime: float, wiring: WiringSnapshot,
                   channels: Mapping[str, ChannelSpec],
                   latency: Mapping[str, LatencyHistogram], intake: Intake | None,
                   ledger: Ledger | None, returned: int, dead_letters: DeadLetterStore,
                   journal: dict[str, Any] | None, broker: dict[str, Any] | None,
                   reload: dict[str, Any]) -> dict[str, Any]:
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
            # Slots kept by threads still running a handler given up on (agents.threads).
            "abandoned": lane.stuck,
            "refused_sent": refused_from.get(agent_name, 0),
            "refused_by_reason": {str(why): count for (sender, why), count
                                  in refused_why.items() if sender == agent_name},
            "latency": latency[agent_name].summary() if agent_name in latency else {},
            "subscribe": list(agent.spec.subscribe),
        }
    return {
        "organism": name,
        "state": state,
        "uptime_s": uptime,
        "agents": agents,
        "totals": {
            "admitted": intake.admitted if intake else 0,
            "replies": intake.fed if intake else 0,
            "received": sum(a["received"] for a in agents.values()),
            "handled": sum(a["handled"] for a in agents.values()),
            "failed": sum(a["failed"] for a in agents.values()),
            "retried": sum(a["retried"] for a in agents.values()),
            "returned": returned,
            "dead_letters": dead_letters.total,
            "held": intake.held if intake else 0,
            # Spores paged out to disk past limits.max_in_memory: now, and ever.
            "paged_out": intake.spill.count if intake else 0,
            "paged_out_total": intake.spill.spilled_total if intake else 0,
        },
        "dead_letters": {
            "total": dead_letters.total, "kept": len(dead_letters),
            "evicted": dead_letters.evicted,
            "by_reason": {str(reason): count for reason, count in dead_letters.by_reason.items()},
        },
        "channels": {
            channel: {"broadcasts": fanout.get(channel, (0, 0))[0],
                      "deliveries": fanout.get(channel, (0, 0))[1],
                      "refused": refused_on.get(channel, 0)}
            for channel in dict.fromkeys([*channels, *fanout, *refused_on])
        },
        "journal": journal,
        "broker": broker,
        "reload": reload,
    }
