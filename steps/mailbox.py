"""What waits in an agent's mailbox, read without taking it (for a snapshot).

``lanes.py`` owns the mailbox; this reads its public ``backlog`` view only. A
spore queued again for a retry is wrapped there with its attempt number: it is
unwrapped here, and comes back as a first attempt.
"""

from __future__ import annotations

from dataclasses import replace

from sporeflow.steps.lanes import AgentLane
from sporeflow.steps.spore import Spore

__all__ = ["queued_in", "redelivery"]


def queued_in(lane: AgentLane) -> list[Spore]:
    """The spores queued in ``lane``, highest priority first, oldest first within one;
    none is taken. Spores running, or waiting for a retry's delay, are not queued."""
    return [item if isinstance(item, Spore) else item.spore for item in lane.backlog.items()]


def redelivery(spore: Spore, agent: str) -> Spore:
    """``spore``, delivered to ``agent`` once, addressed to ``agent`` alone to be delivered
    again: a broadcast's delivery must not reach the channel's other subscribers twice."""
    return spore if spore.to_agent is not None else replace(spore, to_agent=agent)
