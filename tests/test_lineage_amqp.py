"""Lineage across RabbitMQ: every spore of a three-hop conversation crosses the real broker
(published by the chain's last stage, consumed back) and keeps its parent and its
conversation; the trace of the root is whole on the far side."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.core.lineage import trace_tree
from sporeflow.pipeline.observe.lineage import TraceWindow

from .conformance.harness import (
    AMQP_URL,
    BACKSTOP,
    Harness,
    broker_reachable,
    wait_for,
)
from .test_praval_interop import praval

pytestmark = pytest.mark.amqp



async def test_a_three_hop_conversation_keeps_its_lineage_over_the_broker(
        harness: Harness) -> None:
    seen: dict[str, Spore] = {}

    async def front(spore: Spore, ctx: Any) -> dict[str, Any]:
        seen["front"] = spore
        return {"step": "to middle"}

    async def middle(spore: Spore, ctx: Any) -> None:
        seen["middle"] = spore
        seen["answer"] = await ctx.request("back", {"step": "asked"}, timeout=30)

    async def back(spore: Spore, ctx: Any) -> dict[str, Any]:
        seen["back"] = spore
        return {"step": "answered"}

    window = TraceWindow()
    agents = {"front": {"handler": front, "emit": {"to": "middle"}},
              "middle": {"handler": middle}, "back": {"handler": back}}
    async with harness.running({"agents": agents}) as org:
        org.add_hook(window)
        root = await org.send("front", {"step": "start"}, sender="cli",
                              correlation_id="conv-7")
        await wait_for(lambda: "answer" in seen)
        await harness.quiet(org)
        # The root, front's reply and the request went by the broker (the response
        # resolves its request in this process).
        assert org.stats()["broker"]["published"] >= 3
    assert (seen["front"].id, seen["front"].correlation_id) == (root.id, "conv-7")
    assert (seen["middle"].causation_id, seen["middle"].correlation_id) == (root.id, "conv-7")
    assert seen["back"].spore_type is SporeType.REQUEST
    assert (seen["back"].causation_id, seen["back"].correlation_id) == (
        seen["middle"].id, "conv-7")
    assert (seen["answer"].causation_id, seen["answer"].correlation_id) == (
        seen["back"].id, "conv-7")
    tree = trace_tree(window.steps, root.id)
    assert tree is not None
    [to_middle] = tree.children
    [asked] = to_middle.children
    assert (to_middle.id, asked.id) == (seen["middle"].id, seen["back"].id)
    assert [child.steps[0].spore_type for child in asked.children] == ["response"]


async def test_a_roots_first_hop_over_the_broker_carries_its_id_as_the_conversation(
        harness: Harness) -> None:
    seen: list[Spore] = []

    async def front(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"step": "next"}

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append(spore)

    agents = {"front": {"handler": front, "emit": {"to": "sink"}}, "sink": {"handler": sink}}
    async with harness.running({"agents": agents}) as org:
        root = await org.send("front", {})  # no correlation id: its own id is the conversation
        await wait_for(lambda: len(seen) == 1)
        await harness.quiet(org)
    assert (seen[0].causation_id, seen[0].correlation_id) == (root.id, root.id)


async def test_a_praval_request_with_a_correlation_id_gets_it_back_with_its_cause() -> None:
    why = broker_reachable()
    if why is not None:  # a clear failure, never a skip
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    reef_module, backend_module = praval()
    exchange = f"lineage-praval-{uuid.uuid4().hex[:10]}"
    reef = reef_module.Reef(backend=backend_module.RabbitMQBackend())
    await reef.initialize_backend({"url": AMQP_URL, "exchange_name": exchange})
    seen: list[Spore] = []

    async def square(spore: Spore, ctx: Any) -> dict[str, Any]:
        seen.append(spore)
        return {"square": spore.knowledge["n"] ** 2}

    spec = organism_from_dict({"organism": {"name": "lineage", "broker": {"exchange": exchange}},
                               "agents": {"squarer": {"handler": square}}})
    org = Organism(spec, backend=AMQP_URL)
    try:
        async with org.running():
            # Praval pairs a response only if its correlation id is the request's.
            response = await reef.arequest_and_wait(
                "praval_asker", "squarer", {"n": 3}, timeout=BACKSTOP,
                correlation_id="conv-p", causation_id="before")
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
        await reef.close_backend()
        reef.shutdown(wait=False)
    [request] = seen
    assert (request.causation_id, request.correlation_id) == ("before", "conv-p")
    assert response.knowledge == {"square": 9}
    assert (response.causation_id, response.correlation_id) == (request.id, "conv-p")
