"""What was seen lately: :class:`SeenWindow`, keys with the time each was seen, bounded
in age and in number. The replay guard of signed spores (``steps.signing``) and an
agent's dedupe window (``steps.dedupe``) both keep one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["SeenWindow"]


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
