"""``organism.confirmed()`` over RabbitMQ (``pipeline/broker/sent.py``): while connected,
``send()`` returns once its spore is admitted; ``confirmed()`` returns once every spore
sent before it has left the process, and raises if one could not be published."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import BrokerError, Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.memory_backend import MemoryBackend

from .conformance.harness import BACKSTOP, Harness, wait_for

pytestmark = pytest.mark.amqp

SENT = 300


async def test_confirmed_returns_once_the_broker_confirmed_every_spore_sent(
        harness: Harness) -> None:
    # It returned at once without a journal: a sender acknowledging upstream after it
    # could acknowledge spores still in this process's memory only.
    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    async with harness.running({"agents": {"sink": {"handler": sink}}}) as org:
        for n in range(SENT):
            await org.send("sink", {"n": n})
        await org.confirmed()
        assert org.stats()["broker"]["published"] >= SENT
        await harness.quiet(org)
        await org.confirmed()  # nothing sent since: at once, and nothing failed


async def test_confirmed_raises_once_for_spores_the_broker_refused(harness: Harness) -> None:
    release = asyncio.Event()

    async def stuck(spore: Spore, ctx: Any) -> None:
        await release.wait()

    async with harness.running({"organism": {"broker": {"max_length": 2}},
                                "agents": {"stuck": {"handler": stuck}}}) as org:
        for n in range(SENT):  # the consumer holds a few, the queue 2: the rest refused
            await org.send("stuck", {"n": n})
        with pytest.raises(BrokerError) as caught:
            await org.confirmed()
        refused = [letter for letter in org.dead_letters if letter.reason == "broker error"]
        assert str(caught.value).startswith(
            f"{len(refused)} spore(s) sent were not published to RabbitMQ at ")
        assert "each is a dead letter saying why" in str(caught.value)
        assert 0 < len(refused) < SENT
        await org.confirmed()  # told once: nothing sent since
        release.set()
        await harness.quiet(org)


async def test_confirmed_returns_when_what_it_waits_for_was_paged_out_and_back() -> None:
    # Found in review: the spores were known by id(), and the intake pages a spore out to
    # disk and back as a new object past limits.max_in_memory: confirmed() never returned.
    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    spec = organism_from_dict({"limits": {"max_in_memory": 1},
                               "agents": {"sink": {"handler": sink},
                                          "watch": {"handler": sink,
                                                    "subscribe": ["dead-letter"]}}})
    org = Organism(spec, backend=MemoryBackend())
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("sink", {"late": True}, expires_in=-1)  # its notice is paged out
        await org.send("sink", {"fine": True})
        await asyncio.wait_for(org.confirmed(), BACKSTOP)


async def test_confirmed_raises_when_the_organism_stops_before_the_broker_had_them() -> None:
    # Found in review: a stop while the broker was unreachable woke confirmed() as if
    # everything had been published.
    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    spec = organism_from_dict({"organism": {"broker": {"give_up_after": None}},
                               "agents": {"sink": {"handler": sink}}})
    nobody = "amqp://guest:guest@127.0.0.1:1/?reconnect_interval=0.1"  # nothing listens
    org = Organism(spec, backend=AmqpBackend(nobody))
    starting = asyncio.create_task(org.start())
    await wait_for(lambda: org.state == "running")
    await org.send("sink", {"n": 1}, confirm=False)  # admitted; no broker has it
    waiting = asyncio.create_task(org.confirmed())
    await asyncio.sleep(0)  # it waits now
    await org.stop(drain_timeout=1)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    with pytest.raises(BrokerError, match=r"^1 spore\(s\) sent were not published"):
        await waiting
