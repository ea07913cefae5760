"""How many deliveries of each hosted agent's queue a process holds unacked.

Twice the agent's concurrency, room for its mailbox beyond the handlers running, plus
one per slot its handlers lent while they await another agent (``ctx.request``,
``ctx.gather``): each lent slot lets one more handler start, which holds one more
delivery, and a request to this same agent must still be able to arrive. Without that
one, requests nested deeper than the room stayed on the broker behind the deliveries
whose handlers awaited them, until their timeout. On RabbitMQ a change restarts the
queue's consumer (a prefetch applies to consumers started after it), so the prefetch
grows by doubling and is not lowered again until a reload sets the agent's room anew: a
handler's every request would otherwise restart it twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from functools import partial

from sporeflow.config.model import OrganismSpec
from sporeflow.steps.lanes import AgentLane

__all__ = ["Prefetches"]

_MOST = 65_535  # AMQP's prefetch count is 16 bits


class Prefetches:
    """The prefetch of each hosted agent's queue, applied through ``apply(agent, count)``
    to a queue being consumed (see :meth:`consumed`)."""

    def __init__(self, apply: Callable[[str, int], None]) -> None:
        self._apply = apply
        self._room: dict[str, int] = {}  # by agent: twice its concurrency
        self._lent: Counter[str] = Counter()  # by agent: slots lent by its lanes now
        self._granted: dict[str, int] = {}  # by agent: the prefetch given its consumer
        self._consumed: set[str] = set()

    def of(self, agent: str) -> int:
        """The prefetch ``agent``'s consumer is given (fixed by the first ask)."""
        granted = self._granted.get(agent)
        if granted is None:
            granted = self._granted[agent] = self._needed(agent)
        return granted

    def _needed(self, agent: str) -> int:
        return self._room[agent] + max(self._lent[agent], 0)

    def configure(self, spec: OrganismSpec, hosted: Collection[str]) -> None:
        """Take the hosted agents' concurrency from ``spec`` (a start, a reload)."""
        for name in hosted:
            if name in spec.agents:
                before = self._room.get(name)
                self._room[name] = spec.agents[name].concurrency * 2
                if before is not None and before != self._room[name]:
                    self._granted[name] = self._needed(name)  # anew, lower too
                    self._apply_to(name)

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
        granted = self.of(agent)
        self._lent[agent] += change
        needed = self._needed(agent)
        if needed > granted:  # doubled: a few restarts however deep requests nest
            self._granted[agent] = min(max(needed, granted * 2), _MOST)
            self._apply_to(agent)

    def _apply_to(self, agent: str) -> None:
        if agent in self._consumed:
            self._apply(agent, self.of(agent))
