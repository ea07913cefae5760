"""A set of names learned from input, bounded: :class:`RecentNames`.

Outside senders (any name a caller passes as ``sender``) and a broker's foreign agents
are remembered so that what goes back to them is returned rather than refused. Each
new name costs memory, and anyone may send under any name: past ``cap`` names, the
least recently seen is forgotten. A forgotten sender that sends again is remembered
again; a reply to it meanwhile is refused as addressed to an unknown agent (a dead
letter, like any refusal).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Iterable

__all__ = ["OneMore", "RecentNames"]


class RecentNames(set[str]):
    """A ``set`` of at most ``cap`` names besides the ``pinned`` ones, which stay.

    Membership is the plain set's (it is on the hot path of every send); :meth:`add`
    keeps the order of use, and past ``cap`` forgets the least recently added name.
    ``forgotten`` counts the names forgotten so; ``full`` is True once a new name
    forgets another (then callers add a name again as they see it, to keep it recent).
    """

    __slots__ = ("_order", "_pinned", "cap", "forgotten", "full")

    def __init__(self, pinned: Iterable[str] = (), *, cap: int) -> None:
        super().__init__(pinned)
        self._pinned = frozenset(self)
        self._order: OrderedDict[str, None] = OrderedDict()
        self.cap = cap
        self.forgotten = 0
        self.full = False

    def add(self, name: str) -> None:
        """Remember ``name`` as the most recently seen (a pinned name stays as it is)."""
        if name in self._pinned:
            return
        order = self._order
        if name in order:
            order.move_to_end(name)
            return
        super().add(name)
        order[name] = None
        while len(order) > self.cap:
            old, _ = order.popitem(last=False)
            super().discard(old)
            self.forgotten += 1
        self.full = len(order) >= self.cap

    def discard(self, name: object) -> None:
        if name not in self._pinned and isinstance(name, str):
            super().discard(name)
            self._order.pop(name, None)
            self.full = len(self._order) >= self.cap

    def remove(self, name: object) -> None:
        if name not in self:
            raise KeyError(name)
        self.discard(name)

    def clear(self) -> None:
        super().clear()
        super().update(self._pinned)
        self._order.clear()
        self.full = False


class OneMore(Container[str]):
    """``names`` and one more ``name``, for one check, without copying ``names``."""

    __slots__ = ("name", "names")

    def __init__(self, names: Container[str], name: str) -> None:
        self.names = names
        self.name = name

    def __contains__(self, item: object) -> bool:
        return item == self.name or item in self.names
