"""Faults of RabbitMQ other than an outage (``test_broker_outage``): its memory alarm,
an operator closing a connection, a reload while the broker is away.

Every test runs against a RabbitMQ node of this module's own (``private_broker``): the
shared one on 5672 is never touched. What a test turns on in the node (an alarm) it
turns off in its ``finally``, whether it passed or not; the node stops after the module.
The tests wait on conditions, a backstop failing them, never on a clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .private_broker import PrivateBroker

pytestmark = pytest.mark.amqp

BACKSTOP = 30.0  # seconds: each step here takes well under one on a healthy node


async def wait_for(condition: Callable[[], bool], what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + BACKSTOP
    while not condition():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"not within {BACKSTOP}s: {said}")
        await asyncio.sleep(0.02)


def url_of(broker: PrivateBroker) -> str:
    return f"{broker.url}?reconnect_interval=0.1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connections(broker: PrivateBroker) -> list[str]:
    """The node's client connections now, by their Erlang pid."""
    lines = broker.ctl("list_connections", "pid", "--quiet", "--no-table-headers")
    return [line.split()[0] for line in lines.splitlines() if line.startswith("<")]


async def test_a_response_made_again_for_a_redelivered_request_is_a_copy_not_a_dead_letter(
        private_broker: PrivateBroker) -> None:
    """Found by a fault injector: a responder's connection closed by an operator
    (``rabbitmqctl close_connection``) while it handled a request; the request came
    again, was handled again, and the second response, the same spore as the first
    (same id), was dead-lettered 'unexpected response' ("which is no pending request"),
    here and on the broker's dead-letter queue: at-least-once delivery told as an error.
    """
    runs: list[str] = []
    release = asyncio.Event()

    async def oracle(spore: Spore, ctx: Any) -> dict[str, Any]:
        runs.append(spore.id)
        await release.wait()
        return {"square": spore.knowledge["n"] ** 2}

    spec = Organism.from_dict({"organism": {"name": unique("copies"),
                                            "broker": {"give_up_after": "1m"}},
                               "agents": {"oracle": {"handler": oracle, "concurrency": 2}}}).spec
    topology = Topology.of(spec)
    url = url_of(private_broker)
    responder = Organism(spec, backend=url, hosted=["oracle"])
    requester = Organism(spec, backend=url, hosted=[])
    await responder.start()
    try:
        # The responder's, alone so far.
        [its_connection] = await asyncio.to_thread(connections, private_broker)
        await requester.start()
        asking = asyncio.create_task(requester.request("oracle", {"n": 3}, timeout=BACKSTOP))
        await wait_for(lambda: len(runs) == 1, "the responder took the request")
        await asyncio.to_thread(private_broker.ctl, "close_connection", its_connection,
                                "an operator closed it")
        await wait_for(lambda: len(runs) == 2, "the request came again and runs again")
        assert runs[0] == runs[1]
        release.set()  # both runs answer, with the same response
        answer = await asking
        both = (requester, responder)

        def settled() -> int:
            return sum(org.stats()["totals"].get("duplicate_responses", 0)
                       + len(org.dead_letters) for org in both)

        await wait_for(lambda: settled() >= 1, "the second response was settled")
        await responder.idle()
        await requester.idle()
    finally:
        release.set()
        await requester.stop(drain_timeout=2)
        await responder.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)
    assert answer.knowledge == {"square": 9}
    assert [list(org.dead_letters) for org in both] == [[], []]
    assert sum(org.stats()["totals"]["duplicate_responses"] for org in both) == 1
