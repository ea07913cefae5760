"""The chain's source: the ingress lane, the feedback lane, and the count of spores held.

Outside senders ``admit`` into the ingress lane and wait while the organism is
full (a channel's ``capacity`` queued, or ``max_in_flight`` spores held).
Handler replies ``feed`` the feedback lane and never wait: a pump that blocked
on the queue it drains would deadlock. Admission is what bounds memory.

``batches`` hands the chain everything queued, up to ``max_batch``, highest
priority first; at equal priority the feedback lane goes first, so work
already admitted finishes before new work comes in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping

from sporeflow.config.errors import OrganismStateError
from sporeflow.config.model import DEFAULT_CAPACITY
from sporeflow.steps import PRIORITY_MAX, PriorityBuckets, Spore

__all__ = ["Intake"]


class Intake:
    def __init__(
        self, *, max_in_flight: int, capacities: Mapping[str, int],
        default_capacity: int = DEFAULT_CAPACITY, max_batch: int = 512,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.capacities = dict(capacities)
        self.default_capacity = default_capacity
        self.max_batch = max_batch
        self.ingress: PriorityBuckets[Spore] = PriorityBuckets()
        self.feedback: PriorityBuckets[Spore] = PriorityBuckets()
        self.queued_by_channel: dict[str, int] = {}
        self.held = 0  # spores admitted and not yet settled, in lanes, mailboxes or handlers
        self.admitted = 0
        self.fed = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake: asyncio.Future[None] | None = None
        self._senders: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._finished = False

    # -- entering ---------------------------------------------------------------

    def _has_room(self, channel: str) -> bool:
        return (self.held < self.max_in_flight and self.queued_by_channel.get(channel, 0)
                < self.capacities.get(channel, self.default_capacity))

    async def admit(self, spore: Spore) -> None:
        """Queue a spore from outside; wait (in arrival order) while the organism is full."""
        if self._closed:
            raise OrganismStateError("the organism is stopping; it admits no new spores")
        if self._senders or not self._has_room(spore.channel):
            await self._wait_for_room(spore.channel)
        self._push_ingress(spore)

    def try_admit(self, spore: Spore) -> bool:
        """Admit without waiting if there is room and nobody waits before us."""
        # The hot path of every outside send: _has_room and _push_ingress, inlined.
        if self._closed or self._senders or self.held >= self.max_in_flight:
            return False
        channel = spore.channel
        queued = self.queued_by_channel.get(channel, 0)
        if queued >= self.capacities.get(channel, self.default_capacity):
            return False
        self.ingress.push(spore.priority, spore)
        self.queued_by_channel[channel] = queued + 1
        self.admitted += 1
        self._hold(1)
        return True

    def _push_ingress(self, spore: Spore) -> None:
        self.ingress.push(spore.priority, spore)
        self.queued_by_channel[spore.channel] = self.queued_by_channel.get(spore.channel, 0) + 1
        self.admitted += 1
        self._hold(1)

    async def _wait_for_room(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiter = loop.create_future()
            self._senders.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._senders:
                    self._senders.remove(waiter)
                else:
                    self._wake_senders(1)  # pass on the turn we were given
                raise
            if self._closed:
                raise OrganismStateError("the organism is stopping; it admits no new spores")
            if self._has_room(channel):
                return

    def configure(self, *, max_in_flight: int, capacities: Mapping[str, int]) -> None:
        """Apply new admission limits (a reload); waiting senders look for room again."""
        self.max_in_flight = max_in_flight
        self.capacities = dict(capacities)
        self.settle(0)

    def feed(self, spores: Iterable[Spore]) -> None:
        """Queue spores made inside (replies, broker deliveries, replays); never waits.

        They are not checked yet: a priority out of range is queued as the highest, so
        that the validate stage refuses it first thing.
        """
        count = 0
        push = self.feedback.push
        for spore in spores:
            priority = spore.priority
            push(priority if priority.__class__ is int and 0 < priority <= PRIORITY_MAX
                 else PRIORITY_MAX, spore)
            count += 1
        if count:
            self.fed += count
            self._hold(count)

    def _hold(self, count: int) -> None:
        if not self.held:
            self._idle.clear()
        self.held += count
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def fanout(self, extra: int) -> None:
        """A broadcast became several deliveries: each is settled on its own."""
        if not self.held:
            self._idle.clear()
        self.held += extra

    def settle(self, count: int = 1) -> None:
        """``count`` spores (or deliveries) are finished: handled, rejected or returned."""
        self.held -= count
        if not self.held:
            self._idle.set()
        if self._senders and self.held < self.max_in_flight:
            self._wake_senders(self.max_in_flight - self.held)

    def _wake_senders(self, count: int) -> None:
        """Let up to ``count`` waiting senders re-check for room, oldest first."""
        senders = self._senders
        while senders and count > 0:
            waiter = senders.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    # -- leaving ------------------------------------------------------------------

    async def idle(self) -> None:
        """Return once nothing is queued or in flight."""
        while self.held:
            await self._idle.wait()

    async def batches(self) -> AsyncIterator[list[Spore]]:
        """Yield everything queued, in batches, highest priority first; end once closed."""
        loop = asyncio.get_running_loop()
        feedback, ingress = self.feedback, self.ingress
        while True:
            while not feedback and not ingress:
                if self._finished:
                    return
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            yield self._take()

    def _take(self) -> list[Spore]:
        batch: list[Spore] = []
        feedback, ingress, limit = self.feedback, self.ingress, self.max_batch
        while len(batch) < limit and (feedback or ingress):
            top_feedback, top_ingress = feedback.top(), ingress.top()
            if top_feedback >= top_ingress:
                feedback.take(top_feedback, limit - len(batch), batch)
            else:
                start = len(batch)
                ingress.take(top_ingress, limit - len(batch), batch)
                counts = self.queued_by_channel
                for spore in batch[start:]:
                    counts[spore.channel] -= 1
                if self._senders:
                    self._wake_senders(len(batch) - start)
        return batch

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new outside spores; replies are still taken so work can finish."""
        self._closed = True
        for waiter in self._senders:
            if not waiter.done():
                waiter.set_result(None)
        self._senders.clear()

    def finish(self) -> list[Spore]:
        """End the source and return what was still queued, for the dead letters."""
        self._finished = True
        left = self.feedback.clear() + self.ingress.clear()
        self.queued_by_channel.clear()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return left
