"""``organism.confirmed()`` over RabbitMQ (``pipeline/broker/sent.py``): while connected,
``send()`` returns once its spore is admitted; ``confirmed()`` returns once every spore
sent before it has left the process, and raises if one could not be published."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.pipeline import BrokerError, Spore

from .conformance.harness import Harness

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
        assert "each is a 'broker error' dead letter" in str(caught.value)
        assert 0 < len(refused) < SENT
        await org.confirmed()  # told once: nothing sent since
        release.set()
        await harness.quiet(org)
