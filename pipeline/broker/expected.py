"""The copies a process published to agents it hosts, until they come back to it.

Over a broker a spore for an agent of this process leaves the intake at the broker's
confirm and comes back as a delivery a little later: in between, the process holds
nothing and would look idle. ``organism.idle()`` waits for these copies too. They are
known by spore id, so what other processes publish to the same queues (and redeliveries)
count nothing here. A copy that never comes back (another process's consumer took it,
or the broker dropped it: a queue bound, an expiry) is let go once the hosted agents'
queues hold nothing for any consumer. The record is bounded (``MAX_EXPECTED``, the oldest
forgotten first, as copies other processes take pile up while nobody waits): once it
forgot some, only the queues let ``idle()`` return.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

__all__ = ["MAX_EXPECTED", "ExpectedBack"]

MAX_EXPECTED = 10_000  # ids: some 1 MB at most


class ExpectedBack:
    """Spore id -> copies published to agents hosted here and not consumed back yet."""

    def __init__(self) -> None:
        self._copies: Counter[str] = Counter()
        self._forgot = False  # some dropped by the bound: the queues must say they left

    def __bool__(self) -> bool:
        """Whether copies may still come back (or an idle() must ask the queues)."""
        return bool(self._copies) or self._forgot

    @property
    def total(self) -> int:
        return self._copies.total()

    def published(self, spore_id: str, copies: int) -> None:
        book = self._copies
        if len(book) >= MAX_EXPECTED and spore_id not in book:
            del book[next(iter(book))]
            self._forgot = True
        book[spore_id] += copies

    def came_back(self, spore_id: object, copies: int = 1) -> None:
        """One of ours arrived (another's, or a redelivery of one already back: nothing)."""
        if type(spore_id) is not str:
            return
        left = self._copies.get(spore_id)
        if left is not None:
            if left > copies:
                self._copies[spore_id] = left - copies
            else:
                del self._copies[spore_id]

    async def gone_elsewhere(self, queues: Iterable[str],
                             waiting: Callable[[str], Awaitable[int | None]],
                             still_idle: Callable[[], bool]) -> bool:
        """Whether the copies still expected have left ``queues`` for good: each holds no
        message for any consumer, with the process still idle, twice in a row (a
        delivery already on its way here is seen by the second look). Then they are let
        go."""
        names = list(queues)
        for _ in range(2):
            for queue in names:
                if await waiting(queue) != 0:
                    return False
            if not still_idle():
                return False
        self._copies.clear()
        self._forgot = False
        return True
