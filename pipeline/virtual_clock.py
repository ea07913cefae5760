"""The virtual clock a :class:`~sporeflow.testing.TestOrganism` runs on: wall-clock time
that moves only by ``advance``, and the event loop's clock frozen with it, so that expiry,
retry backoff and handler timeouts see the same time and never real time. The loop's
``time`` and ``call_at`` are replaced on the running loop (asyncio's own) and put back at
the end; what must end in real time (``idle``, ``request``, an advance itself) waits on a
thread's timer (:func:`within_real`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sized
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sporeflow.config import OrganismStateError, parse_duration
from sporeflow.config.errors import UsageError

__all__ = ["ADVANCE_REAL_S", "VirtualClock", "within_real"]

logger = logging.getLogger("sporeflow.testing")

T = TypeVar("T")
ADVANCE_REAL_S = 10.0  # seconds of real time one advance may take: a backstop
_POLL_REAL_S = 0.001  # seconds of real time between looks at handlers still on threads
# Real seconds the loop may wait on a timer of the test's own (asyncio.sleep), which the
# held clock never reaches, before the test is told so, once.
HELD_WARN_S = 10.0


class VirtualClock:
    """Wall-clock time that moves only by :meth:`advance`, and the event loop's clock
    frozen with it while :meth:`attached <attach>` to a loop: a timer (a retry's backoff,
    a handler's timeout, a handler's own ``asyncio.sleep``) fires only when
    :meth:`advance` reaches it, and each one it passes fires at its own time, in order,
    with the loop running what that set off before the next (a retry that fails again
    within the span is retried again within it).

    ``start`` (default: the real time when it is made) is what :meth:`now` reads first.
    ``off_loop`` counts the calls running off the loop (sync handlers on their threads)
    that the loop awaits: an advance waits for them before it moves on.
    """

    def __init__(self, start: datetime | None = None, *,
                 off_loop: Callable[[], int] = lambda: 0) -> None:
        if start is not None and start.tzinfo is None:
            raise UsageError(f"start must be timezone-aware, got {start!r}; "
                             f"use datetime(..., tzinfo=UTC)")
        self._start = start or datetime.now(UTC)
        self.offset = 0.0  # seconds advanced in all
        self._off_loop = off_loop
        self._loop: asyncio.BaseEventLoop | None = None
        self._origin = 0.0  # the loop's time when attached
        # What the loop's clock reads while attached. An advance sets it to each timer's
        # own `when`, never to origin + offset: that sum rounds, and a clock one ulp short
        # of a timer the loop has already fired (it fires within its clock resolution)
        # would step onto that timer again and again (the CI hang of 8428438).
        self._time = 0.0
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []  # a heap
        self._numbers = itertools.count()
        self._held_since = time.monotonic()  # real time when the clock last moved
        self._look_at = self._held_since + HELD_WARN_S  # when _read looks again
        self._told_held = False
        self._test: asyncio.Task[Any] | None = None  # the task that attached: the test's
        self._helping = 0  # helpers waiting now (each with a backstop and a message)

    def now(self) -> datetime:
        """The virtual wall-clock time (timezone-aware UTC): an organism's ``now``."""
        return self._start + timedelta(seconds=self.offset)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Freeze ``loop``'s clock and keep track of its timers, so that :meth:`advance`
        fires them. Before the organism starts, which reads the loop's clock."""
        if self._loop is not None or "time" in vars(loop):
            raise OrganismStateError("the event loop runs on a virtual clock already; "
                                     "one TestOrganism at a time per loop")
        if not isinstance(loop, asyncio.BaseEventLoop):  # uvloop's is in C
            raise OrganismStateError(
                f"the virtual clock needs asyncio's own event loop, not "
                f"{type(loop).__name__}; run the test on asyncio's")
        self._origin = self._time = loop.time()
        scheduled, timers, numbers = loop.call_at, self._timers, self._numbers

        def call_at(when: float, callback: Callable[..., object], *args: Any,
                    context: contextvars.Context | None = None) -> asyncio.TimerHandle:
            handle = scheduled(when, callback, *args, context=context)
            heapq.heappush(timers, (when, next(numbers), handle))
            return handle

        loop.time = self._read  # type: ignore[method-assign]
        loop.call_at = call_at  # type: ignore[method-assign, assignment]  # call_later too
        self._loop = loop
        self._test = asyncio.current_task(loop)

    def _read(self) -> float:
        """The loop's clock while attached: it stands still. Found by a new user: a
        test's own ``asyncio.sleep`` (or ``wait_for``) then waits for ever, without a
        word (under pytest a log line is not even shown: the test never ends). Once the
        loop has waited ``HELD_WARN_S`` of real time on a timer the clock never reaches
        by itself, while no helper waits (``idle``, ``request`` and ``advance`` end in
        real time with messages of their own), the test's task is cancelled, saying why."""
        if (not self._told_held and not self._helping
                and time.monotonic() >= self._look_at):
            self._look_at = time.monotonic() + 1.0
            waiting = [when for when, _, handle in self._timers
                       if when > self._time and not handle.cancelled()]
            if waiting:
                self._told_held = True
                why = (f"the event loop waited {time.monotonic() - self._held_since:.0f} s "
                       f"of real time for a timer due in {min(waiting) - self._time:g} s of "
                       f"virtual time, which stands still: a test's own asyncio.sleep, "
                       f"wait_for or timeout waits for ever under a TestOrganism; move the "
                       f"clock with `await t.advance(seconds)`, or wait with "
                       f"`await t.idle()`")
                logger.warning("%s", why)
                if self._test is not None:
                    self._test.cancel(why)
        return self._time

    @contextlib.contextmanager
    def helper(self) -> Iterator[None]:
        """A helper (``advance``, ``TestOrganism.idle`` and ``request``) waits in real
        time, with a message of its own at its end: the test is not told of a timer it
        waits on meanwhile."""
        self._helping += 1
        try:
            yield
        finally:
            self._helping -= 1

    def _moved(self) -> None:
        self._held_since = time.monotonic()
        self._look_at = self._held_since + HELD_WARN_S

    def thaw(self) -> None:
        """Let the loop's clock run on in real time from where it stands (for a stop,
        whose drain waits in real time)."""
        loop = self._loop
        if loop is not None:
            real = type(loop).time
            shift = self._time - real(loop)
            loop.time = lambda: real(loop) + shift  # type: ignore[method-assign]

    def detach(self) -> None:
        """Give the loop its own clock back (what was advanced stays advanced here)."""
        if self._loop is not None:
            del self._loop.time
            del self._loop.call_at
            self._loop = None
            self._timers.clear()

    async def advance(self, seconds: float | timedelta | str, *,
                      timeout: float = ADVANCE_REAL_S) -> None:
        """Move time forward by ``seconds`` (or a timedelta, or ``"5s"``), firing each
        timer due on the way at its own time; follow with ``await t.idle()`` for what
        they set off to finish.

        ``timeout`` (seconds of real time) is a backstop: past it, TimeoutError says
        where the advance stands and what it still waits for."""
        seconds = _span(seconds)
        self._moved()
        target = self.offset + seconds
        if self._loop is None:  # no loop to move: the wall clock alone
            self.offset = target
            await asyncio.sleep(0)
            return
        limit = self._origin + target
        span = _Span(seconds, timeout, time.monotonic() + timeout)
        with self.helper():  # its own backstop tells of what it waits on
            while True:
                await self._settle(span)
                due = self._next_due(limit)
                if due is None:
                    break
                # Onto the timer's own reading: it is due now, and _next_due drops it
                # next, so each turn drops one timer at least and the advance ends.
                self._time = due
                self.offset = max(self.offset, due - self._origin)
                span.steps += 1
            self.offset = target
            self._time = max(self._time, limit)
            await self._settle(span)
        self._moved()

    def _next_due(self, limit: float) -> float | None:
        """When the first pending timer at or before ``limit`` is due (those due by the
        loop's time have fired: the loop settled)."""
        timers, now = self._timers, self._time
        while timers and (timers[0][0] <= now or timers[0][2].cancelled()):
            heapq.heappop(timers)
        return timers[0][0] if timers and timers[0][0] <= limit else None

    async def _settle(self, span: _Span) -> None:
        """Run the loop until all it holds waits: on a timer not yet due, a socket, or
        nothing; a handler running on a thread is waited for, until ``span`` gives up."""
        loop = self._loop
        assert loop is not None  # attached: advance checked
        while True:
            await asyncio.sleep(0)
            if time.monotonic() >= span.give_up:
                raise TimeoutError(self._late(span, loop))
            if _runs_next_turn(loop):
                continue
            if not self._off_loop():
                return
            await _real_pause(loop, _POLL_REAL_S)  # the thread hands its result over

    def _late(self, span: _Span, loop: asyncio.BaseEventLoop) -> str:
        waits = ("a sync handler still runs on its agent's thread" if self._off_loop() else
                 "the loop always had a callback ready (a task that never waits?)"
                 if _runs_next_turn(loop) else
                 f"timers kept coming due ({span.steps} stepped onto so far)")
        return (f"VirtualClock.advance({span.seconds:g}): not done after {span.timeout:g}s "
                f"of real time, at {self.offset:g}s of virtual time: {waits}; pass a longer "
                f"`timeout=` or advance in smaller steps")


@dataclasses.dataclass
class _Span:
    """One advance under way: when it gives up (``time.monotonic()``), and for its
    message, what it was asked and how many timers it stepped onto."""

    seconds: float
    timeout: float
    give_up: float
    steps: int = 0


def _span(seconds: object) -> float:
    """An advance's span: seconds, a ``timedelta`` or a duration as organism.yaml writes
    them (``"5s"``); time only moves forward, by a finite span."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    elif isinstance(seconds, str):
        try:
            seconds = parse_duration(seconds)
        except ValueError as exc:
            raise UsageError(f"advance({seconds!r}): {exc}") from None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            0 <= seconds < math.inf):
        raise UsageError(f"time only moves forward, by a finite span of seconds (a number, "
                         f"a timedelta or \"5s\"); got advance({seconds!r})")
    return float(seconds)


def _runs_next_turn(loop: asyncio.BaseEventLoop) -> bool:
    """Whether the loop's next turn runs a callback: one is ready, or a timer is due.

    Read off asyncio's own loop (attach refuses others), as no public API tells it. A
    thread's call_soon_threadsafe lands in ``_ready`` before its wake-up byte; a timer set
    for now sits in ``_scheduled`` until the turn after the one that set it.
    """
    ready: Sized = loop._ready  # type: ignore[attr-defined]
    scheduled: list[asyncio.TimerHandle] = loop._scheduled  # type: ignore[attr-defined]
    return bool(ready) or (bool(scheduled) and scheduled[0].when() <= loop.time())


async def _real_pause(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Wait ``seconds`` of real time (a thread's timer: the loop's own stand still)."""
    done = loop.create_future()
    timer = threading.Timer(seconds, _call_on, (loop, _resolve, done))
    timer.daemon = True
    timer.start()
    try:
        await done
    finally:
        timer.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., object],
             *args: Any) -> None:
    """From a timer's thread: ``callback(*args)`` on ``loop``, unless it closed meanwhile
    (nothing awaits the timer then; an error on the thread would only be noise)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


async def within_real(work: Awaitable[T], seconds: float, why: Callable[[], str]) -> T:
    """``work``'s result, or TimeoutError(``why()``) after ``seconds`` of real time: the
    loop's own timers stand still under the virtual clock."""
    task = asyncio.ensure_future(work)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = threading.Timer(seconds, _call_on, (asyncio.get_running_loop(), expire))
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
