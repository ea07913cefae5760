"""The spores an organism returned to the outside world lately: what ``organism.outbox``
and a ``TestOrganism``'s ``returned`` read.

Bounded by count and by bytes as the dead letters are: what comes back to a sender is
made of input (an HTTP client's knowledge echoed by a handler), and by count alone ten
thousand spores of a megabyte each would be ten gigabytes, kept for nobody.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from sporeflow.config.model import Limits
from sporeflow.steps import Spore
from sporeflow.steps.sizebound import spore_weight

__all__ = ["Outbox"]

CAPACITY = 10_000
MAX_BYTES = 64 << 20


class Outbox:
    """The latest spores returned outside, oldest first: at most ``capacity`` of them and
    ``max_bytes`` of them (the newest is kept whatever it weighs); older ones are
    forgotten and counted in ``forgotten``."""

    def __init__(self, limits: Limits, *, capacity: int = CAPACITY,
                 max_bytes: int = MAX_BYTES) -> None:
        self._spores: deque[tuple[Spore, int]] = deque()
        self.limits = limits
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self.forgotten = 0

    def append(self, spore: Spore) -> None:
        weight = spore_weight(spore, self.limits, self.max_bytes)
        spores = self._spores
        spores.append((spore, weight))
        self.bytes += weight
        while len(spores) > self.capacity or (self.bytes > self.max_bytes and len(spores) > 1):
            self.bytes -= spores.popleft()[1]
            self.forgotten += 1

    def __iter__(self) -> Iterator[Spore]:
        return (spore for spore, _ in self._spores)

    def __len__(self) -> int:
        return len(self._spores)
