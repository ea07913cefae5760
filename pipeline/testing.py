"""Test your own organisms: an in-memory organism, a virtual clock, captured outputs.

In the spirit of FastStream's ``TestBroker``::

    from sporeflow.testing import TestOrganism

    async def test_greeter_greets() -> None:
        async with TestOrganism("organism.yaml") as t:
            await t.send("greeter", {"name": "Ada"})
            await t.idle()
            assert t.knowledge("greeter") == [{"text": "hello, Ada"}]
            assert t.dead_letters == []

The organism runs in this process on the memory backend, without its journal, whatever
its file says. Nothing happens that the test does not send: no boot spores and no
declared sources unless ``boot=True`` (so an http source's token need not be set).

Time is virtual: :class:`VirtualClock` is the organism's wall clock (``now``) and,
while the organism runs, the event loop's: both stand still until
:meth:`TestOrganism.advance`, which fires each timer due on the way at its own time, so
expiry, retry backoff and handler timeouts see the same time and never real time. An
hour of backoff is ``await t.advance(3600)``, not an hour. (The loop's ``time`` and
``call_at`` are replaced on the running loop, asyncio's own, and put back at the end;
``idle`` and ``request`` give up after real seconds, as the loop's clock stands still.)
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import heapq
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence, Sized
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sporeflow.config import (
    OrganismStateError,
    StageSpec,
    load_organism,
    organism_from_dict,
)
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.organism import Organism
from sporeflow.steps import Spore

__all__ = ["TestOrganism", "VirtualClock"]

T = TypeVar("T")
_SETTLE_TURNS = 100_000  # turns of the loop one settling may take: a backstop
_SETTLE_REAL_S = 10.0  # seconds of real time one settling waits for handlers on threads


class VirtualClock:
    """Wall-clock time that moves only by :meth:`advance`, and the event loop's clock
    frozen with it while :meth:`attached <attach>` to a loop: a timer (a retry's backoff,
    a handler's timeout, a handler's own ``asyncio.sleep``) fires only when
    :meth:`advance` reaches it, and each one it passes fires at its own time, in order,
    with the loop running what that set off before the next (a retry that fails again
    within the span is retried again within it).

    ``start`` (default: the real time when it is made) is what :meth:`now` reads first.
    """

    def __init__(self, start: datetime | None = None, *,
                 off_loop: Callable[[], int] = lambda: 0) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError(f"start must be timezone-aware, got {start!r}; "
                             f"use datetime(..., tzinfo=UTC)")
        self._start = start or datetime.now(UTC)
        self.offset = 0.0  # seconds advanced in all
        self._off_loop = off_loop  # work running off the loop (threads): waited for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origin = 0.0  # the loop's time when attached
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []  # a heap
        self._numbers = itertools.count()

    def now(self) -> datetime:
        """The virtual wall-clock time (timezone-aware UTC): an organism's ``now``."""
        return self._start + timedelta(seconds=self.offset)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Freeze ``loop``'s clock and keep track of its timers, so that :meth:`advance`
        fires them. Before the organism starts, which reads the loop's clock."""
        if self._loop is not None or "time" in vars(loop):
            raise OrganismStateError("the event loop runs on a virtual clock already; "
                                     "one TestOrganism at a time per loop")
        self._origin = origin = loop.time()
        scheduled, timers, numbers = loop.call_at, self._timers, self._numbers

        def call_at(when: float, callback: Callable[..., object], *args: Any,
                    context: contextvars.Context | None = None) -> asyncio.TimerHandle:
            handle = scheduled(when, callback, *args, context=context)
            heapq.heappush(timers, (when, next(numbers), handle))
            return handle

        try:
            loop.time = lambda: origin + self.offset  # type: ignore[method-assign]
            loop.call_at = call_at  # type: ignore[method-assign, assignment]  # call_later too
        except AttributeError:  # a loop in C (uvloop): its clock cannot be moved
            raise OrganismStateError(
                f"the virtual clock needs asyncio's own event loop, not "
                f"{type(loop).__name__}; run the test on asyncio's") from None
        self._loop = loop

    def thaw(self) -> None:
        """Let the loop's clock run on in real time from where it stands (for a stop,
        whose drain waits in real time)."""
        loop = self._loop
        if loop is not None:
            real = type(loop).time
            shift = self._origin + self.offset - real(loop)
            loop.time = lambda: real(loop) + shift  # type: ignore[method-assign]

    def detach(self) -> None:
        """Give the loop its own clock back (what was advanced stays advanced here)."""
        if self._loop is not None:
            del self._loop.time
            del self._loop.call_at
            self._loop = None
            self._timers.clear()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing each timer due on the way at its own
        time; follow with ``await t.idle()`` for what they set off to finish."""
        if seconds < 0:
            raise ValueError(f"time only moves forward; got advance({seconds!r})")
        target = self.offset + seconds
        await self._settle()
        while (due := self._next_due(self._origin + target)) is not None:
            self.offset = max(self.offset, due - self._origin)
            await self._settle()
        self.offset = target
        await self._settle()

    def _next_due(self, limit: float) -> float | None:
        """When the first pending timer at or before ``limit`` is due (those due by now
        have fired as the loop settled)."""
        timers, now = self._timers, self._origin + self.offset
        while timers and (timers[0][2].cancelled() or timers[0][0] <= now):
            heapq.heappop(timers)
        return timers[0][0] if timers and timers[0][0] <= limit else None

    async def _settle(self) -> None:
        """Run the loop until all it holds waits: on a timer, a socket or a thread; a
        handler running on a thread is waited for (up to ``_SETTLE_REAL_S``)."""
        loop = asyncio.get_running_loop()
        # What is ready to run, read off asyncio's own loop (attach refuses others): no
        # public API tells whether a turn of the loop would do anything.
        ready: Sized = getattr(loop, "_ready", ())
        give_up = time.monotonic() + _SETTLE_REAL_S
        turns = 0
        while turns < _SETTLE_TURNS and time.monotonic() < give_up:
            await asyncio.sleep(0)
            turns += 1
            if len(ready):
                continue
            if not self._off_loop():
                return
            await loop.run_in_executor(None, time.sleep, 0.001)  # real time, for the thread


async def _within_real(work: Awaitable[T], seconds: float, why: Callable[[], str]) -> T:
    """``work``'s result, or TimeoutError(``why()``) after ``seconds`` of real time: the
    loop's own timers stand still under the virtual clock."""
    task = asyncio.ensure_future(work)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = threading.Timer(seconds, asyncio.get_running_loop().call_soon_threadsafe,
                            (expire,))
    timer.daemon = True
    timer.start()
    try:
        return await task
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError(why()) from None
        raise
    finally:
        timer.cancel()
        task.cancel()


class _Capture(LedgerHook):
    """What each agent handled and produced, and what went out on each channel."""

    def __init__(self) -> None:
        self.finished: dict[str, list[Spore]] = {}
        self.produced: dict[str, list[Spore]] = {}
        self.on_channel: dict[str, list[Spore]] = {}

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        if agent is not None:  # sent by a handler (ctx.send, ctx.broadcast...)
            self.produced.setdefault(agent, []).extend(spores)
        self._broadcast(spores)

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        self.finished.setdefault(agent, []).append(spore)
        self.produced.setdefault(agent, []).extend(replies)
        self._broadcast(replies)

    def _broadcast(self, spores: Sequence[Spore]) -> None:
        for spore in spores:
            if spore.to_agent is None:
                self.on_channel.setdefault(spore.channel, []).append(spore)


class TestOrganism:
    """An organism under test: ``async with TestOrganism(file_or_dict) as t:``.

    ``source`` is an organism file's path, or a dict shaped like one (handlers may be
    callables; ``base_dir`` is where its handler modules and schemas are found).
    ``start`` is the virtual clock's first reading; ``stages`` are extra chain stages.
    """

    __test__ = False  # a helper, not a test class for pytest to collect

    def __init__(self, source: str | Path | Mapping[str, Any], *,
                 base_dir: str | Path = ".", start: datetime | None = None,
                 boot: bool = False, stages: Sequence[StageSpec] = ()) -> None:
        spec = (organism_from_dict(source, base_dir=base_dir) if isinstance(source, Mapping)
                else load_organism(source))
        self.clock = VirtualClock(start, off_loop=lambda: self.organism.threads_running())
        self.organism = Organism(dataclasses.replace(spec, journal=None), now=self.clock.now,
                                 backend="memory", stages=stages)
        self._boot = boot
        self._capture = _Capture()
        self.organism.add_hook(self._capture)

    async def __aenter__(self) -> TestOrganism:
        self.clock.attach(asyncio.get_running_loop())
        try:
            await self.organism.start(boot=self._boot)
        except BaseException:
            self.clock.detach()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        self.clock.thaw()  # the drain's timeout is real time
        try:
            await self.organism.stop(drain_timeout=5.0)
        finally:
            self.clock.detach()

    # -- acting -------------------------------------------------------------------------

    async def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "test",
                   **options: Any) -> Spore:
        """Send ``knowledge`` to ``to_agent`` (options as :meth:`Organism.send`)."""
        return await self.organism.send(to_agent, knowledge, sender=sender, **options)

    async def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                        sender: str = "test", **options: Any) -> Spore:
        """Broadcast ``knowledge`` on ``channel``."""
        return await self.organism.broadcast(knowledge, channel=channel, sender=sender,
                                             **options)

    async def request(self, to_agent: str, knowledge: dict[str, Any], *,
                      timeout: float = 10.0, sender: str = "test") -> Spore:
        """Ask ``to_agent`` and return its response spore. ``timeout`` is virtual (as
        the organism's timers are) and, as a backstop, real time too."""
        asked = self.organism.request(to_agent, knowledge, timeout=timeout, sender=sender)
        return await _within_real(asked, timeout, lambda: (
            f"TestOrganism.request({to_agent!r}): no response within {timeout:g}s of real "
            f"time, and the virtual clock did not reach its timeout; move it with "
            f"`await t.advance(seconds)`"))

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued or in flight; ``timeout`` (seconds of real time,
        as the virtual clock stands still) is a backstop against a test that would hang:
        past it, TimeoutError says what is still held."""
        await _within_real(self.organism.idle(), timeout, lambda: self._still_held(timeout))

    def _still_held(self, timeout: float) -> str:
        stats = self.organism.stats()
        busy = [f"{name}: {agent['queued']} queued, {agent['in_flight']} running"
                for name, agent in stats["agents"].items()
                if agent["queued"] or agent["in_flight"]]
        where = "; ".join(busy) or "none queued or running: waiting for a retry or a timer"
        return (f"TestOrganism.idle(): {stats['totals']['held']} spore(s) still held after "
                f"{timeout:g}s of real time ({where}). Retries' backoff, timeouts and expiry "
                f"wait on the virtual clock: move it with `await t.advance(seconds)` first")

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (see :class:`VirtualClock`)."""
        await self.clock.advance(seconds)

    def now(self) -> datetime:
        """The virtual clock's time."""
        return self.clock.now()

    # -- what happened ------------------------------------------------------------------

    def handled(self, agent: str) -> list[Spore]:
        """The spores ``agent``'s handler finished, in order."""
        return list(self._capture.finished.get(agent, ()))

    def outputs(self, agent: str) -> list[Spore]:
        """What ``agent`` produced (returned, yielded or sent), in order."""
        return list(self._capture.produced.get(agent, ()))

    def knowledge(self, agent: str) -> list[dict[str, Any]]:
        """The knowledge of :meth:`outputs`: what a test most often compares."""
        return [spore.knowledge for spore in self.outputs(agent)]

    def broadcasts(self, channel: str) -> list[Spore]:
        """Every spore broadcast on ``channel``, from agents and from the test."""
        return list(self._capture.on_channel.get(channel, ()))

    @property
    def returned(self) -> list[Spore]:
        """Spores addressed to the outside world (to the test as a sender), in order."""
        return list(self.organism.outbox)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, with its reason and error."""
        return list(self.organism.dead_letters)
