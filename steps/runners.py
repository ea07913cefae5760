"""The tasks that run every lane's handlers (see :mod:`sporeflow.steps.lanes`).

A quick handler costs no task of its own, however many agents there are: a runner
takes a runnable lane, runs a burst of its spores' handlers one after another, and
moves on; tasks are made only when a handler really suspends and other lanes are
waiting (each handler still runs start to end in one task, so ``asyncio.timeout``
and ``current_task()`` behave as usual).

The chain hands a batch to the lanes between :meth:`RunnerPool.hold` and
:meth:`RunnerPool.run_held`, which starts a runner eagerly (:mod:`sporeflow.steps.eager`)
for the lanes made runnable: their handlers run in the chain's turn of the loop, not a
turn later in a runner woken for them, and their replies are in the intake before the
chain looks for its next batch. A handler that waits leaves its runner a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from sporeflow.steps.eager import start_eagerly
from sporeflow.steps.lanes import AgentLane

log = logging.getLogger(__name__)

__all__ = ["RunnerPool"]

_HOLD_LOOP_AT_MOST = 0.01  # seconds a runner runs bursts before it lets the loop run


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
        self._held = False
        self._eager_since: float | None = None  # when handlers first ran eagerly this turn

    def schedule(self, lane: AgentLane) -> None:
        """Queue a runnable ``lane`` and make sure a runner is coming for it (held: at
        :meth:`run_held`)."""
        self.ready.append(lane)
        if not self.coming and not self._held:
            self.call_runner()

    def hold(self) -> None:
        """Call no runner for lanes made runnable until :meth:`run_held`."""
        self._held = True

    def run_held(self) -> None:
        """Run the lanes made runnable since :meth:`hold` now, in this turn of the loop,
        on a runner started eagerly, unless one is coming already. Once the handlers run so
        have held this turn of the loop for ``_HOLD_LOOP_AT_MOST``, a runner is woken for
        them instead: timers, senders and stops get their turn between bursts of replies."""
        self._held = False
        if not self.ready or self.coming or self._closed:
            return
        if self._eager_since is None:  # real time: how long the loop is held, whatever its clock
            self._eager_since = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._loop_turned)
        elif time.perf_counter() - self._eager_since > _HOLD_LOOP_AT_MOST:
            self.call_runner()
            return
        self.coming += 1
        self.runners += 1
        runner = self._run()
        try:
            task = start_eagerly(runner, name=f"{self.name}:runner")
        except Exception:  # noqa: BLE001 - a runner that could not start: one as usual
            log.exception("a runner of %s could not start eagerly", self.name)
            runner.close()
            self.coming -= 1
            self.runners -= 1
            self.call_runner()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _loop_turned(self) -> None:
        self._eager_since = None

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
                        if ready and loop.time() - since > _HOLD_LOOP_AT_MOST:
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
