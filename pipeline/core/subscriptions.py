"""Dynamic wiring: subscribe an agent to a channel, or unsubscribe it, at run time.

A subscription only changes who a broadcast reaches, so it swaps the agent's
spec and the routing table, and leaves the agent's lane, queue and in-flight
work alone (unlike a reload's changed agent, which gets a new lane). The
organism's spec is updated too: ``stats()``, ``sporeflow graph`` and a later
diff all see the new wiring; a reload of the file applies the file's wiring
again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

from sporeflow.config import ConfigError, OrganismSpec, Problem
from sporeflow.config.reasons import did_you_mean
from sporeflow.pipeline.core.wiring import AgentRuntime, WiringSnapshot


class Rewirable(Protocol):
    spec: OrganismSpec

    def wiring(self) -> WiringSnapshot: ...

    def rewire(self, spec: OrganismSpec, agents: Mapping[str, AgentRuntime]) -> None: ...

__all__ = ["set_subscription"]


def set_subscription(organism: Rewirable, agent: str, channel: str, *,
                     subscribed: bool) -> bool:
    """Subscribe (or unsubscribe) ``agent`` to ``channel``; return whether it changed."""
    spec = organism.spec
    current = spec.agents.get(agent)
    if current is None:
        raise _problem(f"agents.{agent}",
                       f"unknown agent {agent!r}{did_you_mean(agent, spec.agents)}")
    path = f"agents.{agent}.subscribe"
    if channel not in spec.channels:
        raise _problem(path, f"unknown channel {channel!r}{did_you_mean(channel, spec.channels)}; "
                             f"declare it under channels:")
    allowed = spec.channels[channel].subscribe
    if subscribed and allowed is not None and agent not in allowed:
        raise _problem(path, f"agent {agent!r} may not subscribe to {channel!r}: its subscribe "
                             f"list is {sorted(allowed)!r}")
    if (channel in current.subscribe) == subscribed:
        return False
    channels = ((*current.subscribe, channel) if subscribed
                else tuple(c for c in current.subscribe if c != channel))
    new = dataclasses.replace(current, subscribe=channels)
    spec = dataclasses.replace(spec, agents={**spec.agents, agent: new})
    agents = organism.wiring().agents
    runtime = agents.get(agent)
    if runtime is not None:  # same lane, queue and work: only who a broadcast reaches changes
        runtime.spec = new
    organism.rewire(spec, agents)
    return True


def _problem(path: str, message: str) -> ConfigError:
    return ConfigError([Problem("<running organism>", 0, 0, path, message)])
