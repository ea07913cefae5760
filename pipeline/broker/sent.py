"""Outside spores sent over a broker and not yet out of this process:
:meth:`SentSpores.confirmed`, what ``organism.confirmed()`` waits for over a broker.

While the link is up, ``send()`` returns once its spore is admitted (as on the embedded
path), and publishing goes on behind it. ``confirmed()`` returns once every spore sent
before the call has left the process: confirmed by the broker, or refused here by the
organism's own rules (a dead letter). It raises :class:`BrokerError` if any spore sent
since the last ``confirmed()`` could not be published, or was still unpublished when the
bridge closed (each is a dead letter saying why), so a sender that acknowledges upstream
after ``confirmed()`` never acknowledges one it lost.

Spores are known by their ``id`` (what survives the intake paging one out to disk and
back, which makes a new object), numbered as they are sent; the oldest still out
decides who may return.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from sporeflow.config import BrokerError
from sporeflow.steps import Spore

__all__ = ["SentSpores"]


class SentSpores:
    """The outside spores sent and not yet out, by number; see the module docstring."""

    def __init__(self, address: str) -> None:
        self.address = address  # the broker's, masked: for the error
        self._numbers: dict[int, None] = {}  # the numbers still out, oldest first
        self._by_id: dict[str, deque[int]] = {}  # a spore id -> its numbers still out
        self._numbered = 0
        self._unpublished = 0  # since the last confirmed() returned
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def sent(self, spores: Iterable[Spore]) -> None:
        """Spores from outside were admitted."""
        for spore in spores:
            self._numbered += 1
            self._numbers[self._numbered] = None
            self._by_id.setdefault(spore.id, deque()).append(self._numbered)

    def left(self, spore: Spore, failure: BaseException | None) -> None:
        """``spore`` left the process: confirmed (``failure`` None), or not published."""
        numbers = self._by_id.get(spore.id)
        if numbers is None:
            return
        del self._numbers[numbers.popleft()]
        if not numbers:
            del self._by_id[spore.id]
        if failure is not None:
            self._unpublished += 1
        if self._waiters:
            self._wake()

    async def confirmed(self) -> None:
        """Return once every spore sent so far has left; see the module docstring."""
        mark = self._numbered
        if self._oldest() <= mark:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((mark, waiter))
            await waiter
        failed, self._unpublished = self._unpublished, 0
        if failed:
            raise BrokerError(f"{failed} spore(s) sent were not published to RabbitMQ at "
                              f"{self.address}: each is a dead letter saying why (see "
                              f"organism.dead_letters, or `sporeflow dlq list`)")

    async def gone(self, spore_id: str) -> None:
        """Return once spore ``spore_id`` (and those sent before it) left; unlike
        :meth:`confirmed`, raise nothing and keep the count of spores not published for
        the sender that asks ``confirmed()`` (its own spore's fate is its own to read)."""
        numbers = self._by_id.get(spore_id)
        if numbers is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((numbers[-1], waiter))
        await waiter

    def release(self) -> None:
        """The bridge closed: what is still out will never be published."""
        self._unpublished += len(self._numbers)
        self._numbers.clear()
        self._by_id.clear()
        self._wake()

    def _oldest(self) -> float:
        return next(iter(self._numbers), float("inf"))

    def _wake(self) -> None:
        oldest = self._oldest()
        waiting = []
        for mark, waiter in self._waiters:
            if mark < oldest:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((mark, waiter))
        self._waiters = waiting
