"""Starting a coroutine eagerly: its first part runs in the caller's turn of the loop,
the rest in a task that waits, wakes and is cancelled like any task."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from sporeflow.pipeline.core.eager import start_eagerly


async def test_a_coroutine_that_never_waits_ends_inside_the_call() -> None:
    ran: list[str] = []

    async def quick() -> None:
        ran.append("all")

    assert start_eagerly(quick()) is None
    assert ran == ["all"]


async def test_the_first_part_runs_now_and_the_rest_once_what_it_waits_on_is_done() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    ran: list[object] = []

    async def two_parts() -> int:
        ran.append("first")
        value = await gate
        ran.append(value)
        await asyncio.sleep(0)  # a bare wake-up, then more
        return value + 1

    task = start_eagerly(two_parts())
    assert ran == ["first"]  # before the loop turned
    assert task is not None
    await asyncio.sleep(0)
    assert ran == ["first"]
    assert not task.done()
    gate.set_result(41)
    assert await task == 42
    assert ran == ["first", 41]


async def test_the_rest_runs_in_its_own_task_and_a_cancellation_reaches_it() -> None:
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    seen: list[object] = []

    async def waits_forever() -> None:
        try:
            await loop.create_future()
        finally:
            seen.append(asyncio.current_task())

    task = start_eagerly(waits_forever())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert seen == [task]
    assert seen[0] is not caller


async def test_an_error_before_the_first_wait_is_raised_to_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        start_eagerly(broken())


async def test_from_a_callback_the_coroutine_runs_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None] | None] = []
    inside: list[asyncio.Task[object] | None] = []

    async def where() -> None:
        inside.append(asyncio.current_task())

    done = asyncio.Event()
    loop.call_soon(lambda: (tasks.append(start_eagerly(where())), done.set()))
    await done.wait()
    task = tasks[0]
    if task is not None:  # 3.11: a task of its own; 3.12: an eager one, maybe done
        await task
    assert inside
    assert inside[0] is not None


async def test_a_cancellation_before_the_rests_first_step_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    seen: list[str] = []

    async def publish() -> None:
        async with lock:  # held across its first wait, as aiormq's publish holds its lock
            try:
                await loop.create_future()
            finally:
                seen.append("finally")

    task = start_eagerly(publish())
    assert task is not None
    assert lock.locked()
    task.cancel()  # in the same turn: the task has not taken its first step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["finally"]
    assert not lock.locked()  # nothing of it is left holding what others wait for


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


async def test_what_the_first_part_sets_in_its_context_stays_in_its_task() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def sets() -> str:
        VAR.set("publish")
        await gate
        return VAR.get()

    task = start_eagerly(sets())
    assert task is not None
    assert VAR.get() == "caller"
    gate.set_result(None)
    assert await task == "publish"


async def test_the_tasks_stack_is_the_started_coroutines() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def named_step() -> None:
        await gate

    task = start_eagerly(named_step())
    assert task is not None
    assert [frame.f_code.co_name for frame in task.get_stack()] == ["named_step"]
    gate.set_result(None)
    await task


async def test_a_cancellation_before_the_tasks_first_step_cancels_what_it_waits_on() -> None:
    children: list[asyncio.Task[None]] = []

    async def publish() -> None:
        child = asyncio.create_task(asyncio.sleep(10))
        children.append(child)
        await child

    task = start_eagerly(publish())
    assert task is not None
    task.cancel()  # in the turn it started, as a stop may
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children[0].cancelled()  # not left running on: as Task.cancel does


async def test_a_loops_own_task_factory_makes_the_task() -> None:
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
        made.append(coro.__qualname__)  # the older form: no context argument
        return asyncio.Task(coro, loop=loop)

    async def work() -> str:
        await asyncio.sleep(0)  # a task needed for the rest: made by the factory
        return "done"

    loop.set_task_factory(factory)
    try:
        task = start_eagerly(work())
    finally:
        loop.set_task_factory(None)
    assert task is not None
    assert await task == "done"
    assert made
    assert made[0].endswith("work")
