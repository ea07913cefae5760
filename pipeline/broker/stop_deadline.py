"""How long a stop waits on the broker: until the stop's deadline, then the connection is
dropped.

RabbitMQ may keep a connection up and read nothing from it: under its memory or disk
alarm it blocks each connection that publishes (``connection.blocked``), which then gets
no confirm, and no answer to a cancel or a close, for as long as the alarm lasts. A stop
waits on the broker three ways (its consumers' cancel, the confirms and acks still due,
the close), and each would wait so, past the stop's ``drain_timeout``. So a stop arms a
:class:`StopDeadline` as it begins (``Bridge.stop_consuming``). If the bridge has not
closed ``drain_timeout`` later (at least ``LEAST``: a healthy broker's confirms in flight
end well within it), the connection is dropped (``Backend.abort``): each publish not
confirmed fails (the output of a delivery is made again when the delivery comes back; an
outside spore is a dead letter, ``broker error``, though it may have arrived), what was
unacked goes back to its queue, and the bridge's own waits on the broker are cancelled.

A start cancelled (Ctrl-C, SIGTERM, a caller's timeout) is a stop without a drain, and
the broker may block its connection too (its declaration's record is a publish). Its own
cleanup waits on the broker before any stop can begin (a channel closed, a lock given
back), so the start runs in a task of its own (:meth:`StopDeadline.start`): cancelled,
the deadline is armed at once (``LEAST``), then the start is cancelled and waited for. A
start the broker blocked fails the organism saying so (``Link.blocked_start``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from sporeflow.config import SporeflowError
from sporeflow.pipeline.broker.backend import Backend

__all__ = ["LEAST", "StopDeadline"]

LEAST = 1.0  # seconds: the least a stop gives the broker
_T = TypeVar("_T")


class StopDeadline:
    """Drops ``backend``'s connection at a stop's deadline and cancels ``tasks()``."""

    def __init__(self, backend: Backend, tasks: Callable[[], Iterable[asyncio.Task[Any]]],
                 logger: logging.Logger) -> None:
        self._backend = backend
        self._tasks = tasks
        self._logger = logger
        self._timer: asyncio.TimerHandle | None = None
        self._what = "stop"  # what ran out of time, for the log

    def arm(self, within: float | None, *, what: str = "stop") -> None:
        """The stop (``what`` ends) began: drop the connection ``within`` seconds from now
        (None: never)."""
        if within is not None and self._timer is None:
            self._what = what
            self._timer = asyncio.get_running_loop().call_later(max(within, LEAST), self._drop)

    def disarm(self) -> None:
        """The bridge closed in time."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def start(self, starting: Coroutine[Any, Any, _T],
                    failed: Callable[[SporeflowError], None] | None) -> _T:
        """Await ``starting`` in a task of its own; cancelled meanwhile, arm the deadline
        at once, cancel it and wait for it, then tell ``failed`` if the broker blocked it."""
        task = asyncio.ensure_future(starting)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self.arm(0, what="cancelled start")
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # what its cleanup raised: the cancellation says it all
            blocked = self._backend.link.blocked_start()
            if blocked is not None and failed is not None:
                failed(blocked)
            raise

    def _drop(self) -> None:
        self._timer = None
        blocked = self._backend.link.blocked_by
        self._logger.warning(
            "the %s's time ran out with RabbitMQ at %s still owing confirms or answers (%s); "
            "dropping the connection: what it did not confirm was not sent, what was "
            "unacked goes back to its queues", self._what, self._backend.address,
            "is it blocking the connection, under its memory or disk alarm?" if blocked is None
            else f"it blocked the connection: {blocked}, its memory or disk alarm")
        self._backend.abort(f"the organism's {self._what} ran out of time waiting for it")
        for task in list(self._tasks()):
            task.cancel()
