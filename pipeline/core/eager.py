"""Starting a coroutine now, in the caller's turn of the loop, and only the rest of it in
a task: what Python 3.12's eager tasks do, for the hot hand-offs of 3.11 too.

A task's first step runs in the next turn of the loop, so every hand-off through a
task costs a turn (a system call and the loop's bookkeeping): on a round trip over a
broker, publishing through a task of its own added one turn at each end. Started
eagerly, a publish's frames are queued in the caller's turn and its task exists only
while it waits for the broker's confirm.

On Python 3.12 and later this is the loop's own ``eager_task_factory``. On 3.11 the
coroutine's first step is driven here, inside the caller's task (or, with no task
running, the first step waits for a task of its own): until it first waits,
``asyncio.current_task()`` is the caller's. Start eagerly only coroutines that do not
keep the current task before their first wait (aiormq's ``basic_publish`` keeps it
only in a timeout with no deadline).
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["start_eagerly"]

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
    """Run ``coro`` until it first waits; return the task that runs the rest, or None
    when it ended before waiting (an exception it raised then propagates here)."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        task = asyncio.eager_task_factory(loop, coro)
        if not task.done():
            return task
        task.result()  # raised, or returned
        return None
    if asyncio.current_task(loop) is None:  # a callback: its first step in a task
        return loop.create_task(coro)
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_rest(coro, waiting_on))


@types.coroutine
def _rest(coro: Coroutine[Any, Any, T], waiting_on: Any) -> Generator[Any, None, T]:
    """The rest of a started ``coro``: the task waits on what it waits on, and each
    wake-up or cancellation goes on into it."""
    while True:
        try:
            yield waiting_on
        except BaseException as exc:  # thrown into the task: a cancellation
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                waiting_on = coro.send(None)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
