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
import math
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
    did_you_mean,
    load_organism,
    organism_from_dict,
    parse_duration,
)
from sporeflow.config.errors import UsageError
from sporeflow.config.model import BUILTIN_CHANNELS
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.organism import Organism
from sporeflow.steps import Spore

__all__ = ["TestOrganism", "VirtualClock"]

T = TypeVar("T")
_ADVANCE_REAL_S = 10.0  # seconds of real time one advance may take: a backstop
_POLL_REAL_S = 0.001  # seconds of real time between looks at handlers still on threads


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

        loop.time = lambda: self._time  # type: ignore[method-assign]
        loop.call_at = call_at  # type: ignore[method-assign, assignment]  # call_later too
        self._loop = loop

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
                      timeout: float = _ADVANCE_REAL_S) -> None:
        """Move time forward by ``seconds`` (or a timedelta, or ``"5s"``), firing each
        timer due on the way at its own time; follow with ``await t.idle()`` for what
        they set off to finish.

        ``timeout`` (seconds of real time) is a backstop: past it, TimeoutError says
        where the advance stands and what it still waits for."""
        seconds = _span(seconds)
        target = self.offset + seconds
        if self._loop is None:  # no loop to move: the wall clock alone
            self.offset = target
            await asyncio.sleep(0)
            return
        limit = self._origin + target
        span = _Span(seconds, timeout, time.monotonic() + timeout)
        while True:
            await self._settle(span)
            due = self._next_due(limit)
            if due is None:
                break
            # Onto the timer's own reading: it is due now, and _next_due drops it next,
            # so each turn drops one timer at least and the advance ends.
            self._time = due
            self.offset = max(self.offset, due - self._origin)
            span.steps += 1
        self.offset = target
        self._time = max(self._time, limit)
        await self._settle(span)

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


async def _within_real(work: Awaitable[T], seconds: float, why: Callable[[], str]) -> T:
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

    async def advance(self, seconds: float | timedelta | str, *,
                      timeout: float = _ADVANCE_REAL_S) -> None:
        """Move the virtual clock forward (seconds, a timedelta or ``"5s"``), each timer
        on the way firing at its own time (see :class:`VirtualClock`); ``timeout`` is a
        backstop in real seconds."""
        await self.clock.advance(seconds, timeout=timeout)

    def now(self) -> datetime:
        """The virtual clock's time."""
        return self.clock.now()

    # -- what happened ------------------------------------------------------------------

    def handled(self, agent: str) -> list[Spore]:
        """The spores ``agent``'s handler finished, in order."""
        return list(self._capture.finished.get(self._agent(agent), ()))

    def outputs(self, agent: str) -> list[Spore]:
        """What ``agent`` produced (returned, yielded or sent), in order."""
        return list(self._capture.produced.get(self._agent(agent), ()))

    def _agent(self, name: str) -> str:
        """``name``, an agent of the organism; a misspelt one would only ever give []
        (found by a new user): a UsageError (a ValueError too) naming the closest."""
        agents = self.organism.agents
        if name not in agents:
            raise UsageError(f"no agent {name!r} in organism {self.organism.spec.name!r}"
                             f"{did_you_mean(name, agents)}")
        return name

    def knowledge(self, agent: str) -> list[dict[str, Any]]:
        """The knowledge of :meth:`outputs`: what a test most often compares."""
        return [spore.knowledge for spore in self.outputs(agent)]

    def broadcasts(self, channel: str) -> list[Spore]:
        """Every spore broadcast on ``channel``, from agents and from the test."""
        channels = {*self.organism.spec.channels, *BUILTIN_CHANNELS,
                    *self.organism.wiring().table.channels}
        if channel not in channels:
            raise UsageError(f"no channel {channel!r} in organism {self.organism.spec.name!r}"
                             f"{did_you_mean(channel, channels)}")
        return list(self._capture.on_channel.get(channel, ()))

    @property
    def returned(self) -> list[Spore]:
        """Spores addressed to the outside world (to the test as a sender), in order."""
        return list(self.organism.outbox)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, with its reason and error."""
        return list(self.organism.dead_letters)
