"""A process closing its broker connection says nothing alarming: found by a new user,
whose send-only client printed aiormq's "Consumer ... cancelled by the broker" WARNING
at every clean exit (its reply queue was deleted under its consumer)."""

from __future__ import annotations

import logging
import uuid

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, BACKSTOP, broker_reachable


@pytest.mark.amqp
async def test_a_client_that_asked_closes_without_a_broker_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    if (why := broker_reachable()) is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")

    def echo(spore: object, ctx: object) -> dict[str, int]:
        return {"ok": 1}

    spec = organism_from_dict({"organism": {"name": f"close-{uuid.uuid4().hex[:12]}"},
                               "agents": {"echo": {"handler": echo}}})
    worker = Organism(spec, backend=AmqpBackend(AMQP_URL))
    client = Organism(spec, backend=AmqpBackend(AMQP_URL), hosted=[])
    try:
        async with worker.running(drain_timeout=BACKSTOP):
            with caplog.at_level(logging.WARNING):
                async with client.running(drain_timeout=BACKSTOP):
                    response = await client.request("echo", {"q": 1}, timeout=BACKSTOP)
                    assert response.knowledge == {"ok": 1}
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(spec))
    noisy = [r.getMessage() for r in caplog.records if "cancelled by the broker" in
             r.getMessage()]
    assert noisy == []
