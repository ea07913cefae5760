"""How long a response the broker returns (its reply route missing) is published again.

Found by a README check: README and REPLY_ROUTE_WAIT say a returned response is published
again for 10 s, but the budget summed each pause's ceiling while the pauses slept were
jittered to between half and all of it, so a response was dead-lettered after 5 to 10 s
(6.5 s on a real broker): a reply queue bound again at 7 s was missed. Virtual time here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sporeflow.pipeline.broker.publisher as publisher
from sporeflow.config import BrokerError, BrokerSpec
from sporeflow.pipeline.broker.link import Unroutable
from sporeflow.pipeline.broker.publisher import REPLY_ROUTE_WAIT, Publisher
from sporeflow.steps import Spore

from .conftest import VirtualClockLoop


class AlwaysReturned:
    """A backend whose broker returns every publish (no queue takes its key)."""

    address = "amqp://broker.invalid/"

    def __init__(self) -> None:
        self.link = self
        self.give_up_after: float | None = None
        self.attempts: list[float] = []  # the loop's time of each publish

    async def wait_up(self) -> None:
        return None

    async def unless_ended(self, attempt: Any) -> Any:
        return await attempt

    async def publish(self, spore: Spore, **where: Any) -> None:
        self.attempts.append(asyncio.get_running_loop().time())
        raise Unroutable(f"returned spore {spore.id}")


@pytest.mark.parametrize("draw", [0.0, 0.999])
def test_a_returned_response_is_published_again_for_the_whole_wait(
        monkeypatch: pytest.MonkeyPatch, draw: float) -> None:
    monkeypatch.setattr(publisher.random, "random", lambda: draw)  # the shortest pauses too
    backend = AlwaysReturned()
    response = Spore(from_agent="oracle", to_agent="asker", knowledge={})

    async def publish() -> None:
        sender = Publisher(backend, BrokerSpec(), {})  # type: ignore[arg-type]
        with pytest.raises(BrokerError, match="returned"):
            await sender.publish(response, lambda: response, queue="reply.asker")

    loop = VirtualClockLoop()
    try:
        loop.run_until_complete(publish())
    finally:
        loop.close()
    assert backend.attempts[-1] - backend.attempts[0] == pytest.approx(REPLY_ROUTE_WAIT)
