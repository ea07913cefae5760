"""An agent's lane: its mailbox (priority first, FIFO within a priority), its
``concurrency`` slots, and how one handler run goes (timeout, expiry re-check,
retries, failure).

Handlers run on a :class:`~sporeflow.steps.runners.RunnerPool` that all lanes of an
organism share; a runner calls :meth:`AgentLane.serve` for a burst of spores. A
handler waiting on another agent lends its slot (``steps.slots``). A failed attempt
with tries left is retried after a backoff without holding a slot; the last failure
goes to ``on_failed``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

from sporeflow.config.errors import DeliveryError, StreamInterrupted
from sporeflow.config.model import Retry
from sporeflow.config.reasons import Reason
from sporeflow.steps.backoff import backoff_delay
from sporeflow.steps.buckets import PriorityBuckets
from sporeflow.steps.deadlines import CaughtCancellation, Deadline, DeadlineWatch, Overrun
from sporeflow.steps.expire import expired, utc_now
from sporeflow.steps.slots import SlotLending
from sporeflow.steps.spore import SPORE_CLOCK, Spore

if TYPE_CHECKING:
    from sporeflow.steps.runners import RunnerPool

__all__ = ["HOLD_LOOP_AT_MOST", "AgentLane", "Invoke", "LanePolicy", "Shape", "handler_at",
           "lane_running_here"]

Invoke = Callable[[Spore, int], Awaitable[Any]]
Shape = Callable[[Any, Spore], Awaitable[list[Spore]] | list[Spore]]

# Spores a runner takes from one lane before letting the next runnable lane go.
_BURST = 64
HOLD_LOOP_AT_MOST = 0.01  # seconds a runner (or a stream) runs before it lets the loop run
_clock = time.perf_counter
_clock_of = SPORE_CLOCK.get


@dataclass(frozen=True, slots=True)
class LanePolicy:
    concurrency: int = 1
    timeout: float | None = None
    retry: Retry = Retry()


def _ignore(*_: Any) -> None:
    pass


def _closing() -> bool:
    """No task runs: a GeneratorExit comes from closing a coroutine, not from a handler."""
    try:
        return asyncio.current_task() is None
    except RuntimeError:  # no running loop
        return True


def handler_at(task: asyncio.Task[Any]) -> tuple[Spore, int] | None:
    """The spore (and attempt) whose handler ``task`` is running, read off its
    suspended coroutines: nothing on the hot path keeps it."""
    found = None
    coro: Any = task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        frame = coro.cr_frame
        if frame.f_code in _HANDLER_FRAMES:
            found = frame.f_locals["spore"], frame.f_locals.get("attempt", 1)
        coro = coro.cr_await
    return found


def lane_running_here() -> tuple[AgentLane, Spore] | None:
    """The lane, and the spore, whose handler the code running now was called from, read
    off the stack (as :func:`handler_at` reads a suspended task): a handler calling in."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code not in _HANDLER_FRAMES:
        frame = frame.f_back
    return None if frame is None else (frame.f_locals["self"], frame.f_locals["spore"])


@dataclass(frozen=True, slots=True)
class _Retry:
    """A spore queued again after a failed attempt. First attempts, nearly all of them,
    are queued as bare spores: no wrapper to allocate, nor for the GC to track."""

    spore: Spore
    attempt: int


class AgentLane(SlotLending):
    """One agent's mailbox and slots; its handlers run on a :class:`RunnerPool`."""

    # Slots, not a __dict__: an organism holds one lane per agent, and past 30 attributes
    # CPython gives each instance a dict of its own (about 1.5 KiB). The dedupe and keyed
    # lanes add a __dict__ for their few fields (two slotted bases could not be combined).
    __slots__ = ("_cancel_reason", "_cancelled", "_mailbox", "_now", "_on_done",
                 "_on_failed", "_quiet", "_rng", "_running", "_timer_tokens", "_timers",
                 "_watch", "abandoned", "backlog", "failed", "handled", "invoke", "name",
                 "on_room", "paused", "policy", "pool", "received", "retried", "room_at",
                 "scheduled", "shape")

    # False in a lane that must see each spore in _run (steps.dedupe): no inline path.
    inline = True
    deduplicated = 0  # copies dropped (steps.dedupe)

    def __init__(
        self,
        name: str,
        invoke: Invoke,
        shape: Shape,
        policy: LanePolicy,
        *,
        on_done: Callable[[Spore, list[Spore], float], None],
        on_failed: Callable[[Spore, str, BaseException, int], None],
        now: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
        pool: RunnerPool | None = None,
    ) -> None:
        self.name = name
        self.invoke = invoke
        self.shape = shape
        self.policy = policy
        self._on_done = on_done
        self._on_failed = on_failed
        self._now = now
        self._rng = rng
        # A lane on its own gets a pool of its own whose runners end when idle.
        if pool is None:
            from sporeflow.steps.runners import RunnerPool  # runners import lanes
            pool = RunnerPool(max_idle=0, name=f"lane:{name}")
        self.pool = pool
        self._mailbox: PriorityBuckets[Spore | _Retry] = PriorityBuckets()
        self.backlog = self._mailbox  # read-only view: ``backlog.size`` spores queued
        # Handlers waiting in reclaim for a slot, oldest first: a list, as they are few
        # (at most the lane's concurrency) and an empty deque costs about 600 bytes a lane.
        self._resumers: list[asyncio.Future[None]] = []
        self._running: set[asyncio.Task[Any]] = set()  # runners inside one of our handlers
        self._quiet: asyncio.Future[None] | None = None
        self._timers: dict[int, tuple[asyncio.TimerHandle, Spore, int]] = {}
        # The timeouts of the handlers running under one, by task (reclaim pauses them).
        self._watch = DeadlineWatch()
        self._timer_tokens = 0
        self.scheduled = False  # in the pool's ready queue
        self.busy = 0
        self.stuck = 0  # slots held by abandoned threads (see hold_slot)
        self.lent = 0  # handlers waiting on a request, their slot lent (lent_while)
        self.on_lent = None
        self.abandoned = 0  # handlers that ignored their cancellation at a stop
        # Called once when the mailbox has shrunk to ``room_at`` spores (set by an outside
        # sender waiting: half its capacity, so that senders and lane work in batches).
        self.on_room: Callable[[], None] | None = None
        self.room_at = 0
        self.paused = False
        self.received = 0
        self.handled = 0
        self.failed = 0
        self.retried = 0
        # Why ``cancel`` is cancelling this lane's handlers; None while it is not: a
        # cancellation then is the handler's own (a library's task.cancel()), its failure.
        self._cancel_reason: str | None = None
        self._cancelled = 0

    async def serve(self, pool: RunnerPool, task: asyncio.Task[Any]) -> None:
        """Run up to a burst of this lane's spores, one handler at a time, on ``task`` (a
        runner of ``pool``)."""
        lane = self
        if _clock_of() is not lane._now:  # what its handlers make: the organism's clock
            SPORE_CLOCK.set(lane._now)
        mailbox, ready, resumers = lane._mailbox, pool.ready, lane._resumers
        policy = lane.policy
        concurrency, quick = policy.concurrency, policy.timeout is None and lane.inline
        invoke, shape = lane.invoke, lane.shape
        burst = _BURST
        # A burst ends once it has held the loop HOLD_LOOP_AT_MOST too: handlers that
        # block the loop, one after another, must still let it turn (a signal, a timer).
        # ``now`` is the clock read each run ends with (its latency's): no read more.
        now = _clock()
        until = now + HOLD_LOOP_AT_MOST
        # While serving the lane this task is only ever suspended inside its handlers:
        # that is when `cancel` and `wait_quiet` look at it.
        lane._running.add(task)
        try:
            while mailbox.size and burst and not lane.paused and not resumers and (
                    lane.busy < concurrency) and now < until:
                burst -= 1
                lane.busy += 1
                item = mailbox.pop()
                if lane.on_room is not None and mailbox.size <= lane.room_at:
                    lane.room_freed()  # an outside sender waits for room here
                if item.__class__ is _Retry:
                    spore, attempt = item.spore, item.attempt
                else:
                    spore, attempt = item, 1  # type: ignore[assignment]
                if mailbox.size and lane.busy < concurrency and not lane.scheduled:
                    # More slots free: let another runner start one too, should we suspend.
                    lane.scheduled = True
                    ready.append(lane)
                if ready and not pool.coming:
                    pool.call_runner()  # someone must take the others if this handler waits
                try:
                    if not quick or spore.expires_at is not None:
                        await lane._run(spore, attempt)
                        now = _clock()
                        continue
                    # The common case, inline: no timeout, no expiry to re-check.
                    started = _clock()
                    try:
                        result = await invoke(spore, attempt)
                        replies = shape(result, spore) if result is not None else []
                        if replies.__class__ is not list:
                            replies = await replies  # type: ignore[misc]
                    except BaseException as exc:
                        now = _clock()
                        lane._failed_run(spore, attempt, exc, None)
                        continue
                    lane.handled += 1
                    now = _clock()
                    lane._on_done(spore, replies, now - started)
                finally:
                    lane.busy -= 1
                    if resumers and lane._hand_over():
                        lane.busy += 1
            # A handler that swallowed a cancellation meant to stop this runner ran on;
            # its lane was paused first (AgentLane.cancel), so the burst has ended here.
            if task.cancelling():
                raise asyncio.CancelledError
        finally:
            lane._running.discard(task)
            if (mailbox.size and not lane.scheduled and not lane.paused
                    and lane.busy < concurrency):
                # This runner takes it again once the loop has run (or, cancelled, calls
                # another): no new runner for it.
                lane.scheduled = True
                ready.append(lane)
            if lane._quiet is not None:
                lane._check_quiet()

    # -- intake -------------------------------------------------------------

    def deliver(self, spore: Spore, attempt: int = 1) -> None:
        """Queue ``spore``; the lane becomes runnable if a slot is free."""
        if attempt == 1:
            self._mailbox.push(spore.priority, spore)
            self.received += 1
        else:
            self._mailbox.push(spore.priority, _Retry(spore, attempt))
        if not self.scheduled and self.busy < self.policy.concurrency and not self.paused:
            self.scheduled = True
            self.pool.schedule(self)

    @property
    def queued(self) -> int:
        return len(self._mailbox)

    def room_freed(self) -> None:
        wake, self.on_room = self.on_room, None
        if wake is not None:
            wake()

    def drain_queue(self) -> list[tuple[Spore, int]]:
        """Take every queued spore out (for shutdown or removal), highest priority first."""
        taken = [(item.spore, item.attempt) if isinstance(item, _Retry) else (item, 1)
                 for item in self._mailbox.clear()]
        self.room_freed()
        return taken

    def cancel_timers(self) -> list[tuple[Spore, int]]:
        """Cancel pending retries and return their spores (shutdown)."""
        entries = []
        for timer, spore, next_attempt in self._timers.values():
            timer.cancel()
            entries.append((spore, next_attempt - 1))  # the tries made, not the next one
        self._timers.clear()
        return entries

    def give_up_held(self) -> list[tuple[Spore, int]]:
        """Take out what waits here (queued, or for a retry) that a stop will not run; each
        leaves the lane as failed, as one that expired in the mailbox does (so that what it
        received stays accounted for), and goes to the caller's dead letters."""
        held = self.drain_queue() + self.cancel_timers()
        self.taken_out(len(held))
        return held

    def taken_out(self, count: int) -> None:
        """``count`` spores this lane received left it without running (a stop took them,
        a new schema refused them): they count as failed, as one expired in the mailbox
        does, so that what it received stays accounted for."""
        self.failed += count

    # -- slots ----------------------------------------------------------------

    def _schedule_if_runnable(self) -> None:
        if (self._mailbox.size and not self.scheduled and not self.paused
                and self.busy < self.policy.concurrency):
            self.scheduled = True
            self.pool.schedule(self)

    def _release(self) -> None:
        """Free a slot: waiting handlers go before queued spores."""
        self.busy -= 1
        if self._resumers and self._hand_over():
            self.busy += 1
        else:
            self._schedule_if_runnable()

    def pause(self) -> None:
        """Stop starting handlers; queued spores stay queued (stopping, reloading)."""
        self.paused = True
        self._check_quiet()

    def resume(self) -> None:
        """Start handlers again after ``pause`` (a reload swaps settings while paused)."""
        self.paused = False
        self._schedule_if_runnable()

    async def cancel(self, reason: str, grace: float | None = None) -> int:
        """Cancel running handlers; each one's spore goes to ``on_failed`` with ``reason``.

        A handler still running ``grace`` seconds later ignored its cancellation: it is
        abandoned (its spore fails now, whatever it does later goes nowhere, and the
        lane reports nothing more). Returns how many were cancelled or abandoned.
        """
        self.paused = True
        self._cancel_reason = reason
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        stuck: set[asyncio.Task[Any]] = set()
        try:
            if tasks:
                done, stuck = await asyncio.wait(tasks, timeout=grace)
                for task in done:
                    if not task.cancelled():
                        task.exception()  # retrieved: a runner ends by its cancellation
                if stuck:
                    self._abandon(stuck, reason)
        finally:
            if not stuck:  # an abandoned handler ending later was still stopped
                self._cancel_reason = None
        cancelled, self._cancelled = self._cancelled, 0
        return cancelled

    def _abandon(self, tasks: set[asyncio.Task[Any]], reason: str) -> None:
        for task in tasks:
            running = handler_at(task)
            self.abandoned += 1
            self._cancelled += 1
            if running is not None:
                spore, attempt = running
                self._failed(spore, reason, asyncio.CancelledError(
                    f"the handler of {self.name!r} ignored its cancellation; abandoned"),
                    attempt)
        self._running.difference_update(tasks)
        self.pool.forget(tasks)
        self._on_done = self._on_failed = _ignore  # the abandoned report nothing more

    async def wait_quiet(self) -> None:
        """Return once no handler of this lane runs and, unless paused, nothing is queued."""
        while self._running or (self._mailbox and not self.paused):
            if self._quiet is None or self._quiet.done():
                self._quiet = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._quiet)

    def handling(self) -> list[Spore]:
        """The spores whose handlers run now (read off their suspended tasks)."""
        return [found[0] for task in self._running if (found := handler_at(task)) is not None]

    def _check_quiet(self) -> None:
        quiet = self._quiet
        if (quiet is not None and not quiet.done() and not self._running
                and (not self._mailbox or self.paused)):
            quiet.set_result(None)

    # -- running handlers -------------------------------------------------------------

    async def _run(self, spore: Spore, attempt: int) -> None:
        """Run one handler with its timeout and the expiry re-check."""
        if spore.expires_at is not None and expired(
                spore, asyncio.get_running_loop().time(), wall=self._now):
            self._failed(spore, Reason.EXPIRED, DeliveryError(
                f"spore {spore.id} expired before {self.name!r} could handle it",
                reason=Reason.EXPIRED), attempt)
            return
        timeout = self.policy.timeout
        deadline = None
        started = time.perf_counter()
        try:
            if timeout is None:
                result = await self.invoke(spore, attempt)
                replies = self.shape(result, spore) if result is not None else []
                if replies.__class__ is not list:
                    replies = await replies  # type: ignore[misc]
            else:
                deadline = self._watch.start(timeout)  # one timer per lane, not per run
                try:
                    result = await self.invoke(spore, attempt)
                    replies = self.shape(result, spore) if result is not None else []
                    if replies.__class__ is not list:
                        replies = await replies  # type: ignore[misc]
                except BaseException as exc:
                    deadline.finish(exc)  # raises: exc, or the timeout it stands for
                    raise
                deadline.finish(None)  # raises if it ran past its deadline
        except BaseException as exc:
            self._failed_run(spore, attempt, exc, deadline)
        else:
            self.handled += 1
            self._on_done(spore, replies, time.perf_counter() - started)

    def _failed_run(self, spore: Spore, attempt: int, exc: BaseException,
                    deadline: Deadline | None) -> None:
        """Sort out why a handler run ended in an exception, then fail or re-raise."""
        if exc.__class__ is GeneratorExit and _closing():
            raise exc  # our own coroutine is being closed (an abandoned one, at exit)
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            stopping = self._cancel_reason
            if stopping is not None and task is not None and task.cancelling():
                # We are being stopped, not the handler failing: account for the spore.
                self._cancelled += 1
                self._failed(spore, stopping, asyncio.CancelledError(
                    f"{self.name!r} was stopped while handling it"), attempt)
                raise exc
            self._fail(spore, attempt, Reason.HANDLER_FAILED, asyncio.CancelledError(
                f"handler of {self.name!r} was cancelled from inside"))
            if task is not None and task.cancelling():
                # Its runner's task was cancelled: the handler's own doing, or the loop's
                # end (asyncio.run cancels every task left). The runner ends either way,
                # as a cancelled task must (one that ran on would keep asyncio.run from
                # returning); the pool calls another for the lanes still waiting.
                raise exc
        elif isinstance(exc, StreamInterrupted):  # a stop cut its stream short: no retry
            self._failed(spore, Reason.SHUTDOWN, exc, attempt)
        elif isinstance(exc, TimeoutError) and deadline is not None and (
                deadline.expired() or isinstance(exc, Overrun)):
            caught = (": it caught the cancellation its timeout sent and ran on until it "
                      "returned (an `except BaseException` or `except CancelledError` that "
                      "does not raise again)" if isinstance(exc, CaughtCancellation) else "")
            self._fail(spore, attempt, Reason.TIMEOUT, TimeoutError(
                f"handler of {self.name!r} ran past its timeout of {self.policy.timeout}s"
                f"{caught}"))
        else:
            # Any other exception, SystemExit and KeyboardInterrupt included: raised by
            # the handler (a stop of the organism arrives as a cancellation), so it is
            # this spore's failure, never the organism's end.
            self._fail(spore, attempt, Reason.HANDLER_FAILED, exc)

    def _fail(self, spore: Spore, attempt: int, reason: str, error: BaseException) -> None:
        if attempt < self.policy.retry.attempts:
            self.retried += 1
            delay = backoff_delay(self.policy.retry, attempt, self._rng)
            self._timer_tokens += 1
            token = self._timer_tokens
            timer = asyncio.get_running_loop().call_later(delay, self._retry, token)
            self._timers[token] = (timer, spore, attempt + 1)
            return
        self._failed(spore, reason, error, attempt)

    def _failed(self, spore: Spore, reason: str, error: BaseException, attempt: int) -> None:
        """The one place a spore leaves this lane as failed: counted, then reported."""
        self.failed += 1
        self._on_failed(spore, reason, error, attempt)

    def _retry(self, token: int) -> None:
        _, spore, attempt = self._timers.pop(token)
        self.deliver(spore, attempt)


_HANDLER_FRAMES = frozenset({AgentLane.serve.__code__, AgentLane._run.__code__})
