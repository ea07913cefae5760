"""An agent's swaps still going: a reload never waits for one (a handler may never end).

An agent changed or removed again while its swap still waits stacks: its lanes form a
chain of :class:`Swap`, each new lane running once the lanes before it hold no slot,
what the older ones leave going to the newest (:class:`SwapChain`); so the newest
settings win once the old handlers end. What an old lane counts after its swap began goes
on the newest lane's counts (:meth:`Swap.fold`), once: when the swap ends, or when a stop
cut it short. :func:`stacked_notes` tells the reload's report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from sporeflow.pipeline.core.wiring import LANE_COUNTS, AgentRuntime
from sporeflow.steps import AgentLane

__all__ = ["Swap", "SwapChain", "lane_counts", "stacked_notes"]


class SwapChain:
    """One agent's swaps still going: ``newest`` takes what the older lanes leave (the
    agent in the wiring, or the last one it had if a reload removed it)."""

    __slots__ = ("newest",)

    def __init__(self, newest: AgentRuntime) -> None:
        self.newest = newest


class Swap:
    """A hand-over from ``old``, after ``after`` (the agent's swap still going when it
    began, or None): ``released`` once no lane up to ``old``'s holds a slot (the new lane
    may run); ``task`` ends once it has finished, after ``after``'s."""

    __slots__ = ("after", "base", "chain", "folded", "old", "released", "task")
    task: asyncio.Task[None]  # set once made

    def __init__(self, chain: SwapChain, old: AgentRuntime, after: Swap | None) -> None:
        self.chain, self.old, self.after = chain, old, after
        self.released = asyncio.Event()
        self.base = lane_counts(old.lane)  # the counts the new lane went on from
        self.folded = False

    def fold(self) -> None:
        """Add what the old lane counted since the swap began to the newest lane (the
        agent's counts go on there), once."""
        if self.folded:
            return
        self.folded = True
        newest, base = self.chain.newest.lane, self.base
        for counter, value in lane_counts(self.old.lane).items():
            setattr(newest, counter, getattr(newest, counter) + value - base[counter])


def lane_counts(lane: AgentLane) -> dict[str, int]:
    """The lane's counts a new lane of its agent goes on from ('deduplicated' is its
    dedupe's, which the new lane shares)."""
    return {counter: getattr(lane, counter) for counter in LANE_COUNTS
            if counter != "deduplicated"}


def stacked_notes(handovers: Mapping[str, Swap], changed: Iterable[str]) -> list[str]:
    """Notes on the ``changed`` agents whose previous swap (in ``handovers``, the newest
    by agent) still waits on handlers."""
    notes = []
    for name in changed:
        swap, spores = handovers.get(name), []
        if swap is None or swap.released.is_set():
            continue
        while swap is not None:  # the lanes before it, whose handlers hold slots
            spores += [spore.id for spore in swap.old.lane.handling()]
            swap = swap.after
        notes.append(
            f"agent {name!r}: the previous reload's settings still wait for the "
            f"handlers in flight (spores {', '.join(spores) or '-'}); these replace "
            f"them, once those end (one that never ends holds them until a restart: "
            f"give {name!r} a `timeout`)")
    return notes
