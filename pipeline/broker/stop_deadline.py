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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sporeflow.pipeline.broker.backend import Backend

__all__ = ["LEAST", "StopDeadline"]

LEAST = 1.0  # seconds: the least a stop gives the broker


class StopDeadline:
    """Drops ``backend``'s connection at a stop's deadline and cancels ``tasks()``."""

    def __init__(self, backend: Backend, tasks: Callable[[], Iterable[asyncio.Task[Any]]],
                 logger: logging.Logger) -> None:
        self._backend = backend
        self._tasks = tasks
        self._logger = logger
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, within: float | None) -> None:
        """The stop began: drop the connection ``within`` seconds from now (None: never)."""
        if within is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(max(within, LEAST), self._drop)

    def disarm(self) -> None:
        """The bridge closed in time."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drop(self) -> None:
        self._timer = None
        address = self._backend.address
        self._logger.warning(
            "the stop's time ran out with RabbitMQ at %s still owing confirms or answers (is "
            "it blocking the connection, under its memory or disk alarm?); dropping the "
            "connection: what it did not confirm was not sent, what was unacked goes back "
            "to its queues", address)
        self._backend.abort("the organism's stop ran out of time waiting for it")
        for task in list(self._tasks()):
            task.cancel()
