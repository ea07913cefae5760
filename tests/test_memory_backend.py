"""The in-process broker: competing consumers, redelivery, bounds, expiry, statistics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import BrokerError, Organism, Spore
from sporeflow.pipeline.broker.backend import Inbound, Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker

from .conformance.harness import wait_for

TOPOLOGY = Topology(exchange="t", subscriptions={"a": (), "b": ("news",)})


async def test_published_spores_are_routed_by_key_and_acked_once() -> None:
    got: list[Inbound] = []
    async with MemoryBackend() as backend:
        await backend.open(TOPOLOGY)
        await backend.consume("t.b", got.append, prefetch=10)
        await backend.publish(Spore(knowledge={"n": 1}, to_agent="b"),
                              routing_key="agent.b.knowledge")
        await backend.publish(Spore(knowledge={"n": 2}, channel="news"),
                              routing_key="channel.news.broadcast")
        with pytest.raises(BrokerError, match="unroutable"):
            await backend.publish(Spore(knowledge={}), routing_key="agent.nobody.knowledge")
        assert [m.spore.knowledge for m in got if m.spore] == [{"n": 1}, {"n": 2}]
        for message in got:
            await message.ack()
            await message.ack()  # a second ack is a no-op
        stats = backend.statistics()
    assert (stats.published, stats.consumed, stats.acked, stats.failed_publishes) == (2, 2, 2, 1)


async def test_prefetch_bounds_unacked_and_the_highest_priority_goes_first() -> None:
    got: list[Inbound] = []
    async with MemoryBackend() as backend:
        await backend.open(TOPOLOGY)
        for priority in (1, 9, 5):
            await backend.publish(Spore(knowledge={"p": priority}, priority=priority),
                                  routing_key="agent.a.knowledge")
        await backend.consume("t.a", got.append, prefetch=1)
        assert [m.spore.priority for m in got if m.spore] == [9]
        await got[0].ack()
        await got[1].nack(requeue=True)
        assert [m.spore.priority for m in got if m.spore] == [9, 5, 5]
        assert got[2].redelivered


async def test_closing_a_connection_gives_its_unacked_messages_to_another_consumer() -> None:
    broker = MemoryBroker()
    first: list[Inbound] = []
    second: list[Inbound] = []
    crashing, surviving = MemoryBackend(broker), MemoryBackend(broker)
    await crashing.open(TOPOLOGY)
    await surviving.open(TOPOLOGY)
    await crashing.consume("t.a", first.append, prefetch=5)
    for n in range(3):
        await crashing.publish(Spore(knowledge={"n": n}), routing_key="agent.a.knowledge")
    await surviving.consume("t.a", second.append, prefetch=5)
    assert (len(first), len(second)) == (3, 0)
    await crashing.close()  # as if the process died: nothing was acked
    assert sorted(m.spore.knowledge["n"] for m in second if m.spore) == [0, 1, 2]
    assert all(m.redelivered for m in second)
    await first[0].ack()  # a late ack from the dead connection changes nothing
    assert crashing.statistics().acked == 0
    await surviving.close()


async def test_a_full_queue_makes_the_publisher_wait_for_room() -> None:
    got: list[Inbound] = []
    async with MemoryBackend(MemoryBroker(max_queued=2)) as backend:
        await backend.open(TOPOLOGY)
        for n in range(2):
            await backend.publish(Spore(knowledge={"n": n}), routing_key="agent.a.knowledge")
        third = asyncio.ensure_future(backend.publish(Spore(knowledge={"n": 2}),
                                                      routing_key="agent.a.knowledge"))
        await asyncio.sleep(0)
        assert not third.done()
        await backend.consume("t.a", got.append, prefetch=10)
        await asyncio.wait_for(third, 5)
    assert len(got) == 3


async def test_a_message_that_expires_while_queued_is_dead_lettered_by_the_broker() -> None:
    broker = MemoryBroker()
    got: list[Inbound] = []
    async with MemoryBackend(broker) as backend:
        await backend.open(TOPOLOGY)
        past = datetime.now(UTC) - timedelta(seconds=1)
        await backend.publish(Spore(knowledge={}, expires_at=past),
                              routing_key="agent.a.knowledge")
        await backend.consume("t.a", got.append, prefetch=1)
    assert got == []
    assert [letter.reason for letter in broker.dead_letters] == ["expired"]


async def test_two_organisms_on_one_broker_share_an_agents_work() -> None:
    broker = MemoryBroker()
    handled: dict[str, list[int]] = {"one": [], "two": []}
    gate = asyncio.Event()

    def worker(who: str) -> Any:
        async def work(spore: Spore, ctx: Any) -> None:
            handled[who].append(spore.knowledge["n"])
            await gate.wait()

        return work

    def make(who: str) -> Organism:
        spec = organism_from_dict({"organism": {"name": "shared"},
                                   "agents": {"w": {"handler": worker(who), "concurrency": 2}}})
        return Organism(spec, backend=MemoryBackend(broker))

    one, two = make("one"), make("two")
    async with one.running(), two.running():
        for n in range(10):
            await one.send("w", {"n": n})
        await wait_for(lambda: len(handled["one"]) + len(handled["two"]) == 4)
        gate.set()
        await wait_for(lambda: len(handled["one"]) + len(handled["two"]) == 10)
    assert handled["one"]
    assert handled["two"]
    assert sorted(handled["one"] + handled["two"]) == list(range(10))
