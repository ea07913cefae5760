"""Switching ``organism.broker.queue_type`` on a deployment whose queues exist: RabbitMQ
never changes a queue's type, and the error names the setting and the fix (README,
*Queue types*), whichever argument RabbitMQ happens to report first."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import BrokerError
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, broker_reachable

pytestmark = pytest.mark.amqp


def topology(name: str, **broker: Any) -> Topology:
    return Topology.of(organism_from_dict({"organism": {"name": name, "broker": broker},
                                           "agents": {"a": {"handler": print}}}))


@pytest.mark.parametrize("overflow", ["reject-publish", "drop-head"])
async def test_quorum_queues_declared_classic_name_queue_type_and_the_fix(
        overflow: str) -> None:
    # Found by a tester: with the default overflow, RabbitMQ reports the quorum-only
    # x-dead-letter-strategy first, and the error told to rename the exchange instead of
    # naming organism.broker.queue_type, as README says it does.
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    name = f"qsw-{uuid.uuid4().hex[:10]}"
    quorum = topology(name, queue_type="quorum", overflow=overflow)
    try:
        async with AmqpBackend(AMQP_URL) as backend:
            await backend.open(quorum)
        with pytest.raises(BrokerError) as refused:
            async with AmqpBackend(AMQP_URL) as again:
                await again.open(topology(name, overflow=overflow))
        text = str(refused.value)
        assert f"holds queue 'sporeflow.{name}.a' with x-queue-type=quorum" in text
        assert "(organism.broker.queue_type)" in text
        assert "keep the old setting (organism.broker.queue_type: quorum)" in text
        assert "organism.broker.exchange" not in text
    finally:
        await AmqpBackend(AMQP_URL).destroy(quorum)
