"""Handlers' timeouts on one loop timer per lane, not one per handler run.

``asyncio.timeout`` costs each run a ``Timeout``, a timer handle pushed on the loop's
heap and its cancellation: a third of a quick handler's whole delivery. Here a run's
deadline is a number in its lane's :class:`DeadlineWatch`; the watch keeps one timer,
set for the earliest deadline. When it fires it cancels the runs past their deadline,
as ``asyncio.timeout`` does, and sets itself for the next. Runs that end in time, the
common case, cost a clock read and two dictionary operations.

A run reads its own end with :meth:`Deadline.finish`: a cancellation that only its
timeout asked for becomes ``TimeoutError``; one that a stop asked for too stays a
cancellation; a run that blocked the loop past its deadline (no await let the timer
fire) raises :class:`Overrun`, and one that caught its cancellation and returned
:class:`CaughtCancellation`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

__all__ = ["CaughtCancellation", "Deadline", "DeadlineWatch", "Overrun"]


class Overrun(TimeoutError):
    """A handler that blocked the loop past its deadline: no await let the timeout fire."""


class CaughtCancellation(TimeoutError):
    """A handler that caught the cancellation its timeout sent, ran on and returned."""


class Deadline:
    """One handler run's timeout (``when`` in loop time; None while paused)."""

    __slots__ = ("_watch", "_when", "cancelling", "fired", "task")

    def __init__(self, watch: DeadlineWatch, task: asyncio.Task[Any], when: float) -> None:
        self._watch = watch
        self.task = task
        self._when: float | None = when
        self.cancelling = task.cancelling()  # cancellations asked before the run
        self.fired = False

    def when(self) -> float | None:
        return self._when

    def expired(self) -> bool:
        return self.fired

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (None: pause it, while the handler waits for its slot)."""
        self._when = when
        if when is not None and not self.fired:
            self._watch.moved(when)

    def finish(self, exc: BaseException | None) -> None:
        """End the run: raise ``TimeoutError`` for a cancellation only the deadline asked
        for, :class:`Overrun` for a run that ended past it, else re-raise ``exc``."""
        self._watch.end(self)
        if self.fired:
            # The deadline's cancellation, delivered or not, is taken back (as
            # asyncio.timeout does); a stop's own cancellation stays.
            ours = self.task.uncancel() <= self.cancelling
            if isinstance(exc, asyncio.CancelledError):
                if ours:
                    raise TimeoutError from exc
                raise exc
            if exc is not None:
                raise exc
            # The timer fired while the run was suspended, so the cancellation reached it
            # at once: it was caught (a bare `except BaseException`, say) and the run went on.
            raise CaughtCancellation
        if exc is not None:
            raise exc
        when = self._when
        if when is not None and when <= asyncio.get_running_loop().time():
            raise Overrun


class DeadlineWatch:
    """The deadlines of one lane's running handlers, on one timer."""

    def __init__(self) -> None:
        self.running: dict[asyncio.Task[Any], Deadline] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf  # when the timer fires

    def start(self, seconds: float) -> Deadline:
        """The deadline of a run starting now in the current task."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # handlers run in a runner's task
        deadline = Deadline(self, task, loop.time() + seconds)
        self.running[task] = deadline
        if deadline._when < self._armed:  # type: ignore[operator]
            self._arm(loop, deadline._when)  # type: ignore[arg-type]
        return deadline

    def end(self, deadline: Deadline) -> None:
        # The timer stays set: it fires, finds the next deadline later, and moves on.
        if self.running.get(deadline.task) is deadline:
            del self.running[deadline.task]

    def moved(self, when: float) -> None:
        if when < self._armed:
            self._arm(asyncio.get_running_loop(), when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._armed = when

    def _fire(self) -> None:
        self._timer, self._armed = None, math.inf
        loop = asyncio.get_running_loop()
        now, soonest = loop.time(), math.inf
        for deadline in self.running.values():
            when = deadline._when
            if when is None or deadline.fired:
                continue
            if when <= now:
                deadline.fired = True
                deadline.task.cancel()
            elif when < soonest:
                soonest = when
        if soonest < math.inf:
            self._arm(loop, soonest)
