"""What ``check`` warns about: wiring that can only loop, and agents nothing reaches."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from sporeflow.config.errors import Problem
from sporeflow.config.model import (
    AgentSpec,
    OrganismSpec,
)
from sporeflow.config.positions import Located

__all__ = ["wiring_warnings"]


def wiring_warnings(located: Located, spec: OrganismSpec) -> list[Problem]:
    warnings: list[Problem] = []
    emitted_to = {a.emit.to for a in spec.agents.values() if a.emit and a.emit.to}
    named_peers = {p for a in spec.agents.values() for p in (a.peers or ())}
    named_peers |= {p for a in spec.agents.values() for p in _orchestrated_names(a)}
    # Only an organism that drives itself (it has boot spores) can be judged for agents
    # nothing reaches: otherwise the entry points are fed from outside by design.
    self_driving = any(a.boot is not None for a in spec.agents.values())
    for agent in spec.agents.values():
        reached = (agent.subscribe or agent.boot is not None or agent.name in emitted_to
                   or agent.name in named_peers)
        if self_driving and not reached:
            warnings.append(located.problem(
                ("agents", agent.name),
                f"nothing in the organism reaches {agent.name!r} (no subscribe, no boot, "
                f"no emit or peers naming it): only outside sends will", warning=True))
        if agent.emit is not None or _returns_none(agent.handler):
            continue
        # Without emit, replies go back to the sender: a sender that emits here again loops.
        for other in spec.agents.values():
            target = other.emit
            if target is None or other.name == agent.name:
                continue
            if target.to == agent.name or (target.channel and target.channel in agent.subscribe):
                warnings.append(located.problem(
                    ("agents", agent.name),
                    f"{agent.name!r} has no emit, so its replies go back to {other.name!r}, "
                    f"which emits to it again: this can only loop until max_hops; give "
                    f"{agent.name!r} an emit or return None", warning=True))
    return warnings


# -- small helpers -----------------------------------------------------------------


def _orchestrated_names(agent: AgentSpec) -> tuple[str, ...]:
    """The agents a gather or sequence agent addresses."""
    if agent.gather is not None:
        return agent.gather.to or ()
    return agent.sequence.steps if agent.sequence is not None else ()


def _returns_none(handler: Callable[..., Any]) -> bool:
    """True when the handler is annotated ``-> None``: it never replies, so cannot loop."""
    try:
        annotation = inspect.signature(handler).return_annotation
    except (TypeError, ValueError):
        return False
    return annotation is None or annotation == "None"
