"""What was seen lately, bounded in age and in number: :class:`SeenWindow`, keys in the
order they were seen (an agent's dedupe window, ``steps.dedupe``), and
:class:`SeenByTime`, keys with a time of their own, which may come in any order (the
replay guard of signed spores, ``steps.signing``: a signature dated ahead).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["SeenByTime", "SeenWindow"]


class SeenWindow:
    """Keys seen within the last ``window`` seconds, at most ``cap`` of them.

    Kept in the order added: :meth:`forget` drops the front while it is older than the
    window, so keys should be added about in time order. Past ``cap`` the oldest key
    goes early, and :meth:`add` returns its time: a caller that must not let a repeat
    through for want of memory (the replay guard) then distrusts all that old.
    """

    __slots__ = ("_seen", "cap", "window")

    def __init__(self, window: float, cap: int) -> None:
        self.window = window
        self.cap = cap
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def forget(self, now: float) -> None:
        """Drop what was seen more than ``window`` seconds before ``now``."""
        horizon = now - self.window
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= horizon:
                break
            seen.popitem(last=False)

    def add(self, key: Hashable, at: float) -> float | None:
        """Note ``key`` as seen at ``at`` (the newest); return the time of a key dropped
        early to stay within ``cap``, or None."""
        seen = self._seen
        seen[key] = at
        seen.move_to_end(key)  # seen again: it is the newest now
        if len(seen) > self.cap:
            return seen.popitem(last=False)[1]
        return None


class SeenByTime:
    """Keys each with its own time, within ``window`` seconds of now, at most ``cap``:
    forgotten by their time, oldest first, whatever the order they came in. Past ``cap``
    the key of the oldest time goes early, and :meth:`add` returns that time, the
    smallest kept: one key dated ahead never makes the others be distrusted."""

    __slots__ = ("_at", "_by_time", "_order", "cap", "window")

    def __init__(self, window: float, cap: int) -> None:
        self.window = window
        self.cap = cap
        self._at: dict[Hashable, float] = {}
        self._by_time: list[tuple[float, int, Hashable]] = []  # (time, order, key)
        self._order = itertools.count()  # ties in time: the first added goes first

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def forget(self, now: float) -> None:
        """Drop the keys whose time is more than ``window`` seconds before ``now``."""
        horizon = now - self.window
        while self._by_time and self._by_time[0][0] < horizon:
            self._drop()

    def add(self, key: Hashable, at: float) -> float | None:
        """Note ``key`` at time ``at`` (seen again, it keeps its first time); return the
        time of a key dropped early to stay within ``cap``, or None."""
        if key in self._at:
            return None
        self._at[key] = at
        heapq.heappush(self._by_time, (at, next(self._order), key))
        return self._drop() if len(self._at) > self.cap else None

    def _drop(self) -> float:
        at, _, key = heapq.heappop(self._by_time)
        del self._at[key]
        return at
