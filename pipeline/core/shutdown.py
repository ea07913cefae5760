"""The end of a run: cancel what still runs and dead-letter what is still held."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

from sporeflow.config.errors import OrganismStateError
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.run import Run
from sporeflow.steps import AgentLane
from sporeflow.steps.lanes import lane_running_here

__all__ = ["CANCEL_GRACE", "OneStop", "abandon_all", "drain_then_abandon", "kept_where"]

# Seconds a cancelled handler gets to end at a stop (at most a quarter of the drain).
CANCEL_GRACE = 0.5


async def drain_then_abandon(run: Run, lanes: Callable[[], Sequence[tuple[str, AgentLane]]],
                             drain_timeout: float | None, hurry: asyncio.Future[None]) -> int:
    """Let ``run`` finish its work, then cancel and dead-letter what is
    left (see :func:`abandon_all`); return how many spores. ``drain_timeout`` bounds
    both: the drain gets it less the grace cancelled handlers get to end. Once ``hurry``
    is done (the stop's caller was cancelled: see :class:`OneStop`) it drains no more:
    what is left is abandoned as after a timeout, never left unsaid."""
    grace = CANCEL_GRACE if drain_timeout is None else min(CANCEL_GRACE, drain_timeout / 4)
    idle = asyncio.ensure_future(run.idle())
    try:
        await asyncio.wait((idle, hurry), return_when=asyncio.FIRST_COMPLETED,
                           timeout=None if drain_timeout is None else drain_timeout - grace)
    finally:
        if not idle.done():
            idle.cancel()
            await asyncio.wait((idle,))
    if not idle.cancelled() and idle.exception() is not None:
        raise idle.exception()  # type: ignore[misc]  # the chain crashed: the stop says so
    return await abandon_all(lanes(), run.ledger, grace)


async def abandon_all(lanes: Sequence[tuple[str, AgentLane]], ledger: Ledger,
                      grace: float | None = None) -> int:
    """Cancel the handlers still running in ``lanes`` and dead-letter (reason
    ``shutdown``) what they and the intake still hold; return how many spores.

    A handler that has not ended ``grace`` seconds after its cancellation is abandoned
    and reported: a stop never waits on it longer.
    """
    # Pause every lane before cancelling any: a handler's cancellation may still send
    # replies, and they must find lanes that keep them for the dead letters below.
    for _, lane in lanes:
        lane.pause()
    left = 0
    for name, lane in lanes:
        before = lane.abandoned
        left += await lane.cancel(Reason.SHUTDOWN, grace)
        if lane.abandoned > before:
            ledger.logger.error(
                "%d handler(s) of agent %r ignored their cancellation for %ss and were "
                "abandoned; their spores are dead-lettered as 'shutdown' (a handler must "
                "not swallow asyncio.CancelledError)", lane.abandoned - before, name, grace)
    for name, lane in lanes:
        left += ledger.abandon(lane.give_up_held(), name, Reason.SHUTDOWN)
    left += ledger.abandon([(spore, 0) for spore in ledger.intake.finish()], None,
                           Reason.SHUTDOWN)
    return left


class _Failing(Protocol):
    @property
    def failure(self) -> BaseException | None: ...


def kept_where(journal: _Failing | None) -> str:
    """Where a stop's unfinished spores went, for its summary: never said kept for the
    next start when the journal failed (its error says what is durable)."""
    if journal is None or journal.failure is None:
        return "kept for the next start (journal, broker)"
    return "left to the journal, which failed: its error says what is durable"


class OneStop:
    """One stop at a time: a stop called while another drains returns once that one has
    ended (with 0: the spores it left are the first one's to tell), never while handlers
    still run. A stop awaited in a handler is refused: it would wait for that handler,
    then cancel it, and itself with it."""

    def __init__(self, lanes: Callable[[], Collection[AgentLane]]) -> None:
        self._lanes = lanes  # the organism's: a handler of another one may stop this one
        self._ended: asyncio.Future[None] | None = None

    async def run(self, stop: Callable[[asyncio.Future[None]], Awaitable[int]]) -> int:
        """Run ``stop(hurry)`` to its end whatever happens to this call: cancelled (a
        Ctrl-C, a ``wait_for`` around it, a handler's task it runs in), the stop drains
        no more (``hurry``), ends, says what it left, and then the cancellation is
        raised. Cut off half-way, it would leave the organism stopping for good."""
        if (here := lane_running_here()) is not None and here[0] in self._lanes():
            lane, spore = here
            raise OrganismStateError(
                f"organism.stop() awaited in the handler of {lane.name!r} (spore "
                f"{spore.id}): a stop waits for every handler to end, this one too; let "
                f"a task stop it, asyncio.create_task(organism.stop()), or use "
                f"organism.stop_when(...)")
        if self._ended is not None:
            await asyncio.shield(self._ended)
            return 0
        loop = asyncio.get_running_loop()
        ended = self._ended = loop.create_future()
        hurry: asyncio.Future[None] = loop.create_future()
        stopping = asyncio.ensure_future(stop(hurry))
        cancelled = False
        try:
            while True:
                try:
                    left = await asyncio.shield(stopping)
                    break
                except asyncio.CancelledError:
                    if stopping.cancelled():
                        raise
                    cancelled = True
                    if not hurry.done():
                        hurry.set_result(None)
        finally:
            self._ended = None
            ended.set_result(None)
        if cancelled:
            raise asyncio.CancelledError
        return left
