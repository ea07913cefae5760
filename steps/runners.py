"""The tasks that run every lane's handlers (see :mod:`sporeflow.steps.lanes`).

A quick handler costs no task of its own, however many agents there are: a runner
takes a runnable lane, runs a burst of its spores' handlers one after another, and
moves on; tasks are made only when a handler really suspends and other lanes are
waiting (each handler still runs start to end in one task, so ``asyncio.timeout``
and ``current_task()`` behave as usual).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from sporeflow.steps.lanes import HOLD_LOOP_AT_MOST, AgentLane

__all__ = ["HOLD_LOOP_AT_MOST", "RunnerPool"]


class RunnerPool:
    """The tasks that run handlers for every lane of one organism.

    Runners park when there is nothing to run (at most ``max_idle`` of them; the
    rest end). A runner about to start a handler while other lanes wait makes sure
    some other runner will take them should this handler suspend: it wakes a
    parked runner or, when none is left, creates one. So the pool grows with the
    number of handlers suspended at once, and no further.
    """

    def __init__(self, *, max_idle: int = 2, name: str = "sporeflow") -> None:
        self.max_idle = max_idle
        self.name = name
        self.ready: deque[AgentLane] = deque()
        self.runners = 0
        self._parked: deque[asyncio.Future[None]] = deque()
        self.coming = 0  # runners created or woken that have not yet looked for work
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def schedule(self, lane: AgentLane) -> None:
        """Queue a runnable ``lane`` and make sure a runner is coming for it."""
        self.ready.append(lane)
        if not self.coming:
            self.call_runner()

    def call_runner(self) -> None:
        """Wake a parked runner, or create one."""
        self.coming += 1
        parked = self._parked
        while parked:
            waiter = parked.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.runners += 1
        task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}:runner")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        ready, parked = self.ready, self._parked
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        try:
            while not self._closed:
                self.coming -= 1
                since = loop.time()
                while ready:
                    lane = ready.popleft()
                    lane.scheduled = False
                    if lane.backlog.size:
                        await lane.serve(self, task)
                        # Let the loop run between bursts now and then: not after every
                        # one (a turn of the loop is a system call), but often enough
                        # that quick handlers never hold it for long.
                        if ready and loop.time() - since > HOLD_LOOP_AT_MOST:
                            await asyncio.sleep(0)
                            since = loop.time()
                if len(parked) >= self.max_idle:
                    return
                waiter = loop.create_future()
                parked.append(waiter)
                await waiter
        finally:
            self.runners -= 1
            if self.ready and not self.coming and not self._closed:
                self.call_runner()  # this runner was cancelled with lanes still waiting

    def forget(self, tasks: set[asyncio.Task[Any]]) -> None:
        """Stop waiting for runners whose handlers were abandoned (see AgentLane.cancel)."""
        self._tasks.difference_update(tasks)

    async def close(self) -> None:
        """End the parked runners (handlers still running are their lanes' to cancel)."""
        self._closed = True
        for waiter in self._parked:
            if not waiter.done():
                waiter.cancel()
        self._parked.clear()
        tasks = [task for task in self._tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks)
