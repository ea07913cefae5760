"""The chain's source: the ingress lane, the feedback lane, and the count of spores held.

Outside senders ``admit`` into the ingress lane and wait while the organism is
full: ``max_in_flight`` spores held, a channel's ``capacity`` queued here, or a
target agent's mailbox holding that many. Waiting senders are admitted in arrival
order: one that finds no room when its turn comes keeps its place, and a new sender
never overtakes those waiting.

Handler replies ``feed`` the feedback lane and never wait: a pump that blocked
on the queue it drains would deadlock. Past ``max_in_memory`` spores held, what is
fed is paged out to disk (:mod:`.spill`) and read back as memory frees up, so
memory stays bounded whatever the handlers produce. A spore read back is a new
object: it keeps its holder's mark (``steps.mark_of``: the broker bridge's key) and
loses its checked mark (the chain checks it again).

``batches`` hands the chain everything queued, up to ``max_batch``, highest
priority first; at equal priority the feedback lane goes first, so work
already admitted finishes before new work comes in.

``held_for`` tells a reload that removes agents what is queued here for them (and,
as they are read back, what is paged out): the run still owes those spores to them
(``core.owed``). An outside sender that waited for room is asked again (``admit``'s
``recheck``) whether its spore may still enter.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any

from sporeflow.config.errors import OrganismStateError
from sporeflow.config.model import DEFAULT_CAPACITY
from sporeflow.pipeline.core.spill import SpillFile
from sporeflow.pipeline.core.wiring import WiringCell
from sporeflow.steps import PRIORITY_MAX, AgentLane, PriorityBuckets, Spore, SporeType

__all__ = ["Intake"]

_NEVER_PAGED = frozenset({SporeType.REQUEST, SporeType.RESPONSE})
_REFILL = 4096  # spores read back from disk at a time
_RESPONSE = SporeType.RESPONSE

# Told of spores read back that were paged out before a reload removed their agent
# (and True once the last of them is read back): see Intake.held_for.
ReadBack = Callable[[list[Spore], bool], None]


class Intake:
    def __init__(
        self, *, max_in_flight: int, capacities: Mapping[str, int],
        default_capacity: int = DEFAULT_CAPACITY, max_batch: int = 512,
        max_in_memory: int | None = None, wiring: WiringCell | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_in_memory = max_in_memory
        self.wiring = wiring  # where the targets' lanes are; None: mailboxes not counted
        self.spill = SpillFile()
        self._paged_in = asyncio.Event()  # set while nothing is paged out
        self._paged_in.set()
        self._pausing = 0  # handlers waiting in paged_in
        self.capacities = dict(capacities)
        self.default_capacity = default_capacity
        self.max_batch = max_batch
        self.ingress: PriorityBuckets[Spore] = PriorityBuckets()
        self.feedback: PriorityBuckets[Spore] = PriorityBuckets()
        self.queued_by_channel: dict[str, int] = {}
        self.held = 0  # spores admitted and not yet settled, in lanes, mailboxes or handlers
        self.admitted = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake: asyncio.Future[None] | None = None
        # Waiting outside senders, oldest first; a woken one stays queued until admitted.
        self._senders: deque[list[asyncio.Future[None]]] = deque()
        self._asleep = 0  # senders in the queue not yet woken
        self._closed = False
        self._finished = False
        # (position in the spill up to which, agent names, whom to tell): see held_for.
        self._owed_paged: list[tuple[int, frozenset[str], ReadBack]] = []

    # -- entering ---------------------------------------------------------------

    def _has_room(self, spore: Spore) -> bool:
        channel = spore.channel
        if not (self.held < self.max_in_flight and self.queued_by_channel.get(channel, 0)
                < self.capacities.get(channel, self.default_capacity)):
            return False
        if self.wiring is None:
            return True
        full = self._full_target(spore, self.capacities.get(channel, self.default_capacity)
                                 - self.queued_by_channel.get(channel, 0))
        if full is not None:
            self._wait_on(full, self.capacities.get(channel, self.default_capacity))
            return False
        return True

    def _full_target(self, spore: Spore, room: int) -> AgentLane | None:
        """A lane the outside ``spore`` would go to whose mailbox holds ``room`` spores
        or more (a channel's capacity counts its spores here and in mailboxes)."""
        assert self.wiring is not None
        snapshot = self.wiring.current
        if spore.to_agent is not None:
            lane = snapshot.lanes.get(spore.to_agent)
            return lane if lane is not None and lane.backlog.size >= room else None
        for lane in snapshot.channel_lanes.get(spore.channel, ()):
            if lane.backlog.size >= room:
                return lane
        return None

    def _wait_on(self, lane: AgentLane, capacity: int) -> None:
        """Be told when ``lane``'s mailbox is down to half of ``capacity``: waking at
        every spore it takes would make senders and lane trade single spores."""
        lane.room_at = capacity // 2
        lane.on_room = self._room_freed

    async def admit(self, spore: Spore,
                    recheck: Callable[[Spore], None] | None = None) -> None:
        """Queue a spore from outside; wait (in arrival order) while the organism is full.
        Then ``recheck`` may raise why the spore may no longer enter (a reload removed its
        recipient since it was screened): then nothing is admitted."""
        if self._closed:
            raise OrganismStateError("the organism is stopping; it admits no new spores")
        waited = bool(self._senders or not self._has_room(spore))
        if waited:
            await self._wait_for_room(spore)
        if recheck is not None:  # screened when sent, perhaps before a reload
            try:
                recheck(spore)
            except BaseException:
                if waited:
                    self._room_freed()  # the room this sender found is the next one's
                raise
        self._push_ingress(spore)

    def try_admit(self, spore: Spore) -> bool:
        """Admit without waiting if there is room and nobody waits before us."""
        # The hot path of every outside send: _has_room and _push_ingress, inlined.
        if self._closed or self._senders or self.held >= self.max_in_flight:
            return False
        channel = spore.channel
        queued = self.queued_by_channel.get(channel, 0)
        capacity = self.capacities.get(channel, self.default_capacity)
        if queued >= capacity:
            return False
        wiring = self.wiring
        if wiring is not None:
            to = spore.to_agent
            if to is not None:  # _full_target's direct case, inlined
                lane = wiring.current.lanes.get(to)
                if lane is None:  # no lane: perhaps removed since it was screened
                    if to in wiring.current.table.removed:
                        return False  # admit() asks its recheck
                elif lane.backlog.size >= capacity - queued:
                    self._wait_on(lane, capacity)
                    return False
            elif (full := self._full_target(spore, capacity - queued)) is not None:
                self._wait_on(full, capacity)
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

    async def _wait_for_room(self, spore: Spore) -> None:
        """Wait for our turn and room. Our place in the queue is kept from the first wait
        to admission: woken without room, we wait again where we were."""
        loop = asyncio.get_running_loop()
        place: list[asyncio.Future[None]] = [loop.create_future()]
        self._senders.append(place)
        self._asleep += 1
        try:
            while True:
                try:
                    await place[0]
                except asyncio.CancelledError:
                    if place[0].done() and not place[0].cancelled():
                        self._wake_senders(1, after=place)  # pass on the turn we were given
                    else:
                        self._asleep -= 1
                    raise
                if self._closed:
                    raise OrganismStateError(
                        "the organism is stopping; it admits no new spores")
                if self._has_room(spore):
                    return
                place[0] = loop.create_future()
                self._asleep += 1
                self._wake_senders(1, after=place)  # pass the turn on to the next in line
        finally:
            self._senders.remove(place)

    def _room_freed(self) -> None:
        if self._asleep:
            self._wake_senders(1)

    def configure(self, *, max_in_flight: int, capacities: Mapping[str, int]) -> None:
        """Apply new admission limits (a reload); waiting senders look for room again."""
        self.max_in_flight = max_in_flight
        self.capacities = dict(capacities)
        self.settle(0)

    def feed(self, spores: Sequence[Spore]) -> None:
        """Queue spores made inside (replies, broker deliveries, replays); never waits.

        They are not checked yet: a priority out of range is queued as the highest, so
        that the validate stage refuses it first thing. What would take memory past
        ``max_in_memory``, the whole of a long list of replies included, is paged out.
        """
        limit = self.max_in_memory
        if limit is not None and (self.held + len(spores) > limit or self.spill.count):
            self._feed_paged(list(spores), limit)
            return
        count = self._push_feedback(spores)
        if count:
            self._hold(count)

    def _push_feedback(self, spores: Iterable[Spore]) -> int:
        count = 0
        push = self.feedback.push
        for spore in spores:
            priority = spore.priority
            push(priority if priority.__class__ is int and 0 < priority <= PRIORITY_MAX
                 else PRIORITY_MAX, spore)
            count += 1
        return count

    def _feed_paged(self, spores: list[Spore], limit: int) -> None:
        """Feed what fits in memory; page the rest out, behind what is paged out already.
        Requests and responses stay in memory: a handler awaiting one holds its spore
        and slot meanwhile, so paging them out could stall the organism."""
        room = 0 if self.spill.count else max(0, limit - (self.held - self.spill.count))
        now, later = spores[:room], list[Spore]()
        for spore in spores[room:]:
            (now if spore.spore_type in _NEVER_PAGED else later).append(spore)
        self._push_feedback(now)
        if later:
            self._push_feedback(self.spill.push(later))
            if self.spill.count:
                self._paged_in.clear()
        self._hold(len(spores))

    def _refill(self) -> None:
        """Read paged-out spores back while memory has room (below half the limit, or
        when the chain has nothing else to do). When there is none and nothing but
        handlers paused in :meth:`paged_in` could make any, they go on (see there)."""
        limit = self.max_in_memory or 0
        room = limit - (self.held - self.spill.count)
        if room > 0 and (room >= limit // 2 or not (self.feedback or self.ingress)):
            first = self.spill.spilled_total - self.spill.count  # the first one's place
            back = self.spill.pop(min(room, _REFILL))
            if self._owed_paged:
                self._paged_back(back, first)
            self._push_feedback(back)
            if not self.spill.count:
                self._paged_in.set()
        elif self._pausing and not (self.feedback or self.ingress) and not self._working():
            self._paged_in.set()  # cleared again by the next spore paged out

    def held_for(self, names: Collection[str], read_back: ReadBack,
                 ) -> tuple[list[Spore], bool]:
        """The spores queued here and not yet taken by the chain that are addressed to
        one of the agents ``names`` (no response: a request's answer goes by its request),
        left in place; and whether some may be paged out. Those paged out now go to
        ``read_back`` as they are read back, True with the last of them. A reload that
        removes agents asks: what was accepted for them is still theirs."""
        wanted = frozenset(names)
        found = [spore for spore in (*self.feedback.items(), *self.ingress.items())
                 if _addressed(spore, wanted)]
        if not self.spill.count:
            return found, False
        self._owed_paged.append((self.spill.spilled_total, wanted, read_back))
        return found, True

    def _paged_back(self, spores: list[Spore], first: int) -> None:
        """Tell ``held_for``'s askers of the spores read back now (``first``: the place of
        ``spores[0]`` among all those ever paged out) that were paged out before they
        asked and are addressed to their agents."""
        for entry in list(self._owed_paged):
            until, names, read_back = entry
            theirs = [spore for spore in spores[:max(0, until - first)]
                      if _addressed(spore, names)]
            last = first + len(spores) >= until
            if theirs or last:
                read_back(theirs, last)
            if last:
                self._owed_paged.remove(entry)

    def _working(self) -> bool:
        """Whether a handler runs holding its slot: one that may settle a spore, and so
        make room, without anything read back. (Each handler that stops running wakes
        the chain: it settles, or it feeds what it waits on, or it pauses here.)"""
        if self.wiring is None:
            return True  # lanes unknown: nothing is released early
        snapshot = self.wiring.current
        return any(lane.busy > lane.stuck
                   for lane in (*snapshot.lanes.values(),
                                *(lane for _, lane in snapshot.retired.lanes)))

    async def paged_in(self, lane: AgentLane,
                       lend: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None,
                       ) -> None:
        """Return once nothing is paged out, ``lane``'s slot lent meanwhile: a handler
        that makes more than memory holds (a stream, a loop of sends) waits here after
        each item, so that it cannot fill the disk alone; its slot serves others.

        Only the handler's own task waits: another (a task it made, each of the sends
        ``asyncio.gather`` awaits at once) holds no slot to lend, and lending one would
        run the agent past its ``concurrency``; waiting without lending could hold the
        slot the spores paged out need. Its spore is sent already: it returns at once.
        ``lend`` lends the slot meanwhile: a handler's ``Context``, which lends it once for
        its requests and this wait together; by default the lane's ``lent_while``.

        The wait never waits on itself: the spores of paused handlers take memory's room,
        and once nothing else runs that could free some, nothing would be read back, so
        the chain lets them go on (``_refill``), their output paged out behind."""
        if self.spill.count and lane.serving():
            self._pausing += 1
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)  # the chain sees whether anything else still runs
            try:
                await (lend or lane.lent_while)(self._paged_in.wait())
            finally:
                self._pausing -= 1

    @property
    def closed(self) -> bool:
        """Stopping: no outside spore is admitted, and sources stop at their next item."""
        return self._closed

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
        elif self.spill.count and (wake := self._wake) is not None and not wake.done():
            wake.set_result(None)  # the chain reads paged-out spores back if there is room
        if self._asleep and self.held < self.max_in_flight:
            self._wake_senders(self.max_in_flight - self.held)

    def _wake_senders(self, count: int, after: list[asyncio.Future[None]] | None = None,
                      ) -> None:
        """Let up to ``count`` waiting senders (those queued behind ``after``, if given)
        re-check for room, oldest first; those already woken are not counted."""
        passed = after is None
        for place in self._senders:
            if not passed:
                passed = place is after
                continue
            if count <= 0:
                return
            waiter = place[0]
            if not waiter.done():
                waiter.set_result(None)
                self._asleep -= 1
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
            if self.spill.count:
                self._refill()
            while not feedback and not ingress:
                if self._finished:
                    return
                if self.spill.count:
                    self._refill()
                    if feedback:
                        break
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
                    left = counts[spore.channel] - 1
                    if left:
                        counts[spore.channel] = left
                    else:  # no key stays behind for a channel name an outside sender made up
                        del counts[spore.channel]
                if self._asleep:
                    self._wake_senders(len(batch) - start)
        return batch

    def waiting(self) -> list[Spore]:
        """Every spore queued here, not yet taken by the chain (those paged out too),
        left in place (for a snapshot): the feedback lane's, the ingress lane's, then
        those paged out, each highest priority first."""
        return self.feedback.items() + self.ingress.items() + self.spill.peek()

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new outside spores; replies are still taken so work can finish."""
        self._closed = True
        for place in self._senders:
            if not place[0].done():
                place[0].set_result(None)
        self._asleep = 0

    def finish(self) -> list[Spore]:
        """End the source and return what was still queued, for the dead letters."""
        self._finished = True
        left = self.feedback.clear() + self.ingress.clear() + self.spill.clear()
        self.spill.close()
        self._owed_paged.clear()
        self._paged_in.set()
        self.queued_by_channel.clear()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return left


def _addressed(spore: Spore, names: frozenset[str]) -> bool:
    """Whether ``spore`` (perhaps not checked yet) goes to one of the agents ``names``."""
    to = spore.to_agent
    return type(to) is str and to in names and spore.spore_type is not _RESPONSE
