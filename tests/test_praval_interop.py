"""A Praval 0.8.4 agent on its RabbitMQ backend and a sporeflow agent, on one broker.

Praval publishes ``agent.<to>.<type>`` on its exchange with the headers and body of
``Spore.to_amqp_message``; sporeflow's default direct key is the same, and the
exchange name is the organism's ``broker.exchange``. What sporeflow sends back
to a sender that is no agent of its organism goes by that sender's direct key,
where Praval's response waiter listens.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, broker_reachable

pytestmark = pytest.mark.amqp
BACKSTOP = 15.0


@pytest.fixture
def exchange() -> str:
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    return f"praval-interop-{uuid.uuid4().hex[:10]}"


def praval() -> tuple[Any, Any]:
    """Praval's reef and backend modules; a clear failure (never a skip) without them."""
    try:
        from praval.core import reef, reef_backend
    except ImportError as exc:
        pytest.fail(f"praval is not installed ({exc}); pip install 'sporeflow[interop]'")
    return reef, reef_backend


@pytest.fixture
async def reef(exchange: str) -> AsyncIterator[Any]:
    """A Praval reef on its RabbitMQ backend, on ``exchange``."""
    reef_module, backend_module = praval()
    reef = reef_module.Reef(backend=backend_module.RabbitMQBackend())
    await reef.initialize_backend({"url": AMQP_URL, "exchange_name": exchange})
    try:
        yield reef
    finally:
        await reef.close_backend()
        reef.shutdown(wait=False)


def organism(exchange: str, agents: dict[str, Any]) -> Organism:
    spec = organism_from_dict({"organism": {"name": "interop", "broker": {"exchange": exchange}},
                               "agents": agents})
    return Organism(spec, backend=AMQP_URL)


async def test_a_praval_request_is_answered_by_a_sporeflow_agent(exchange: str,
                                                                 reef: Any) -> None:
    seen: list[Spore] = []

    async def square(spore: Spore, ctx: Any) -> dict[str, Any]:
        seen.append(spore)
        return {"square": spore.knowledge["n"] ** 2}

    org = organism(exchange, {"squarer": {"handler": square}})
    try:
        async with org.running():
            response = await reef.arequest_and_wait("praval_asker", "squarer", {"n": 7},
                                                    timeout=BACKSTOP)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert (response.spore_type.value, response.knowledge) == ("response", {"square": 49})
    assert (response.from_agent, response.to_agent) == ("squarer", "praval_asker")
    [request] = seen
    assert (request.from_agent, request.spore_type, request.knowledge) == (
        "praval_asker", SporeType.REQUEST, {"n": 7})
    assert response.reply_to == request.id
    assert request.expires_at is not None
    assert request.created_at.tzinfo is not None


async def test_what_a_sporeflow_agent_returns_to_a_praval_sender_reaches_it(
        exchange: str, reef: Any) -> None:
    heard: asyncio.Queue[Any] = asyncio.Queue()

    async def greet(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"text": f"hello, {spore.knowledge['name']}"}

    org = organism(exchange, {"greeter": {"handler": greet}})
    try:
        async with org.running():
            handle = await reef.backend.subscribe_handler("agent.praval_friend",
                                                          heard.put_nowait)
            spore = reef._create_spore("praval_friend", "greeter", {"name": "Ada"},
                                       praval()[0].SporeType.KNOWLEDGE)
            await reef.backend.send(spore, "main")
            reply = await asyncio.wait_for(heard.get(), BACKSTOP)
            await reef.backend.unsubscribe_handler(handle)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert (reply.from_agent, reply.to_agent, reply.knowledge) == (
        "greeter", "praval_friend", {"text": "hello, Ada"})
