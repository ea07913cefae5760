"""A declaration takes away what the organism file no longer declares (``broker.leftovers``).

A subscription removed from the file used to leave its binding on the broker (each
broadcast on that channel reached the agent's queue, to be refused as ``wrong queue``),
and an agent removed left its queue bound with no consumer, filling until the broker
refused every broadcast on its channels. In memory (``MemoryBackend``), then on the
real broker, through ``Organism`` starts and ``sporeflow broker-declare``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from click.testing import CliRunner

from sporeflow.config import OrganismSpec, organism_from_dict
from sporeflow.pipeline import BrokerError, Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.cli.main import cli

from .conformance.harness import AMQP_URL, BACKSTOP, wait_for

ORDERS = "channel.orders.broadcast"


def topology(**subscriptions: tuple[str, ...]) -> Topology:
    return Topology(exchange="shop", subscriptions=subscriptions)


async def declared(broker: MemoryBroker, of: Topology) -> MemoryBackend:
    backend = MemoryBackend(broker)
    await backend.open(of)
    return backend


# -- in memory -------------------------------------------------------------------------

async def test_a_subscription_removed_is_unbound_at_the_next_declaration() -> None:
    broker = MemoryBroker()
    await declared(broker, topology(billing=("orders",), audit=("orders",)))
    second = await declared(broker, topology(billing=("orders",), audit=()))
    await second.publish(Spore(knowledge={}, channel="orders"), routing_key=ORDERS)
    assert (broker.ready("shop.billing"), broker.ready("shop.audit")) == (1, 0)
    assert second.leftovers.unbound == (("shop.audit", "channel.orders.*"),)


async def test_a_queue_another_process_consumes_is_left_bound_until_none_does() -> None:
    # Found in review: in a rolling deploy, a process restarted on the older file took
    # away what the newer one declared for an agent it serves (unbound its queue).
    broker = MemoryBroker()
    newer = await declared(broker, topology(billing=("orders",), audit=("orders",)))
    await newer.consume("shop.audit", lambda message: None, prefetch=1)  # audit is served
    older = await declared(broker, topology(billing=("orders",)))  # a file without audit
    await older.publish(Spore(knowledge={}, channel="orders"), routing_key=ORDERS)
    assert broker.ready("shop.billing") == 1
    assert ("channel.orders.*", "shop.audit") in broker.bindings["shop"]  # still bound
    assert older.leftovers.left == ("shop.audit",)
    assert older.leftovers.unbound == ()
    await newer.close()  # nothing consumes audit now: the next declaration takes it away
    again = await declared(broker, topology(billing=("orders",)))
    assert ("channel.orders.*", "shop.audit") not in broker.bindings["shop"]
    assert set(again.leftovers.unbound) == {("shop.audit", "agent.audit.*"),
                                            ("shop.audit", "channel.orders.*")}
    assert again.leftovers.kept == (("shop.audit", 1, 0),)  # the broadcast it got meanwhile


async def test_a_channel_gone_from_the_file_is_unbound_by_the_record() -> None:
    broker = MemoryBroker()
    await declared(broker, topology(audit=("orders", "legacy")))
    second = await declared(broker, topology(audit=("orders",)))  # "legacy": in no file
    with pytest.raises(BrokerError, match="unroutable"):
        await second.publish(Spore(knowledge={}, channel="legacy"),
                             routing_key="channel.legacy.broadcast")
    assert second.leftovers.unbound == (("shop.audit", "channel.legacy.*"),)


async def test_a_removed_agent_holding_spores_is_unbound_kept_and_named(
        caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryBroker()
    first = await declared(broker, topology(billing=("orders",), audit=("orders",)))
    for n in range(3):
        await first.publish(Spore(knowledge={"n": n}, channel="orders"), routing_key=ORDERS)
    with caplog.at_level(logging.WARNING, logger="sporeflow.broker.memory"):
        second = await declared(broker, topology(billing=("orders",)))
    await second.publish(Spore(knowledge={}, channel="orders"), routing_key=ORDERS)
    assert (broker.ready("shop.billing"), broker.ready("shop.audit")) == (4, 3)
    assert {b for b in broker.bindings["shop"] if b[1] == "shop.audit"} == set()
    assert second.leftovers.kept == (("shop.audit", 3, 0),)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'shop.audit'" in warning
    assert "3 messages" in warning
    assert "rabbitmqctl delete_queue shop.audit" in warning
    # Named again at each declaration while it is there.
    assert (await declared(broker, topology(billing=("orders",)))).leftovers.kept == (
        ("shop.audit", 3, 0),)


async def test_a_removed_agent_with_an_empty_queue_has_it_deleted() -> None:
    broker = MemoryBroker()
    await declared(broker, topology(billing=("orders",), audit=("orders",)))
    second = await declared(broker, topology(billing=("orders",)))
    assert "shop.audit" not in broker.queues
    assert second.leftovers.deleted == ("shop.audit",)


# -- on RabbitMQ ---------------------------------------------------------------------

def spec(name: str, agents: dict[str, Any], **broker: Any) -> OrganismSpec:
    return organism_from_dict({"organism": {"name": name, "broker": broker},
                               "channels": {"orders": {}}, "agents": agents})


def take(spore: Spore, ctx: Any) -> None:
    return None


BOTH = {"billing": {"handler": take, "subscribe": ["orders"]},
        "audit": {"handler": take, "subscribe": ["orders"]}}
UNSUBSCRIBED = {"billing": {"handler": take, "subscribe": ["orders"]},
                "audit": {"handler": take}}
REMOVED = {"billing": {"handler": take, "subscribe": ["orders"]}}


@pytest.fixture
def name() -> Iterator[str]:
    """A unique organism name; its topology (all three files') is deleted after."""
    made = f"leftovers-{uuid.uuid4().hex[:10]}"
    yield made
    asyncio.run(AmqpBackend(AMQP_URL).destroy(Topology.of(spec(made, BOTH))))


async def depth(queue: str) -> int | None:
    """The messages ``queue`` holds; None when it does not exist."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        try:
            queue_ = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return int(queue_.declaration_result.message_count or 0)


async def broadcasts(organism: Organism, count: int) -> None:
    """Broadcast on orders ``count`` times, one at a time: each confirmed by the broker,
    and handled by billing, whose queue (bounded too) never holds more than one."""
    def handled() -> int:
        return int(organism.stats()["agents"]["billing"]["handled"])

    for n in range(count):
        before = handled()
        await organism.broadcast({"n": n}, channel="orders")
        await organism.confirmed()
        await wait_for(lambda before=before: handled() > before)


@pytest.mark.amqp
async def test_a_start_unbinds_a_subscription_the_file_removed(name: str) -> None:
    async with Organism(spec(name, BOTH), backend=AMQP_URL, hosted=["billing"]).running():
        pass
    later = spec(name, UNSUBSCRIBED)
    async with Organism(later, backend=AMQP_URL, hosted=["billing"]).running() as org:
        await broadcasts(org, 2)
    assert await depth(Topology.of(later).queue("audit")) == 0  # was 2: "wrong queue" each


@pytest.mark.amqp
async def test_a_removed_agent_stops_filling_its_queue_and_blocking_broadcasts(
        name: str, caplog: pytest.LogCaptureFixture) -> None:
    first = spec(name, BOTH, max_length=3)
    audit = Topology.of(first).queue("audit")
    async with Organism(first, backend=AMQP_URL, hosted=["billing"]).running() as org:
        await broadcasts(org, 3)  # audit's process is down: its queue is full
    assert await depth(audit) == 3
    caplog.set_level(logging.WARNING, logger="sporeflow.broker.amqp")
    async with Organism(spec(name, REMOVED, max_length=3), backend=AMQP_URL).running() as org:
        await broadcasts(org, 5)  # raised BrokerError "a queue it goes to is full" before
        assert len(org.dead_letters) == 0
    assert await depth(audit) == 3  # kept: never deleted with spores in it
    warnings = [r.getMessage() for r in caplog.records if audit in r.getMessage()]
    assert len(warnings) == 1
    assert "3 messages" in warnings[0]
    assert f"rabbitmqctl delete_queue {audit}" in warnings[0]


@pytest.mark.amqp
async def test_a_removed_agent_with_an_empty_queue_has_it_deleted_on_rabbitmq(
        name: str) -> None:
    first = spec(name, BOTH)
    async with Organism(first, backend=AMQP_URL).running():
        pass
    async with Organism(spec(name, REMOVED), backend=AMQP_URL).running() as org:
        assert org._bridge is not None
        assert org._bridge.backend.leftovers.deleted == (Topology.of(first).queue("audit"),)
    assert await depth(Topology.of(first).queue("audit")) is None


@pytest.mark.amqp
async def test_a_deployment_declared_without_a_record_is_unbound_all_the_same(
        name: str) -> None:
    """Declared by an older version, which kept no record: the channels of the file an
    agent does not subscribe to are unbound from its queue."""
    first = spec(name, BOTH)
    async with Organism(first, backend=AMQP_URL, hosted=["billing"]).running():
        pass
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await (await connection.channel()).queue_delete(Topology.of(first).record_queue)
    async with Organism(spec(name, UNSUBSCRIBED), backend=AMQP_URL,
                        hosted=["billing"]).running() as org:
        await broadcasts(org, 1)
    assert await depth(Topology.of(first).queue("audit")) == 0


@pytest.mark.amqp
async def test_processes_starting_together_declare_one_at_a_time(name: str) -> None:
    async with Organism(spec(name, BOTH), backend=AMQP_URL, hosted=[]).running():
        pass
    later = Topology.of(spec(name, UNSUBSCRIBED))
    backends = [AmqpBackend(AMQP_URL) for _ in range(4)]
    try:
        await asyncio.wait_for(asyncio.gather(*(b.open(later) for b in backends)), BACKSTOP)
        # One read the record and unbound audit; each other read the record it wrote.
        found = sorted((b.leftovers.unbound, b.leftovers.guessed) for b in backends)
        unbound = ((later.queue("audit"), "channel.orders.*"),)
        assert found == [((), False)] * 3 + [(unbound, False)]
    finally:
        for backend in backends:
            await backend.close()
    assert await depth(later.record_queue) == 1


@pytest.mark.amqp
def test_broker_declare_says_what_it_took_away(name: str, tmp_path: Path) -> None:
    (tmp_path / "leftover_handlers.py").write_text("def take(spore, ctx):\n    return None\n")
    path = tmp_path / "organism.yaml"
    head = (f"organism: {{name: {name}, backend: '{AMQP_URL}'}}\nchannels: {{orders: {{}}}}\n"
            f"agents:\n  billing: {{handler: leftover_handlers:take, subscribe: [orders]}}\n")
    path.write_text(head + "  audit: {handler: leftover_handlers:take, subscribe: [orders]}\n")
    assert CliRunner().invoke(cli, ["broker-declare", str(path)]).exit_code == 0
    path.write_text(head + "  audit: {handler: leftover_handlers:take}\n")
    result = CliRunner().invoke(cli, ["broker-declare", str(path)])
    assert result.exit_code == 0, result.output
    audit = f"sporeflow.{name}.audit"
    assert f"unbound {audit} from channel.orders.*" in result.stdout.splitlines()
    path.write_text(head)
    result = CliRunner().invoke(cli, ["broker-declare", str(path)])
    assert result.exit_code == 0, result.output
    assert f"deleted {audit} (empty; no agent of the file)" in result.stdout.splitlines()
    assert asyncio.run(depth(audit)) is None
