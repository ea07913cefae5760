"""flatmap-dispatch: hand each delivery to its agent's lane, which runs the handler
(:mod:`sporeflow.steps.lanes`, on the runners of :mod:`sporeflow.steps.runners`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError
from sporeflow.config.reasons import Reason
from sporeflow.steps.lanes import AgentLane
from sporeflow.steps.spore import Spore
from sporeflow.steps.types import Delivery, Reject

__all__ = ["dispatch", "hand_to_lanes"]

# Where a spore owed to an agent a reload removed goes: its retiring lane (None: none).
Retiring = Callable[[Spore, str], AgentLane | None]


def _none(spore: Spore, name: str) -> AgentLane | None:
    return None


@pipable_operator
async def dispatch(
    source: AsyncIterable[list[Delivery]],
    *,
    lanes: Callable[[], Mapping[str, AgentLane]],
    on_reject: Reject,
    retiring: Retiring = _none,
) -> AsyncIterator[list[Delivery]]:
    """Hand each delivery to its agent's lane; yield the deliveries handed over."""
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            hand_to_lanes(deliveries, lanes(), on_reject, retiring)
            yield deliveries


def hand_to_lanes(deliveries: Iterable[Delivery], lanes: Mapping[str, AgentLane],
                  on_reject: Reject, retiring: Retiring = _none) -> None:
    """Queue each spore in its targets' lanes. A spore for an agent no longer in
    ``lanes`` goes to the lane ``retiring`` gives (accepted for that agent before a reload
    removed it), else is refused. The one way a batch reaches lanes, with a broker too."""
    for spore, targets in deliveries:
        for name in targets:
            lane = lanes.get(name)
            if lane is None:
                lane = retiring(spore, name)
                if lane is None:
                    on_reject(spore, Reason.UNKNOWN_AGENT, DeliveryError(
                        f"agent {name!r} was removed before spore {spore.id} reached it",
                        reason=Reason.UNKNOWN_AGENT))
                    continue
            lane.deliver(spore)
