"""Starting a coroutine now, in the caller's turn of the loop, as a task of its own: what
Python 3.12's eager tasks do, for the hot hand-offs of 3.11 too.

A task's first step runs in the next turn of the loop, so every hand-off through a task
costs a turn (a system call and the loop's bookkeeping): on a round trip, a publish in a
task of its own, or a handler run by a runner woken for it, each added a turn. Started
eagerly, the coroutine runs until it first waits inside the caller's turn, and its task
exists only for the rest.

On Python 3.12 and later this is the loop's own ``eager_task_factory``. On 3.11 the task
is made first (so that ``asyncio.current_task()`` is that task throughout, as on 3.12, and
an ``asyncio.timeout`` entered before the first wait cancels it, not the caller), the
caller's task is set aside while the coroutine's first step runs in the task's context,
and the task's own first step, a turn later, takes up what that step waits on.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import tasks as _tasks
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["start_eagerly"]

T = TypeVar("T")
_NOTHING: Any = object()  # the rest's first step has been taken (None is a bare yield)


def start_eagerly(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """Run ``coro`` as a task that takes its first step now, until it first waits; return
    the task. What the coroutine returns or raises is the task's, as any task's (on 3.11
    a task whose coroutine ended in that first step is done a turn later).

    A loop with a task factory of its own (the user's) gets a task made by it, as usual.
    """
    loop = asyncio.get_running_loop()
    if loop.get_task_factory() is not None:
        return loop.create_task(coro, name=name)
    if sys.version_info >= (3, 12):
        return asyncio.eager_task_factory(loop, coro, name=name)
    context = contextvars.copy_context()  # its own, as a task's: what it sets stays there
    rest: _Rest[T] = _Rest(coro)
    task = loop.create_task(rest, name=name, context=context)
    caller = asyncio.current_task(loop)
    # 3.11 has no public way to run a task's step now: set the caller's task aside as
    # 3.12's eager start does (asyncio.tasks' own bookkeeping of the current task).
    if caller is not None:
        _tasks._leave_task(loop, caller)
    _tasks._enter_task(loop, task)
    try:
        rest.first = context.run(coro.send, None)
    except BaseException as exc:  # ended: the task's first step ends it the same way
        rest.outcome = exc
    finally:
        _tasks._leave_task(loop, task)
        if caller is not None:
            _tasks._enter_task(loop, caller)
    return task


class _Rest(Coroutine[Any, Any, T]):
    """The rest of a started ``coro``, as its task's coroutine: the task first waits on what
    the first step waits on; each wake-up or cancellation goes on into it, one thrown
    before the task's first step too (a generator not yet started would not pass it on).
    A coroutine that ended in its first step (``outcome``: its StopIteration or error)
    ends the task the same way at the task's first step."""

    __slots__ = ("_coro", "first", "outcome")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self.first: Any = _NOTHING
        self.outcome: BaseException | None = None

    def send(self, value: Any) -> Any:
        if self.outcome is not None:
            outcome, self.outcome = self.outcome, None
            raise outcome
        first, self.first = self.first, _NOTHING
        if first is not _NOTHING:
            return first
        return self._coro.send(value)

    def throw(self, typ: Any, value: Any = None, traceback: Any = None) -> Any:
        error = typ if value is None else value
        if self.outcome is not None:  # nothing left to stop: the task ends as thrown
            self.outcome = None
            raise error
        first, self.first = self.first, _NOTHING
        cancelled = error is asyncio.CancelledError or isinstance(error, asyncio.CancelledError)
        if first is not _NOTHING and cancelled:
            # Cancelled before the task took up what the first step waits on: cancel that,
            # as Task.cancel would have, and wait for it; its end throws the cancellation in.
            cancel = getattr(first, "cancel", None)
            if cancel is not None and cancel():
                return first
        if value is None and traceback is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, value, traceback)  # the older form, passed on as is

    def close(self) -> None:
        self.first, self.outcome = _NOTHING, None
        self._coro.close()

    # What reads a task's coroutine (its stack, the handler it runs: lanes.handler_at)
    # sees the started coroutine's.
    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a started coroutine's rest is run by its task, not awaited")
