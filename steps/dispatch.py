"""flatmap-dispatch: hand each delivery to its agent's lane, which runs the handler
(:mod:`sporeflow.steps.lanes`, on the runners of :mod:`sporeflow.steps.runners`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError
from sporeflow.config.reasons import Reason
from sporeflow.steps.lanes import AgentLane
from sporeflow.steps.runners import RunnerPool
from sporeflow.steps.types import Delivery, Reject

__all__ = ["dispatch"]


@pipable_operator
async def dispatch(
    source: AsyncIterable[list[Delivery]],
    *,
    lanes: Callable[[], Mapping[str, AgentLane]],
    on_reject: Reject,
    runners: RunnerPool,
) -> AsyncIterator[list[Delivery]]:
    """Hand each delivery to its agent's lane; yield the deliveries handed over. The
    batch's handlers start in this turn (see :meth:`RunnerPool.run_held`)."""
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            current = lanes()
            runners.hold()
            try:
                for spore, targets in deliveries:
                    for name in targets:
                        lane = current.get(name)
                        if lane is None:  # removed by a reload between route and here
                            on_reject(spore, Reason.UNKNOWN_AGENT, DeliveryError(
                                f"agent {name!r} was removed before spore {spore.id} "
                                f"reached it", reason=Reason.UNKNOWN_AGENT))
                        else:
                            lane.deliver(spore)
            finally:
                runners.run_held()
            yield deliveries
