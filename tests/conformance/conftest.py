"""The ``backend`` fixture: each conformance test runs on every backend (see harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .harness import Harness, broker_reachable


@pytest.fixture(params=["embedded", "memory-broker",
                        pytest.param("amqp", marks=pytest.mark.amqp)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "amqp":
        why = broker_reachable()
        if why is not None:
            pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it "
                        f"(rabbitmq-server -detached, as .ci/run does): the amqp tests "
                        f"never skip")
    harness = Harness(request.param)
    try:
        yield harness
    finally:
        await harness.cleanup()
