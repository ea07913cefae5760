"""flatmap-dispatch: hand each delivery to its agent's lane, which runs the handler.

A lane is an agent's mailbox (priority first, FIFO within a priority) served by
at most ``concurrency`` worker tasks. A worker drains the mailbox, awaiting one
handler at a time, so quick handlers cost no task of their own: tasks are made
per burst of work, not per spore. A worker lends its slot while its handler
awaits a ``request`` (``lend``/``reclaim``), so a responder on the same lane
always finds one. A failed attempt with tries left is retried after a backoff
without holding a slot; the last failure goes to ``on_failed``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError
from sporeflow.config.model import Retry
from sporeflow.steps.buckets import PriorityBuckets
from sporeflow.steps.expire import utc_now
from sporeflow.steps.spore import Spore
from sporeflow.steps.types import Delivery, Reject

__all__ = ["AgentLane", "LanePolicy", "backoff_delay", "dispatch"]

Invoke = Callable[[Spore, int], Awaitable[Any]]
Shape = Callable[[Any, Spore], Awaitable[list[Spore]] | list[Spore]]


@dataclass(frozen=True, slots=True)
class LanePolicy:
    concurrency: int = 1
    timeout: float | None = None
    retry: Retry = Retry()


def backoff_delay(retry: Retry, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed ``attempt``: exponential, capped, with equal jitter."""
    ceiling = min(retry.max_backoff, retry.backoff * 2.0 ** (attempt - 1))
    draw: float = (rng or random).random()
    return ceiling / 2 + draw * ceiling / 2


class AgentLane:
    """One agent's mailbox and workers."""

    def __init__(
        self,
        name: str,
        invoke: Invoke,
        shape: Shape,
        policy: LanePolicy,
        *,
        on_done: Callable[[list[Spore]], None],
        on_failed: Callable[[Spore, str, BaseException, int], None],
        observe: Callable[[float], None] = lambda seconds: None,
        now: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.invoke = invoke
        self.shape = shape
        self.policy = policy
        self._on_done = on_done
        self._on_failed = on_failed
        self._observe = observe
        self._now = now
        self._rng = rng
        self._mailbox: PriorityBuckets[tuple[Spore, int]] = PriorityBuckets()
        self._resumers: deque[asyncio.Future[None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[int, tuple[asyncio.TimerHandle, Spore, int]] = {}
        self._timer_tokens = 0
        self.busy = 0
        self.paused = False
        self.received = 0
        self.handled = 0
        self.failed = 0
        self.retried = 0
        self._cancel_reason = "shutdown"
        self._cancelled = 0

    # -- intake -------------------------------------------------------------

    def deliver(self, spore: Spore, attempt: int = 1) -> None:
        """Queue ``spore`` and start a worker if a slot is free."""
        self._mailbox.push(spore.priority, (spore, attempt))
        if attempt == 1:
            self.received += 1
        if self.busy < self.policy.concurrency and not self.paused:
            self._spawn()

    @property
    def queued(self) -> int:
        return len(self._mailbox)

    def drain_queue(self) -> list[tuple[Spore, int]]:
        """Take every queued spore out (for shutdown or removal), highest priority first."""
        return self._mailbox.clear()

    @property
    def timers(self) -> int:
        """Retries waiting for their backoff."""
        return len(self._timers)

    def cancel_timers(self) -> list[tuple[Spore, int]]:
        """Cancel pending retries and return their spores (shutdown)."""
        entries = []
        for timer, spore, next_attempt in self._timers.values():
            timer.cancel()
            entries.append((spore, next_attempt - 1))  # the tries made, not the next one
        self._timers.clear()
        return entries

    # -- slots ----------------------------------------------------------------

    def _spawn(self) -> None:
        self.busy += 1
        task = asyncio.get_running_loop().create_task(self._work(), name=f"lane:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release(self) -> None:
        self.busy -= 1
        if self._resumers:
            self.busy += 1
            self._resumers.popleft().set_result(None)
        elif self.queued and self.busy < self.policy.concurrency and not self.paused:
            self._spawn()

    def lend(self) -> None:
        """Give the caller's slot back while its handler waits on another agent."""
        self._release()

    async def reclaim(self) -> None:
        """Take a slot again after ``lend``; waiting handlers go before new spores."""
        if self.busy < self.policy.concurrency:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._resumers.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed to us as we were cancelled
            else:
                self._resumers.remove(waiter)
            raise

    def pause(self) -> None:
        """Stop starting handlers; queued spores stay queued (used when stopping)."""
        self.paused = True

    async def cancel(self, reason: str) -> int:
        """Cancel running handlers; each one's spore goes to ``on_failed`` with ``reason``.

        Returns how many were cancelled.
        """
        self.paused = True
        self._cancel_reason = reason
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        cancelled, self._cancelled = self._cancelled, 0
        return cancelled

    async def wait_quiet(self) -> None:
        """Return once no handler of this lane is running."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    # -- running handlers -------------------------------------------------------------

    async def _work(self) -> None:
        mailbox, invoke, clock = self._mailbox, self.invoke, time.perf_counter
        on_done, observe = self._on_done, self._observe
        try:
            # The common case, inline: no timeout, a quick handler, no expiry. A handler
            # back from a request waits for a slot: this worker gives its slot up to it.
            while mailbox and not self.paused and not self._resumers:
                spore, attempt = mailbox.pop()
                if self.policy.timeout is not None or spore.expires_at is not None:
                    await self._run(spore, attempt)
                    continue
                started = clock()
                try:
                    result = await invoke(spore, attempt)
                    replies = self.shape(result, spore) if result is not None else []
                    if replies.__class__ is not list:
                        replies = await replies  # type: ignore[misc]
                except BaseException as exc:
                    self._failed_run(spore, attempt, exc, None)
                    continue
                self.handled += 1
                observe(clock() - started)
                on_done(replies)
        finally:
            self._release()

    async def _run(self, spore: Spore, attempt: int) -> None:
        """Run one handler with its timeout and the expiry re-check."""
        if spore.expires_at is not None and spore.expires_at <= self._now():
            error = DeliveryError(f"spore {spore.id} expired before {self.name!r} could handle "
                                  f"it", reason="expired")
            self._on_failed(spore, "expired", error, attempt)
            return
        timeout = self.policy.timeout
        deadline = None
        started = time.perf_counter()
        try:
            if timeout is None:
                result = await self.invoke(spore, attempt)
            else:
                async with asyncio.timeout(timeout) as deadline:
                    result = await self.invoke(spore, attempt)
            replies = self.shape(result, spore) if result is not None else []
            if not isinstance(replies, list):
                replies = await replies
        except BaseException as exc:
            self._failed_run(spore, attempt, exc, deadline)
        else:
            self.handled += 1
            self._observe(time.perf_counter() - started)
            self._on_done(replies)

    def _failed_run(self, spore: Spore, attempt: int, exc: BaseException,
                    deadline: asyncio.Timeout | None) -> None:
        """Sort out why a handler run ended in an exception, then fail or re-raise."""
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # We are being stopped, not the handler failing: account for the spore.
                self._cancelled += 1
                self._on_failed(spore, self._cancel_reason, asyncio.CancelledError(
                    f"{self.name!r} was stopped while handling it"), attempt)
                raise exc
            self._fail(spore, attempt, "handler failed", asyncio.CancelledError(
                f"handler of {self.name!r} was cancelled from inside"))
        elif isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
            self._fail(spore, attempt, "timeout", TimeoutError(
                f"handler of {self.name!r} ran past its timeout of {self.policy.timeout}s"))
        elif isinstance(exc, Exception):
            self._fail(spore, attempt, "handler failed", exc)
        else:
            raise exc  # KeyboardInterrupt, SystemExit: not ours to swallow

    def _fail(self, spore: Spore, attempt: int, reason: str, error: BaseException) -> None:
        if attempt < self.policy.retry.attempts:
            self.retried += 1
            delay = backoff_delay(self.policy.retry, attempt, self._rng)
            self._timer_tokens += 1
            token = self._timer_tokens
            timer = asyncio.get_running_loop().call_later(delay, self._retry, token)
            self._timers[token] = (timer, spore, attempt + 1)
            return
        self.failed += 1
        self._on_failed(spore, reason, error, attempt)

    def _retry(self, token: int) -> None:
        _, spore, attempt = self._timers.pop(token)
        self.deliver(spore, attempt)


@pipable_operator
async def dispatch(
    source: AsyncIterable[list[Delivery]],
    *,
    lanes: Callable[[], Mapping[str, AgentLane]],
    on_reject: Reject,
) -> AsyncIterator[list[Delivery]]:
    """Hand each delivery to its agent's lane; yield the deliveries handed over."""
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            current = lanes()
            for spore, targets in deliveries:
                for name in targets:
                    lane = current.get(name)
                    if lane is None:  # removed by a reload between route and here
                        on_reject(spore, "unknown agent", DeliveryError(
                            f"agent {name!r} was removed before spore {spore.id} reached it",
                            reason="unknown agent"))
                    else:
                        lane.deliver(spore)
            yield deliveries
