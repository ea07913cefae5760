"""A response whose reply queue the broker cannot route to just now waits for it.

Found by the kill -9 outage test (1 run in 3 of the suite): after RabbitMQ's node was
killed and started again, the responder's process was back first and answered a request
redelivered to it; the broker returned the response (NO_ROUTE: no queue took the
requester's reply key) until the requester's process, reconnecting, declared its reply
queue and binding again. The response was dead-lettered at once, its request left to
time out. A response's reply route missing is waited out for a bounded time now.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, wait_for

pytestmark = pytest.mark.amqp

BACKSTOP = 20.0


async def test_a_response_whose_reply_queue_is_unbound_for_a_moment_reaches_it() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def oracle(spore: Spore, ctx: Any) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return {"square": spore.knowledge["n"] ** 2}

    built = Organism.from_dict({"organism": {"name": f"route-{uuid.uuid4().hex[:10]}"},
                                "agents": {"oracle": {"handler": oracle}}})
    topology = Topology.of(built.spec)
    responder = Organism(built.spec, backend=AMQP_URL, hosted=["oracle"])
    requester = Organism(built.spec, backend=AMQP_URL, hosted=[])
    await responder.start()
    await requester.start()
    admin = await aio_pika.connect(AMQP_URL)
    try:
        asking = asyncio.create_task(requester.request("oracle", {"n": 7}, timeout=BACKSTOP))
        await asyncio.wait_for(entered.wait(), BACKSTOP)
        reply_queue = requester.stats()["broker"]["reply_queue"]
        key = topology.reply_key(reply_queue)
        assert key is not None
        channel = await admin.channel()
        queue = await channel.declare_queue(reply_queue, passive=True)
        await queue.unbind(topology.exchange, routing_key=key)  # as after a broker's loss
        release.set()
        await wait_for(lambda: responder.stats()["broker"]["connection"]["failed_publishes"]
                       > 0)  # the broker returned the response
        await queue.bind(topology.exchange, routing_key=key)  # the requester declares again
        answer = await asyncio.wait_for(asking, BACKSTOP)
        assert answer.knowledge == {"square": 49}
        assert list(responder.dead_letters) == []
    finally:
        release.set()
        await admin.close()
        await requester.stop(drain_timeout=2)
        await responder.stop(drain_timeout=2)
        await AmqpBackend(AMQP_URL).destroy(topology)
