"""A message published into an organism's reply queue is untrusted input too.

Anyone who may publish on the broker can put a message into a reply queue (by the default
exchange, its name being in every request's ``reply_to``). One that holds no spore was
logged and counted, but never dead-lettered: the same message on an agent's queue goes
to the broker's dead-letter queue, where ``sporeflow dlq`` sees it.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from sporeflow.pipeline import Spore
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, Harness, broker_dead_letters, wait_for

pytestmark = pytest.mark.amqp


async def test_a_message_holding_no_spore_on_the_reply_queue_is_dead_lettered(
        harness: Harness) -> None:
    async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"echo": spore.knowledge["n"]}

    async with harness.running({"agents": {"echo": {"handler": echo}}}) as org:
        topology = Topology.of(org.spec)
        reply_queue = org.stats()["broker"]["reply_queue"]
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(b"\xff not json", headers={"spore_id": "garbage-1"}),
                routing_key=reply_queue)
        await wait_for(lambda: org.stats()["broker"]["refused"] == 1)
        # The reply queue still serves: settling the message did not break its channel.
        response = await org.request("echo", {"n": 7}, timeout=30)
        await harness.quiet(org)
    assert response.knowledge == {"echo": 7}
    letters = await broker_dead_letters(topology)
    assert [(str(headers.get("x-sporeflow-reason")), body) for headers, body in letters] == [
        ("invalid", b"\xff not json")]
    [(headers, _)] = letters
    assert "is not JSON" in str(headers.get("x-sporeflow-error"))
