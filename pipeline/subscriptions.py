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
import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sporeflow.config import AgentSpec, ConfigError, Problem

if TYPE_CHECKING:
    from sporeflow.pipeline.organism import Organism

__all__ = ["set_subscription"]


def set_subscription(organism: Organism, agent: str, channel: str, *,
                     subscribed: bool) -> bool:
    """Subscribe (or unsubscribe) ``agent`` to ``channel``; return whether it changed."""
    spec = organism.spec
    current = spec.agents.get(agent)
    if current is None:
        raise _problem(f"agents.{agent}", f"unknown agent {agent!r}{_hint(agent, spec.agents)}")
    path = f"agents.{agent}.subscribe"
    if channel not in spec.channels:
        raise _problem(path, f"unknown channel {channel!r}{_hint(channel, spec.channels)}; "
                             f"declare it under channels:")
    allowed = spec.channels[channel].subscribe
    if subscribed and allowed is not None and agent not in allowed:
        raise _problem(path, f"agent {agent!r} may not subscribe to {channel!r}: its subscribe "
                             f"list is {sorted(allowed)!r}")
    if (channel in current.subscribe) == subscribed:
        return False
    channels = ((*current.subscribe, channel) if subscribed
                else tuple(c for c in current.subscribe if c != channel))
    _swap(organism, dataclasses.replace(current, subscribe=channels))
    return True


def _swap(organism: Organism, new: AgentSpec) -> None:
    """Put ``new`` in the organism's spec and runtime, then rebuild the routing table."""
    organism.spec = dataclasses.replace(
        organism.spec, agents={**organism.spec.agents, new.name: new})
    runtime = organism._agents.get(new.name)
    if runtime is not None:
        runtime.spec = new
    organism._table = organism._routing_table()


def _hint(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _problem(path: str, message: str) -> ConfigError:
    return ConfigError([Problem("<running organism>", 0, 0, path, message)])
