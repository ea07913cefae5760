"""Priority buckets: higher priority first, FIFO within a priority, O(1) per item.

A heap would cost a tuple and a log-time sift per spore; priorities are a small
fixed range (1..10), so one deque per priority is both simpler and faster. The
highest non-empty bucket is kept at hand, and emptied deques are kept for reuse:
a mailbox that goes empty and full again per spore allocates nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, TypeVar

__all__ = ["PriorityBuckets"]

T = TypeVar("T")
_NO_BOX: deque[Any] = deque(maxlen=0)  # stays empty: an append to it would be dropped


class PriorityBuckets(Generic[T]):
    __slots__ = ("_boxes", "_top", "_top_box", "size")

    def __init__(self) -> None:
        self._boxes: dict[int, deque[T]] = {}
        # How many items are held: read it, never write it. Hot loops read ``size``
        # rather than call len(), which costs a Python-level __len__ each time.
        self.size = 0
        self._top = 0  # the highest priority holding an item, while size > 0
        # The box of ``_top``; while nothing was pushed, one empty box shared by every
        # instance (read, never written: push replaces it), as an empty deque costs
        # about 600 bytes and an organism holds one of these per agent.
        self._top_box: deque[T] = _NO_BOX

    def __len__(self) -> int:
        return self.size

    def push(self, priority: int, item: T) -> None:
        box = self._boxes.get(priority)
        if box is None:
            box = self._boxes[priority] = deque()
        box.append(item)
        self.size += 1
        if priority > self._top or self.size == 1:
            self._top, self._top_box = priority, box

    def push_first(self, priority: int, item: T) -> None:
        """Put ``item`` back before the others of its priority (it was taken out early)."""
        box = self._boxes.get(priority)
        if box is None:
            box = self._boxes[priority] = deque()
        box.appendleft(item)
        self.size += 1
        if priority > self._top or self.size == 1:
            self._top, self._top_box = priority, box

    def top(self) -> int:
        """The highest priority held (0 when empty)."""
        return self._top if self.size else 0

    def pop(self) -> T:
        """Remove and return the oldest item of the highest priority (IndexError if empty)."""
        item = self._top_box.popleft()
        self.size -= 1
        if not self._top_box and self.size:
            self._find_top()
        return item

    def _find_top(self) -> None:
        self._top = max(p for p, box in self._boxes.items() if box)
        self._top_box = self._boxes[self._top]

    def take(self, priority: int, limit: int, into: list[T]) -> None:
        """Move up to ``limit`` items of ``priority`` into ``into``, oldest first."""
        box = self._boxes[priority]
        count = min(limit, len(box))
        if count == len(box):
            into.extend(box)
            box.clear()
        else:
            popleft = box.popleft
            into.extend(popleft() for _ in range(count))
        self.size -= count
        if self.size and priority == self._top and not box:
            self._find_top()

    def items(self) -> list[T]:
        """Everything held, highest priority first, oldest first within one; kept."""
        return [item for p in sorted(self._boxes, reverse=True) for item in self._boxes[p]]

    def clear(self) -> list[T]:
        """Remove and return everything, highest priority first."""
        items = [item for p in sorted(self._boxes, reverse=True) for item in self._boxes[p]]
        for box in self._boxes.values():
            box.clear()
        self.size = 0
        return items
