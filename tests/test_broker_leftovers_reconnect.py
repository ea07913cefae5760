"""A reconnection declares again what a process declared at its start: recorded, so that
a newer organism file's next declaration takes it away again (``amqp_declared.remember``).

Found by a fault injector: a process of the old file (an agent ``audit`` subscribing to
``orders``) still running while a process of the new file (no ``audit``) declared and
unbound ``audit``'s queue; RabbitMQ restarted, the old process's connection declared its
bindings again (aio-pika's restore) without updating the record, and no later
declaration of the new file took them away: ``audit``'s queue, no agent's any more,
bound, filled with every broadcast on ``orders`` for good (a subscription removed: a ``wrong
queue`` dead letter for each). On a RabbitMQ node of this module's own, restarted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aio_pika
import pytest

from sporeflow.pipeline import Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import BACKSTOP, wait_for
from .private_broker import PrivateBroker

pytestmark = pytest.mark.amqp


async def test_bindings_restored_by_a_reconnection_are_taken_away_by_the_next_declaration(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    exchange = f"leftover-{uuid.uuid4().hex[:8]}"
    old = Topology(exchange=exchange, subscriptions={"billing": ("orders",),
                                                     "audit": ("orders",)})
    new = Topology(exchange=exchange, subscriptions={"billing": ("orders",)})
    url = f"{private_broker.url}?reconnect_interval=0.1"
    running = AmqpBackend(url)  # a process of the old file, still running
    running.link.give_up_after = BACKSTOP  # as the bridge sets it from the file
    await running.open(old)
    try:
        first = AmqpBackend(url)  # a process of the new file starts: audit unbound
        await first.open(new)
        await first.close()
        assert ((old.queue("audit"), "channel.orders.*") in first.leftovers.unbound)

        with caplog.at_level(logging.INFO, logger="sporeflow.broker.amqp"):
            await asyncio.to_thread(private_broker.stop_app)
            await asyncio.to_thread(private_broker.start_app)
            await wait_for(lambda: running.link.up and "reconnection are recorded"
                           in caplog.text, BACKSTOP)
    finally:
        await running.close()

    second = AmqpBackend(url)  # the old process is gone: the new file declared again
    await second.open(new)
    try:
        assert (old.queue("audit"), "channel.orders.*") in second.leftovers.unbound
        assert second.leftovers.deleted == (old.queue("audit"),)  # empty and unused
        await second.publish(Spore(knowledge={"n": 1}, channel="orders"),
                             routing_key=new.broadcast_key.format(channel="orders",
                                                                  type="broadcast"))
        connection = await aio_pika.connect(private_broker.url)
        async with connection:
            channel = await connection.channel()
            billing = await channel.declare_queue(new.queue("billing"), passive=True)
            assert billing.declaration_result.message_count == 1
    finally:
        await second.destroy(new)
        await second.close()
