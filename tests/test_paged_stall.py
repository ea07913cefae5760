"""Handlers paused while spores are paged out never wait on their own spores.

Found by a randomized stress of the engine: a stream (or a loop of ``ctx.send``)
pauses after each item while anything is paged out, lending its slot, so its agent
takes its next spore, which pauses too. Once the spores of paused handlers filled
``max_in_memory``, nothing paged out was ever read back (no room), so no paused
handler ever went on: ``idle()`` never returned and a stop dead-lettered them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore


async def streamer(spore: Spore, ctx: Any) -> Any:
    for i in range(3):
        yield {"i": i}


async def sender(spore: Spore, ctx: Any) -> None:
    for i in range(3):
        await ctx.send("sink", {"i": i})


@pytest.mark.parametrize(("handler", "agent"), [
    (streamer, {}),
    (sender, {}),
    (streamer, {"key": "knowledge.k"}),  # spores of a paused key wait beside it
], ids=["stream", "sends", "keyed-stream"])
async def test_paused_handlers_filling_memory_still_finish(handler: Any,
                                                           agent: dict[str, Any]) -> None:
    received: list[Spore] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        received.append(spore)

    organism = Organism.from_dict({
        "limits": {"max_in_memory": 2},
        "agents": {"maker": {"handler": handler, "emit": {"to": "sink"}, **agent},
                   "sink": {"handler": sink}}})
    async with organism.running(drain_timeout=5):
        for n in range(4):
            await organism.send("maker", {"n": n, "k": 1})
        await asyncio.wait_for(organism.idle(), 5)
        stats = organism.stats()["totals"]
    assert len(received) == 12
    assert stats["held"] == 0
    assert stats["dead_letters"] == 0
    assert stats["paged_out_total"] > 0  # the paged path was taken
