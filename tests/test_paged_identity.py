"""Past ``limits.max_in_memory`` the intake pages spores out to disk and reads them back
as new objects: what this process keeps with a spore is on the object (checked, its
holder's mark), and the spill keeps the mark; nothing knows a spore by ``id()``, which
another object takes once it is freed."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker

from .conformance.harness import BACKSTOP, wait_for

MADE = 40
SENDS = 200  # enough for the allocator to hand a freed address to an invalid spore


async def test_a_spore_at_the_address_of_a_paged_out_send_is_still_checked() -> None:
    # Before: a handler's send, checked as it was sent, was paged out with its id() left
    # in the set of checked spores; the next spore made took that address and passed the
    # validate stage unchecked (here: knowledge holding NaN reached the sink).
    received: list[dict[str, Any]] = []

    async def fan(spore: Spore, ctx: Any) -> list[Spore]:
        invalid = []
        for n in range(SENDS):
            await ctx.send("sink", {"n": n})  # paged out: the organism holds 2 at most
            invalid.append(Spore(knowledge={"bad": math.nan}, to_agent="sink",
                                 from_agent="fan"))
        return invalid

    async def sink(spore: Spore, ctx: Any) -> None:
        received.append(spore.knowledge)

    spec = organism_from_dict({"limits": {"max_in_memory": 2},
                               "agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}})
    org = Organism(spec)
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("fan", {"go": True})
        await wait_for(lambda: org.stats()["totals"]["handled"] >= 1 + SENDS
                       and org.stats()["totals"]["held"] == 0)
    assert sorted(k.get("n", -1) for k in received) == list(range(SENDS))
    assert org.stats()["dead_letters"]["by_reason"] == {"invalid": SENDS}


async def settled(org: Organism, acks: int) -> None:
    """Wait until nothing is in flight or awaiting a confirm, and ``acks`` acks were
    counted: a delivery leaves in_flight when settled, and its ack (a task on this
    backend) is counted a turn or two later. The caller checks there are no more."""
    await wait_for(lambda: org.stats()["broker"]["in_flight"] == 0
                   and org.stats()["broker"]["awaiting_confirms"] == 0
                   and org.stats()["broker"]["acked"] >= acks)


async def test_paged_deliveries_and_products_are_handled_once_and_acked() -> None:
    # Before: the bridge knew them by id(); a delivery paged out came back unknown and was
    # published to its queue again while the first stayed unacked, the prefetch filled,
    # and the sink never handled one of them.
    handled: Counter[str] = Counter()

    async def fan(spore: Spore, ctx: Any) -> list[dict[str, Any]]:
        for n in range(MADE):
            await ctx.send("sink", {"sent": n})
        return [{"returned": n} for n in range(MADE)]

    async def sink(spore: Spore, ctx: Any) -> None:
        handled[spore.id] += 1

    spec = organism_from_dict({"limits": {"max_in_memory": 2},
                               "agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}})
    org = Organism(spec, backend=MemoryBackend(MemoryBroker()))
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("fan", {"go": True})
        await wait_for(lambda: sum(handled.values()) >= 2 * MADE)
        await settled(org, 1 + 2 * MADE)
        assert org.stats()["broker"]["acked"] == 1 + 2 * MADE  # fan's delivery too
    assert len(handled) == 2 * MADE
    assert set(handled.values()) == {1}


async def test_a_paged_spore_from_the_reply_queue_is_still_verified(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a spore on the reply queue that is no response was paged out past
    # max_in_memory; read back as another object, the bridge no longer knew it as
    # untrusted, its signature was never checked, and the forgery reached the sink.
    monkeypatch.setenv("SF_PAGED_KEY", "key-one-" + "1" * 24)
    gate = asyncio.Event()
    received: list[dict[str, Any]] = []

    async def blocker(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    async def sink(spore: Spore, ctx: Any) -> None:
        received.append(spore.knowledge)

    spec = organism_from_dict({"organism": {"signing": {"key_env": "SF_PAGED_KEY"}},
                               "limits": {"max_in_memory": 1},
                               "agents": {"blocker": {"handler": blocker},
                                          "sink": {"handler": sink}}})
    broker = MemoryBroker()
    org = Organism(spec, backend=MemoryBackend(broker))
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("blocker", {"hold": True})
        await wait_for(lambda: org.stats()["broker"]["in_flight"] == 1)  # the intake is full
        consumed = org.stats()["broker"]["consumed"]
        forged = Spore(knowledge={"forged": True}, from_agent="blocker", to_agent="sink")
        attacker = MemoryBackend(broker)  # another client of the broker
        await attacker.open(Topology.of(spec))
        await attacker.publish(forged, queue=org.stats()["broker"]["reply_queue"])  # unsigned
        await wait_for(lambda: org.stats()["broker"]["consumed"] == consumed + 1)
        gate.set()
        await wait_for(lambda: bool(org.dead_letters) or bool(received))
        await wait_for(lambda: org.stats()["totals"]["held"] == 0)
    assert received == []
    assert [str(letter.reason) for letter in org.dead_letters] == ["bad signature"]


async def test_over_a_broker_a_stream_is_paged_out_past_the_memory_limit() -> None:
    # Before: the bridge's spores were kept in memory (it knew them by id()), so what a
    # delivery's handler yielded was never paged out and never slowed: max_in_memory
    # bounded nothing over a broker. Known by a mark the spill keeps, they page as any.
    yielded = 2_000
    handled: Counter[str] = Counter()

    async def stream(spore: Spore, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        for n in range(yielded):
            yield {"n": n}

    async def sink(spore: Spore, ctx: Any) -> None:
        handled[spore.id] += 1

    spec = organism_from_dict({"limits": {"max_in_memory": 50},
                               "agents": {"stream": {"handler": stream, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}})
    org = Organism(spec, backend=MemoryBackend(MemoryBroker(max_queued=10 * yielded)))
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("stream", {"go": True})
        await wait_for(lambda: sum(handled.values()) >= yielded)
        await settled(org, 1 + yielded)
        assert org.stats()["totals"]["paged_out_total"] > 0
        assert org.stats()["broker"]["acked"] == 1 + yielded  # the stream's delivery too
    assert len(handled) == yielded
    assert set(handled.values()) == {1}


async def test_a_spore_kept_from_an_earlier_run_is_not_taken_for_a_delivery() -> None:
    # Found in review: each start made a bridge whose marks began at 1 again. A spore a
    # user kept from the first run (its mark 1) and submitted in the second was taken for
    # that run's first delivery: refused as 'wrong queue', and the delivery of the
    # handler still running was settled on the broker under it.
    kept: list[Spore] = []
    gate = asyncio.Event()

    async def blocker(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    async def sink(spore: Spore, ctx: Any) -> None:
        kept.append(spore)

    spec = organism_from_dict({"agents": {"blocker": {"handler": blocker},
                                          "sink": {"handler": sink}}})
    org = Organism(spec, backend=MemoryBackend(MemoryBroker()))
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("sink", {"n": 1})
        await wait_for(lambda: len(kept) == 1)
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("blocker", {"hold": True})
        await wait_for(lambda: org.stats()["broker"]["in_flight"] == 1)
        await org.submit(kept[0])  # forwarded as it was kept
        await wait_for(lambda: len(kept) == 2 or bool(org.dead_letters))
        assert org.stats()["broker"]["in_flight"] == 1  # blocker's delivery, still running
        gate.set()
    assert list(org.dead_letters) == []
    assert [spore.id for spore in kept] == [kept[0].id] * 2
