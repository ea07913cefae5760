"""An organism joined to its broker: the bridge made for it, and the chain's last stage.

On the embedded path (``memory``) there is no bridge, and the chain's last stage hands
deliveries to lanes itself (``steps.dispatch``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

from aiostream import pipable_operator, streamcontext

from sporeflow.config import OrganismSpec
from sporeflow.pipeline.broker.backend import Backend
from sporeflow.pipeline.broker.bridge import Bridge
from sporeflow.pipeline.broker.factory import open_backend
from sporeflow.pipeline.broker.hosting import without_broker
from sporeflow.pipeline.core.ingress import Ingress
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.steps import Delivery

__all__ = ["attach_bridge", "make_bridge", "publish_deliveries"]


def make_bridge(spec: OrganismSpec, backend: Backend | str | None,
                hosted: Iterable[str] | None) -> Bridge | None:
    """The bridge for ``spec``: None on the embedded path (``memory``)."""
    chosen = open_backend(spec.backend if backend is None else backend) if (
        backend is None or isinstance(backend, str)) else backend
    if chosen is None:
        without_broker(spec, hosted)
        return None
    return Bridge(spec, chosen, hosted=hosted)


def attach_bridge(bridge: Bridge, ledger: Ledger, ingress: Ingress, *,
                  on_failure: Callable[[Exception | None], None]) -> None:
    """Join a run's ``ledger`` and ``ingress`` to ``bridge``: it hears of every settlement,
    sends what goes to other processes, confirms outside sends (across a lost broker), and
    fails the organism when it gives the broker up."""
    ledger.add_hook(bridge)
    ledger.on_outside = bridge.outside_or(ledger.return_outside)
    ingress.confirm = bridge.publisher.confirmed
    bridge.publisher.on_failure = on_failure


@pipable_operator
async def publish_deliveries(source: AsyncIterable[list[Delivery]], *,
                             bridge: Bridge) -> AsyncIterator[list[Delivery]]:
    """Hand deliveries from the broker to their lanes, publish the others; pass them on."""
    async with streamcontext(source) as batches:
        async for deliveries in batches:
            bridge.deliver_or_publish(deliveries)
            yield deliveries
