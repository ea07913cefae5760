"""Starting a coroutine now, in the caller's turn of the loop, and only the rest of it in
a task: what Python 3.12's eager tasks do, for the hot hand-offs of 3.11 too.

A task's first step runs in the next turn of the loop, so every hand-off through a
task costs a turn (a system call and the loop's bookkeeping): on a round trip over a
broker, publishing through a task of its own added one turn at each end. Started
eagerly, a publish's frames are queued in the caller's turn and its task exists only
while it waits for the broker's confirm.

On Python 3.12 and later this is the loop's own ``eager_task_factory``. On 3.11 the
coroutine's first step is driven here, inside the caller's task (or, with no task
running, the first step waits for a task of its own), in a context of its own as a
task's: until it first waits, ``asyncio.current_task()`` is the caller's. Start eagerly
only coroutines that do not keep the current task before their first wait (a timeout
entered there would cancel the caller; aiormq's ``basic_publish`` keeps it only in a
timeout with no deadline).
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["start_eagerly"]

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
    """Run ``coro`` until it first waits; return the task that runs the rest, or None
    when it ended before waiting (an exception it raised then propagates here)."""
    loop = asyncio.get_running_loop()
    if loop.get_task_factory() is not None:  # the user's own makes every task: as usual
        return loop.create_task(coro)
    if sys.version_info >= (3, 12):
        task = asyncio.eager_task_factory(loop, coro)
        if not task.done():
            return task
        task.result()  # raised, or returned
        return None
    if asyncio.current_task(loop) is None:  # a callback: its first step in a task
        return loop.create_task(coro)
    context = contextvars.copy_context()  # its own, as a task's: what it sets stays there
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration:
        return None
    return loop.create_task(_Rest(coro, waiting_on), context=context)


class _Rest(Coroutine[Any, Any, T]):
    """The rest of a started ``coro``, as the task's coroutine: the task first waits on
    what it waits on; each wake-up or cancellation goes on into it, one thrown before the
    task's first step too (a generator not yet started would not pass it on)."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting_on: Any) -> None:
        self._coro = coro
        self._first: list[Any] = [waiting_on]  # emptied by the first step

    def send(self, value: Any) -> Any:
        first = self._first
        if first:
            return first.pop()
        return self._coro.send(value)

    def throw(self, typ: Any, value: Any = None, traceback: Any = None) -> Any:
        first = self._first
        error = typ if value is None else value
        if first and (error is asyncio.CancelledError
                      or isinstance(error, asyncio.CancelledError)):
            # Cancelled before the task took up what the first step waits on: cancel that,
            # as Task.cancel would have, and wait for it; its end throws the cancellation in.
            waiting_on = first.pop()
            cancel = getattr(waiting_on, "cancel", None)
            if cancel is not None and cancel():
                return waiting_on
        first.clear()
        if value is None and traceback is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, value, traceback)  # the older form, passed on as is

    def close(self) -> None:
        self._first.clear()
        self._coro.close()

    # What reads a task's coroutine (its stack) sees the started coroutine's.
    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a started coroutine's rest is run by its task, not awaited")
