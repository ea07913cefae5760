"""A lane's slots lent and held beyond a handler's own run.

A handler waiting on another agent (``ctx.request``, ``ctx.gather``, spores paged out
while it sends) lends its slot (:meth:`SlotLending.lent_while`), so that a responder
on the same lane always finds one; its timeout is paused while it waits to get the slot
back. A sync handler abandoned past its timeout keeps its slot until its thread returns
(:meth:`SlotLending.hold_slot`). :class:`~sporeflow.steps.lanes.AgentLane` is built on
this class; the books (``busy``, ``lent``, ``stuck``) are the lane's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sporeflow.steps.deadlines import DeadlineWatch
    from sporeflow.steps.lanes import LanePolicy

__all__ = ["SlotLending"]

T = TypeVar("T")


class SlotLending:
    """The slot-lending half of an agent's lane."""

    # Its books, set by the lane: ``busy`` slots taken, ``stuck`` by abandoned threads
    # (hold_slot), ``lent`` by handlers waiting on another agent (lent_while), and the
    # handlers waiting in reclaim for a slot, oldest first (``_resumers``).
    __slots__ = ("_resumers", "busy", "lent", "on_lent", "stuck")

    busy: int
    stuck: int
    lent: int
    _resumers: list[asyncio.Future[None]]
    # Told each change of ``lent`` (+1, -1): a broker consumer lets one more delivery in
    # per slot lent, else a request to this agent could wait behind the deliveries whose
    # handlers await it (set by the broker bridge; None: nobody asks).
    on_lent: Callable[[int], None] | None
    # The lane's own, read here.
    policy: LanePolicy
    _running: set[asyncio.Task[Any]]  # runners inside one of the lane's handlers
    _watch: DeadlineWatch  # the timeouts of the handlers running, by task

    def _release(self) -> None:
        raise NotImplementedError  # the lane's: waiting handlers before queued spores

    def _hand_over(self) -> bool:
        """Give a freed slot to the oldest handler waiting in ``reclaim``, if any is still
        waiting (a cancelled one stays queued until its task runs again: skip it)."""
        resumers = self._resumers
        while resumers:
            waiter = resumers.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                self._lend(-1)  # the slot is that handler's again
                return True
        return False

    def _lend(self, change: int) -> None:
        """The one place ``lent`` changes."""
        self.lent += change
        if self.on_lent is not None:
            self.on_lent(change)

    def hold_slot(self) -> Callable[[], None]:
        """Keep one slot taken beyond its handler's end (a thread that ran past its
        timeout still runs it): returns the function that frees it, once."""
        self.busy += 1
        self.stuck += 1
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self.stuck -= 1
                self._release()

        return free

    @property
    def in_flight(self) -> int:
        """Handlers running now: holding a slot, or waiting on a request with it lent."""
        return self.busy - self.stuck + self.lent

    def serving(self) -> bool:
        """Whether the current task runs one of this lane's handlers (a slot to lend)."""
        return asyncio.current_task() in self._running

    def lend(self) -> None:
        """Give a handler's slot back while it waits on another agent; :meth:`reclaim`
        takes it again. The caller lends the slot its handler holds, once."""
        self._lend(1)
        self._release()

    async def lent_while(self, waiting: Awaitable[T]) -> T:
        """``await waiting``, the caller's slot lent meanwhile if it holds one: a handler's
        own task does, not one it made (each of what ``asyncio.gather`` awaits): lending
        a slot it does not hold would run the agent past its ``concurrency``."""
        if not self.serving():
            return await waiting
        self.lend()
        try:
            return await waiting
        finally:
            await self.reclaim()

    async def reclaim(self) -> None:
        """Take a slot again after lending it; waiting handlers go before new spores.

        The wait for the slot is not the handler's own running time: its timeout is
        paused meanwhile. Cancelled while waiting (its timeout, a stop), the handler
        still takes the slot back, over the limit for the moment its run needs to end,
        since the runner frees one slot when it does.
        """
        if self.busy < self.policy.concurrency and not self._resumers:
            self.busy += 1
            self._lend(-1)
            return
        loop = asyncio.get_running_loop()
        running = self._watch.running
        deadline = running.get(asyncio.current_task()) if running else None  # type: ignore[arg-type]
        remaining = None
        if deadline is not None and not deadline.expired() and deadline.when() is not None:
            remaining = deadline.when() - loop.time()  # type: ignore[operator]
            deadline.reschedule(None)
        waiter = loop.create_future()
        self._resumers.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                try:
                    self._resumers.remove(waiter)
                except ValueError:
                    pass  # _hand_over skipped it already
                self.busy += 1
                self._lend(-1)
            raise
        finally:
            if remaining is not None:
                deadline.reschedule(loop.time() + remaining)  # type: ignore[union-attr]
