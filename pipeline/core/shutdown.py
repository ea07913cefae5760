"""The end of a run: cancel what still runs and dead-letter what is still held."""

from __future__ import annotations

from collections.abc import Sequence

from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.steps import AgentLane

__all__ = ["abandon_all"]


async def abandon_all(lanes: Sequence[tuple[str, AgentLane]], ledger: Ledger) -> int:
    """Cancel the handlers still running in ``lanes`` and dead-letter (reason
    ``shutdown``) what they and the intake still hold; return how many spores."""
    # Pause every lane before cancelling any: a handler's cancellation may still send
    # replies, and they must find lanes that keep them for the dead letters below.
    for _, lane in lanes:
        lane.pause()
    left = 0
    for _, lane in lanes:
        left += await lane.cancel(Reason.SHUTDOWN)
    for name, lane in lanes:
        left += ledger.abandon(lane.drain_queue() + lane.cancel_timers(), name, Reason.SHUTDOWN)
    left += ledger.abandon([(spore, 0) for spore in ledger.intake.finish()], None,
                           Reason.SHUTDOWN)
    return left
