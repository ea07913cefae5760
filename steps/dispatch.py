"""flatmap-dispatch: hand each delivery to its agent's lane, which runs the handler
(:mod:`sporeflow.steps.lanes`, on the runners of :mod:`sporeflow.steps.runners`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError
from sporeflow.config.reasons import Reason
from sporeflow.steps.lanes import AgentLane
from sporeflow.steps.types import Delivery, Reject

__all__ = ["dispatch", "hand_to_lanes"]


@pipable_operator
async def dispatch(
    source: AsyncIterable[list[Delivery]],
    *,
    lanes: Callable[[], Mapping[str, AgentLane]],
    on_reject: Reject,
) -> AsyncIterator[list[Delivery]]:
    """Hand each delivery to its agent's lane; yield the deliveries handed over."""
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            hand_to_lanes(deliveries, lanes(), on_reject)
            yield deliveries


def hand_to_lanes(deliveries: Iterable[Delivery], lanes: Mapping[str, AgentLane],
                  on_reject: Reject) -> None:
    """Queue each spore in its targets' lanes; one removed by a reload since route is
    refused. The one way a batch reaches lanes, with a broker too."""
    for spore, targets in deliveries:
        for name in targets:
            lane = lanes.get(name)
            if lane is None:
                on_reject(spore, Reason.UNKNOWN_AGENT, DeliveryError(
                    f"agent {name!r} was removed before spore {spore.id} reached it",
                    reason=Reason.UNKNOWN_AGENT))
            else:
                lane.deliver(spore)
