"""Priority buckets: higher priority first, FIFO within a priority, O(1) per item.

A heap would cost a tuple and a log-time sift per spore; priorities are a small
fixed range (1..10), so one deque per priority in use is both simpler and faster.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["PriorityBuckets"]

T = TypeVar("T")


class PriorityBuckets(Generic[T]):
    __slots__ = ("_boxes", "_size")

    def __init__(self) -> None:
        self._boxes: dict[int, deque[T]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, priority: int, item: T) -> None:
        box = self._boxes.get(priority)
        if box is None:
            box = self._boxes[priority] = deque()
        box.append(item)
        self._size += 1

    def top(self) -> int:
        """The highest priority held (0 when empty)."""
        boxes = self._boxes
        if not boxes:
            return 0
        return max(boxes) if len(boxes) > 1 else next(iter(boxes))

    def pop(self) -> T:
        boxes = self._boxes
        priority = next(iter(boxes)) if len(boxes) == 1 else max(boxes)
        box = boxes[priority]
        item = box.popleft()
        if not box:
            del boxes[priority]
        self._size -= 1
        return item

    def take(self, priority: int, limit: int, into: list[T]) -> None:
        """Move up to ``limit`` items of ``priority`` into ``into``, oldest first."""
        box = self._boxes[priority]
        count = min(limit, len(box))
        if count == len(box):
            into.extend(box)
            del self._boxes[priority]
        else:
            popleft = box.popleft
            into.extend(popleft() for _ in range(count))
        self._size -= count

    def clear(self) -> list[T]:
        """Remove and return everything, highest priority first."""
        items = [item for p in sorted(self._boxes, reverse=True) for item in self._boxes[p]]
        self._boxes.clear()
        self._size = 0
        return items
