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
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, broker_reachable, wait_for

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


def organism(exchange: str, agents: dict[str, Any], **settings: Any) -> Organism:
    spec = organism_from_dict({"organism": {"name": "interop", "broker": {"exchange": exchange},
                                            **settings},
                               "agents": agents, "channels": {"alerts": {}}})
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
    seen: list[Spore] = []

    async def greet(spore: Spore, ctx: Any) -> dict[str, Any]:
        seen.append(spore)
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
    [told] = seen
    assert (told.spore_type, told.from_agent, told.knowledge) == (
        SporeType.KNOWLEDGE, "praval_friend", {"name": "Ada"})


# -- agents outside sporeflow, declared (agents: {pr: {external: praval}}) ------------------

PRAVAL = {"external": "praval"}


async def listen(reef: Any, channel: str) -> tuple[asyncio.Queue[Any], Any]:
    """What Praval's RabbitMQ backend hands a subscriber of Praval channel ``channel``."""
    heard: asyncio.Queue[Any] = asyncio.Queue()
    handle = await reef.backend.subscribe_handler(channel, heard.put_nowait)
    return heard, handle


async def queue_exists(name: str) -> bool:
    import aio_pika
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True


async def test_a_sporeflow_agent_sends_knowledge_to_a_praval_agent_and_declares_no_queue_for_it(
        exchange: str, reef: Any) -> None:
    async def tell(spore: Spore, ctx: Any) -> None:
        await ctx.send("pr", {"note": spore.knowledge["note"]})

    org = organism(exchange, {"teller": {"handler": tell}, "pr": PRAVAL})
    try:
        async with org.running():
            heard, handle = await listen(reef, "agent.pr")
            await org.send("teller", {"note": "hi"})
            spore = await asyncio.wait_for(heard.get(), BACKSTOP)
            await reef.backend.unsubscribe_handler(handle)
            await org.idle()
            queue_made = await queue_exists(Topology.of(org.spec).queue("pr"))
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert (spore.from_agent, spore.to_agent, spore.spore_type.value, spore.knowledge) == (
        "teller", "pr", "knowledge", {"note": "hi"})
    assert not queue_made  # a stub's durable queue filled up with every spore to it
    assert list(org.dead_letters) == []


async def test_a_sporeflow_request_to_a_praval_agent_resolves_with_its_reply(
        exchange: str, reef: Any) -> None:
    answers: list[dict[str, Any]] = []
    calls: list[Spore] = []
    asked: list[Any] = []

    async def ask(spore: Spore, ctx: Any) -> None:
        calls.append(spore)
        response = await ctx.request("pr", {"n": spore.knowledge["n"]}, timeout=BACKSTOP)
        answers.append(response.knowledge)

    def praval_doubler(request: Any) -> None:  # a Praval agent answers with Reef.reply
        asked.append(request)
        reef.reply("pr", request.from_agent, {"double": request.knowledge["n"] * 2},
                   request.id)

    org = organism(exchange, {"asker": {"handler": ask}, "pr": PRAVAL})
    try:
        async with org.running():
            handle = await reef.backend.subscribe_handler("agent.pr", praval_doubler)
            await org.send("asker", {"n": 21})
            await wait_for(lambda: bool(answers))
            await org.idle()
            await reef.backend.unsubscribe_handler(handle)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert answers == [{"double": 42}]
    [request] = asked
    assert (request.spore_type.value, request.from_agent, request.to_agent) == (
        "request", "asker", "pr")
    assert len(calls) == 1  # the response is no new spore for the asker's handler
    assert list(org.dead_letters) == []


async def test_a_praval_broadcast_reaches_the_subscribers_of_the_channel_declared_for_it(
        exchange: str, reef: Any) -> None:
    calls: list[tuple[str, Spore]] = []

    def recorder(name: str) -> Any:
        async def handle(spore: Spore, ctx: Any) -> None:
            calls.append((name, spore))
        return handle

    org = organism(exchange, {
        "alerted": {"handler": recorder("alerted"), "subscribe": ["alerts"]},
        "mainly": {"handler": recorder("mainly"), "subscribe": ["main"]},
        "pr": {**PRAVAL, "channel": "alerts"}})
    try:
        async with org.running():
            reef.broadcast("pr", {"level": "high"})  # Praval: broadcast.broadcast
            await wait_for(lambda: bool(calls))
            await org.idle()
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    [(name, spore)] = calls
    assert (name, spore.channel, spore.spore_type, spore.from_agent, spore.knowledge) == (
        "alerted", "alerts", SporeType.BROADCAST, "pr", {"level": "high"})
    assert list(org.dead_letters) == []


async def test_a_sporeflow_broadcast_reaches_a_praval_agent_listening_on_its_channel(
        exchange: str, reef: Any) -> None:
    async def announce(spore: Spore, ctx: Any) -> None:
        await ctx.broadcast({"news": spore.knowledge["news"]}, channel="alerts")

    org = organism(exchange, {"announcer": {"handler": announce},
                              "pr": {**PRAVAL, "subscribe": ["alerts"]}})
    try:
        async with org.running():
            heard, handle = await listen(reef, "channel.alerts")
            await org.send("announcer", {"news": "rain"})
            spore = await asyncio.wait_for(heard.get(), BACKSTOP)
            await org.idle()
            await reef.backend.unsubscribe_handler(handle)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert (spore.from_agent, spore.to_agent, spore.spore_type.value, spore.knowledge) == (
        "announcer", None, "broadcast", {"news": "rain"})
    assert list(org.dead_letters) == []


def test_every_spore_type_crosses_the_wire_as_itself_both_ways() -> None:
    """Praval's SporeType values are ours: each type is read as itself either way."""
    import aio_pika

    reef_module, _ = praval()
    theirs = {t.value for t in reef_module.SporeType}
    assert theirs == {t.value for t in SporeType}
    for kind in reef_module.SporeType:
        praval_spore = reef_module.Reef()._create_spore("pr", "ours", {"k": 1}, kind)
        message = praval_spore.to_amqp_message()
        ours = spore_from_amqp(message.body, message.headers)
        assert ours.spore_type is SporeType(kind.value)
        body, headers, properties = spore_to_amqp(ours)
        back = reef_module.Spore.from_amqp_message(
            aio_pika.Message(body, headers=headers, **properties))
        assert back.spore_type is kind


# -- signing: a Praval agent signs nothing ---------------------------------------------------


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SF_PRAVAL_INTEROP_KEY", "praval-interop-shared-key-0123456789")
    return "SF_PRAVAL_INTEROP_KEY"


async def praval_sends_to(org: Organism, reef: Any, *senders: str,
                          calls: list[Spore]) -> list[str]:
    """Each of ``senders`` (Praval agents) sends a knowledge spore to ``greeter``; return
    the reasons of the dead letters once every spore was handled or refused."""
    reef_module, _ = praval()
    try:
        async with org.running():
            for sender in senders:
                spore = reef._create_spore(sender, "greeter", {"from": sender},
                                           reef_module.SporeType.KNOWLEDGE)
                await reef.backend.send(spore, "main")
            await wait_for(lambda: len(calls) + len(org.dead_letters) >= len(senders))
            await org.idle()
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    return [letter.reason for letter in org.dead_letters]


async def test_with_signing_an_unsigned_praval_spore_is_refused_by_default(
        exchange: str, reef: Any, signing_key: str) -> None:
    calls: list[Spore] = []

    async def greet(spore: Spore, ctx: Any) -> None:
        calls.append(spore)

    org = organism(exchange, {"greeter": {"handler": greet}, "pr": PRAVAL},
                   signing={"key_env": signing_key})
    assert await praval_sends_to(org, reef, "pr", calls=calls) == ["bad signature"]
    assert calls == []


async def test_accept_unsigned_from_lets_in_only_spores_that_claim_a_named_external_agent(
        exchange: str, reef: Any, signing_key: str) -> None:
    calls: list[Spore] = []

    async def greet(spore: Spore, ctx: Any) -> None:
        calls.append(spore)

    org = organism(exchange, {"greeter": {"handler": greet}, "pr": PRAVAL,
                              "other": PRAVAL},
                   signing={"key_env": signing_key, "accept_unsigned_from": ["pr"]})
    reasons = await praval_sends_to(org, reef, "pr", "other", "greeter", calls=calls)
    assert [spore.knowledge for spore in calls] == [{"from": "pr"}]
    assert reasons == ["bad signature", "bad signature"]  # other and a forged greeter


async def test_with_signing_a_sporeflow_request_to_an_accepted_praval_agent_resolves(
        exchange: str, reef: Any, signing_key: str) -> None:
    answers: list[dict[str, Any]] = []

    async def ask(spore: Spore, ctx: Any) -> None:
        answers.append((await ctx.request("pr", {"n": 4}, timeout=BACKSTOP)).knowledge)

    def praval_doubler(request: Any) -> None:
        reef.reply("pr", request.from_agent, {"double": request.knowledge["n"] * 2},
                   request.id)

    org = organism(exchange, {"asker": {"handler": ask}, "pr": PRAVAL},
                   signing={"key_env": signing_key, "accept_unsigned_from": ["pr"]})
    try:
        async with org.running():
            handle = await reef.backend.subscribe_handler("agent.pr", praval_doubler)
            await org.send("asker", {})
            await wait_for(lambda: bool(answers))
            await org.idle()
            await reef.backend.unsubscribe_handler(handle)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert answers == [{"double": 8}]
    assert list(org.dead_letters) == []


async def test_a_response_from_another_praval_agent_than_the_one_asked_is_refused(
        exchange: str, reef: Any) -> None:
    answers: list[dict[str, Any]] = []

    async def ask(spore: Spore, ctx: Any) -> None:
        answers.append((await ctx.request("pr", {"n": 1}, timeout=BACKSTOP)).knowledge)

    def praval_pair(request: Any) -> None:  # an impostor answers first, then pr itself
        reef.reply("impostor", request.from_agent, {"by": "impostor"}, request.id)
        reef.reply("pr", request.from_agent, {"by": "pr"}, request.id)

    org = organism(exchange, {"asker": {"handler": ask}, "pr": PRAVAL})
    try:
        async with org.running():
            handle = await reef.backend.subscribe_handler("agent.pr", praval_pair)
            await org.send("asker", {})
            await wait_for(lambda: bool(answers) and len(org.dead_letters) == 1)
            await org.idle()
            await reef.backend.unsubscribe_handler(handle)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert answers == [{"by": "pr"}]
    [letter] = org.dead_letters
    assert (letter.reason, letter.spore.from_agent) == ("unexpected response", "impostor")


async def test_with_signing_a_request_from_an_accepted_praval_agent_is_answered(
        exchange: str, reef: Any, signing_key: str) -> None:
    async def square(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"square": spore.knowledge["n"] ** 2}

    org = organism(exchange, {"squarer": {"handler": square}, "pr": PRAVAL},
                   signing={"key_env": signing_key, "accept_unsigned_from": ["pr"]})
    try:
        async with org.running():
            response = await reef.arequest_and_wait("pr", "squarer", {"n": 5},
                                                    timeout=BACKSTOP)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
    assert (response.spore_type.value, response.from_agent, response.knowledge) == (
        "response", "squarer", {"square": 25})
    assert list(org.dead_letters) == []
