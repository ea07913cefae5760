"""How many deliveries of each hosted agent's queue a process holds unacked.

Twice the agent's concurrency, room for its mailbox beyond the handlers running, plus
one per slot its handlers lent while they await another agent (``ctx.request``,
``ctx.gather``): each lent slot lets one more handler start, which holds one more
delivery, and a request to this same agent must still be able to arrive. Without that
one, requests nested deeper than the room stayed on the broker behind the deliveries
whose handlers awaited them, until their timeout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from functools import partial

from sporeflow.config.model import OrganismSpec
from sporeflow.steps.lanes import AgentLane

__all__ = ["Prefetches"]


class Prefetches:
    """The prefetch of each hosted agent's queue, applied through ``apply(agent, count)``
    to a queue being consumed (see :meth:`consumed`)."""

    def __init__(self, apply: Callable[[str, int], None]) -> None:
        self._apply = apply
        self._room: dict[str, int] = {}  # by agent: twice its concurrency
        self._lent: Counter[str] = Counter()  # by agent: slots lent by its lanes now
        self._consumed: set[str] = set()

    def of(self, agent: str) -> int:
        return self._room[agent] + max(self._lent[agent], 0)

    def configure(self, spec: OrganismSpec, hosted: Collection[str]) -> None:
        """Take the hosted agents' concurrency from ``spec`` (a start, a reload)."""
        for name in hosted:
            if name in spec.agents:
                before = self._room.get(name)
                self._room[name] = spec.agents[name].concurrency * 2
                if before is not None and before != self._room[name]:
                    self._changed(name)

    def consumed(self, agent: str) -> None:
        """``agent``'s queue is consumed now: its changes are applied from here on."""
        self._consumed.add(agent)

    def watch(self, lanes: Mapping[str, AgentLane]) -> None:
        """Follow the lent slots of the hosted agents' lanes (a lane a reload made too;
        one it replaced keeps telling the same agent's count until it is done)."""
        for name, lane in lanes.items():
            if name in self._room and lane.on_lent is None:
                lane.on_lent = partial(self._lent_by, name)

    def _lent_by(self, agent: str, change: int) -> None:
        self._lent[agent] += change
        self._changed(agent)

    def _changed(self, agent: str) -> None:
        if agent in self._consumed:
            self._apply(agent, self.of(agent))
