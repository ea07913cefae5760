"""Each agent's own threads for its sync handlers (plain functions and methods).

A sync handler may block, so it runs off the loop, on a thread of its agent: at
most ``concurrency`` of them, made on the first calls that need one and ended
after :data:`KEEPALIVE` seconds idle, or at once when the organism stops
(:meth:`AgentThreads.close`). One agent's blocked threads therefore never delay
another agent's handlers, as asyncio's shared default thread pool did.

A thread cannot be interrupted. When the handler's run ends while its thread
still runs it (the handler's timeout, a stop), the thread is *abandoned*: the
spore has already failed, and the thread keeps one of the agent's slots
(``AgentLane.hold_slot``) until it returns, since it still uses what that slot
bounds; stats show those slots as ``abandoned``. A warning names the agent and
the spore once per abandoned thread. The threads are daemon threads and
:meth:`~AgentThreads.close` does not wait for them, so the process exits
without waiting for an abandoned thread to return.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

from sporeflow.config.words import message_of
from sporeflow.pipeline.core.logfields import spore_fields
from sporeflow.steps import AgentLane, Spore

__all__ = ["KEEPALIVE", "AgentThreads", "close_iterator"]

# Seconds a thread waits for work before it ends (a removed or replaced agent's
# threads thus end on their own; a busy agent keeps its threads).
KEEPALIVE = 30.0

_QUEUED, _RUNNING, _DONE = range(3)
_TAKE_MOST, _TAKE_FOR = 256, 0.01  # items (and seconds) of an iterator taken per hop
_SLOW = 0.001  # seconds: an item that took longer to make goes at once, alone


class _Taken(NamedTuple):
    items: list[Any]
    error: BaseException | None  # what the iterator raised after ``items``
    ended: bool
    slow: bool  # an item took a while to make: the iterator waits between items


def _taken(items: Iterator[Any], most: int) -> _Taken:
    """The next items of ``items`` (on a thread): up to ``most``, for up to
    ``_TAKE_FOR`` seconds, and none after one that took a while to make (an iterator
    that polls or waits: what it made goes at once). A hop per item cost 18x the items;
    what was taken before the iterator raised is kept, as a stream's items are."""
    taken: list[Any] = []
    until = time.monotonic() + _TAKE_FOR
    try:
        while len(taken) < most:
            began = time.monotonic()
            try:
                taken.append(next(items))
            except StopIteration:
                return _Taken(taken, None, True, False)
            done = time.monotonic()
            if done - began > _SLOW:
                return _Taken(taken, None, False, True)
            if done >= until:
                break
    except BaseException as exc:  # raised on the loop, once its items are out
        return _Taken(taken, exc, True, False)
    return _Taken(taken, None, False, False)


def close_iterator(items: Iterator[Any]) -> None:
    """End what is left of ``items`` (a generator a stream stopped taking: a timeout, a
    stop), on the loop. One still running on an abandoned thread cannot be closed: it
    ends with that thread."""
    close = getattr(items, "close", None)
    if close is not None:
        with contextlib.suppress(ValueError):  # "generator already executing"
            close()


class _Job:
    """One call on a thread: its function, and what the loop awaits of it."""

    __slots__ = ("call", "loop", "future", "spore", "state", "submitted", "on_return")

    def __init__(self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[Any], spore: Spore) -> None:
        self.call = call
        self.loop = loop
        self.future = future
        self.spore = spore
        self.state = _QUEUED
        self.submitted = time.monotonic()
        self.on_return: Callable[[], None] | None = None  # set when abandoned


class AgentThreads:
    """The threads that run agent ``agent``'s sync handlers: at most ``size`` of them.

    ``lane`` gives the agent's lane (whose slot an abandoned thread keeps);
    ``logger`` gets the warning about each abandoned thread.
    """

    def __init__(self, agent: str, size: int, lane: Callable[[], AgentLane],
                 logger: logging.Logger, *, keepalive: float = KEEPALIVE) -> None:
        self.agent = agent
        self.size = max(1, size)
        self.keepalive = keepalive
        self._lane = lane
        self._logger = logger
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: deque[_Job] = deque()
        self._idle = 0  # threads waiting for a job
        self._made = 0
        self._closed = False
        self.alive = 0  # threads now
        self.running = 0  # of them running a call (abandoned ones included)
        self.abandoned = 0  # threads abandoned so far, returned or not
        # Calls the loop awaits (queued, running, or their result not yet taken): read
        # on the loop only, so never seen at 0 while a result is on its way to it.
        self.awaited = 0

    async def run(self, function: Callable[..., Any], /, *args: Any, spore: Spore) -> Any:
        """``function(*args)`` on one of the agent's threads, for ``spore``; cancelled
        while that thread runs it, the thread is abandoned (see the module).

        An iterator it returns (a plain generator handler's) comes back as an async
        iterator taking its items on these threads too, a few at a time (``_taken``): its
        body runs off the loop, as the rest of a sync handler does, and the handler's
        timeout can end it."""
        result = await self._call(function, *args, spore=spore)
        if result.__class__ is not dict and hasattr(result, "__next__"):
            return self._items(result, spore)
        return result

    async def _items(self, items: Iterator[Any], spore: Spore) -> AsyncIterator[Any]:
        most = 1  # the first item goes at once; then twice as many per hop, while quick
        try:
            while True:
                taken = await self._call(_taken, items, most, spore=spore)
                for item in taken.items:
                    yield item
                if taken.error is not None:
                    raise taken.error
                if taken.ended:
                    return
                most = 1 if taken.slow else min(most * 2, _TAKE_MOST)
        finally:  # ended early (a timeout, a stop): end the generator too
            close_iterator(items)

    async def _call(self, function: Callable[..., Any], /, *args: Any, spore: Spore) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # The caller's context goes along, as with asyncio.to_thread (a tracing span).
        call = functools.partial(contextvars.copy_context().run, function, *args)
        job = _Job(call, loop, future, spore)
        self._submit(job)
        self.awaited += 1
        try:
            return await future
        except asyncio.CancelledError:
            self._cancelled(job)
            raise
        finally:
            self.awaited -= 1

    def close(self) -> None:
        """Let every thread end once it has nothing to run; wait for none of them."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()

    # -- on the loop ---------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the threads of agent {self.agent!r} are closed: the "
                                   f"organism stopped")
            self._jobs.append(job)
            spawn = len(self._jobs) > self._idle and self.alive < self.size
            if not spawn:
                self._wake.notify()  # an idle thread takes it, or the next to finish
                return
            self.alive += 1
            self._made += 1
            name = f"sporeflow:{self.agent}:{self._made}"
        try:
            threading.Thread(target=self._work, name=name, daemon=True).start()
        except BaseException:
            with self._lock:
                self.alive -= 1
                if job.state == _QUEUED:  # no thread took it meanwhile: the call fails
                    self._jobs.remove(job)
                    job.state = _DONE
                    raise

    def _cancelled(self, job: _Job) -> None:
        """The awaiting handler was cancelled: drop a queued call, abandon a running one."""
        with self._lock:
            if job.state == _QUEUED:
                self._jobs.remove(job)
                job.state = _DONE  # never runs
                return
            if job.state != _RUNNING:
                return  # it has just returned: nothing is left running
            lane = self._lane()
            job.on_return = lane.hold_slot()  # taken here, before the thread can return
            self.abandoned += 1
        policy = lane.policy
        self._logger.warning(
            "agent %r: the sync handler of spore %s was given up after %.3gs (timeout: %s) "
            "but its thread still runs it: the thread is abandoned, and holds one of the "
            "agent's slots (concurrency %d) until it returns", self.agent, job.spore.id,
            time.monotonic() - job.submitted,
            "none" if policy.timeout is None else f"{policy.timeout:g}s",
            policy.concurrency,
            extra=spore_fields(job.spore, agent=self.agent, event="abandoned"))

    def _returned(self, job: _Job, free: Callable[[], None]) -> None:
        """An abandoned thread returned: its slot is free again."""
        free()
        self._logger.info("agent %r: the abandoned thread of spore %s returned after %.3gs; "
                          "its slot is free again", self.agent, job.spore.id,
                          time.monotonic() - job.submitted,
                          extra=spore_fields(job.spore, agent=self.agent, event="returned"))

    # -- on a thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                result, error = job.call(), None
            except BaseException as exc:  # the handler's; the lane decides what it means
                result, error = None, exc
            with self._lock:
                job.state = _DONE
                self.running -= 1
                on_return = job.on_return
            try:
                if on_return is not None:
                    job.loop.call_soon_threadsafe(self._returned, job, on_return)
                else:
                    job.loop.call_soon_threadsafe(_settle, job.future, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this call any more
            del job, result, error  # hold nothing while idle

    def _next(self) -> _Job | None:
        """The next call to run, or None when this thread should end."""
        with self._lock:
            while True:
                if self._jobs:
                    job = self._jobs.popleft()
                    job.state = _RUNNING
                    self.running += 1
                    return job
                if self._closed:
                    break
                self._idle += 1
                woken = self._wake.wait(self.keepalive)
                self._idle -= 1
                if not woken and not self._jobs:
                    break  # idle for too long
            self.alive -= 1
            return None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled just as the call returned
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, StopIteration):  # a future refuses it
        failure = RuntimeError(f"the handler raised StopIteration: {message_of(error)}")
        failure.__cause__ = error
        future.set_exception(failure)
    else:
        future.set_exception(error)
