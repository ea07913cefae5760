"""A stream a stop cuts short resumes at the next start where the organism keeps its
unfinished work: found by a lifecycle fault injector. README's own ticker (an endless
async generator started by a boot spore) stopped for good after the first restart with a
journal, or over RabbitMQ: the stop counted its spore handled, and a boot spore is sent
once per journal (or deployment), so nothing started it again, and nothing said so."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, BACKSTOP, broker_reachable, wait_for


def ticker(heard: list[int], name: str = "ticker", **options: Any) -> Organism:
    async def ticks(spore: Spore, ctx: Any) -> AsyncIterator[dict[str, int]]:
        n = 0
        while True:
            yield {"n": n}
            n += 1
            await asyncio.sleep(0.005)

    async def sink(spore: Spore, ctx: Any) -> None:
        heard.append(spore.knowledge["n"])

    return Organism.from_dict({"organism": {"name": name}, "agents": {
        "ticks": {"handler": ticks, "emit": {"to": "sink"}, "boot": {}},
        "sink": {"handler": sink}}}, **options)


async def test_a_stream_a_stop_cut_short_starts_again_at_the_next_start(
        tmp_path: Path) -> None:
    first: list[int] = []
    organism = ticker(first, journal=tmp_path / "j.db")
    await organism.start()
    await wait_for(lambda: len(first) >= 3)
    await organism.stop()
    assert organism.stats()["agents"]["ticks"]["handled"] == 0  # cut short, not done
    assert organism.dead_letters.total == 0  # kept by the journal: no dead letter
    again: list[int] = []
    organism = ticker(again, journal=tmp_path / "j.db")
    await organism.start()
    try:
        await wait_for(lambda: len(again) >= 3)  # before: no tick ever came
    finally:
        await organism.stop()


async def test_without_a_journal_a_stream_a_stop_ends_is_handled() -> None:
    heard: list[int] = []
    organism = ticker(heard)
    await organism.start()
    await wait_for(lambda: len(heard) >= 3)
    assert await organism.stop() == 0  # nothing would resume it: no dead letter either
    assert organism.stats()["agents"]["ticks"]["handled"] == 1
    assert organism.dead_letters.total == 0


@pytest.mark.amqp
async def test_over_a_broker_a_stream_a_stop_cut_short_starts_again() -> None:
    if (why := broker_reachable()) is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    name = f"ticker-{uuid.uuid4().hex[:12]}"
    first: list[int] = []
    organism = ticker(first, name, backend=AmqpBackend(AMQP_URL))
    try:
        await organism.start()
        await wait_for(lambda: len(first) >= 3)
        await organism.stop(drain_timeout=BACKSTOP)
        again: list[int] = []
        organism = ticker(again, name, backend=AmqpBackend(AMQP_URL))
        await organism.start()  # the boot is not sent again: its delivery came back
        await wait_for(lambda: len(again) >= 3)
        await organism.stop(drain_timeout=BACKSTOP)
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(organism.spec))
