"""Priorities and expiry, on every backend."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from sporeflow.pipeline import Spore

from .harness import Harness, wait_for


class Busy:
    """A handler noting each spore's tag; the one tagged ``gate`` holds it until opened."""

    def __init__(self) -> None:
        self.handled: list[str] = []
        self.started, self.gate = asyncio.Event(), asyncio.Event()

    async def __call__(self, spore: Spore, ctx: Any) -> None:
        self.handled.append(spore.knowledge["tag"])
        if spore.knowledge["tag"] == "gate":
            self.started.set()
            await self.gate.wait()


async def test_spores_waiting_for_a_busy_agent_are_taken_highest_priority_first(
        backend: Harness) -> None:
    busy = Busy()
    async with backend.running({"agents": {"busy": {"handler": busy}}}) as org:
        await org.send("busy", {"tag": "gate"})
        await asyncio.wait_for(busy.started.wait(), 10)
        # The filler takes what room the process has beyond the running handler (its
        # prefetch on a broker), so that every later spore waits where priority rules.
        await org.send("busy", {"tag": "filler"}, priority=1)
        await wait_for(lambda: org.stats()["agents"]["busy"]["received"] >= 2)
        priorities = list(range(2, 11))
        random.Random(7).shuffle(priorities)
        for priority in priorities:
            await org.send("busy", {"tag": f"p{priority}"}, priority=priority)
        await backend.published(org, 11)
        busy.gate.set()
        await backend.quiet(org)
    ranked = [tag for tag in busy.handled if tag.startswith("p")]
    assert ranked == [f"p{p}" for p in range(10, 1, -1)]
    assert sorted(busy.handled) == sorted(["gate", "filler", *ranked])


# Expiry inside a process runs on the loop's monotonic clock (a step of the wall clock
# expires nothing): the short spore's time-to-live really passes while it waits.
SHORT_TTL = 0.05


async def test_a_spore_that_expires_while_waiting_is_dead_lettered_never_handled(
        backend: Harness) -> None:
    busy = Busy()
    async with backend.running({"agents": {"busy": {"handler": busy}}}) as org:
        await org.send("busy", {"tag": "gate"})
        await asyncio.wait_for(busy.started.wait(), 10)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await org.send("busy", {"tag": "short"}, expires_in=SHORT_TTL)
        await org.send("busy", {"tag": "long"}, expires_in=3600)
        await backend.published(org, 3)
        await wait_for(lambda: loop.time() > sent + SHORT_TTL)
        busy.gate.set()
        await backend.quiet(org)
    assert busy.handled == ["gate", "long"]
    assert [(d.reason, d.spore.knowledge) for d in org.dead_letters] == [
        ("expired", {"tag": "short"})]
