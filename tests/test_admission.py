"""Bounded memory without deadlock: fair admission, mailboxes that push back, paging.

Outside senders wait, in arrival order, while the organism or their target is full;
handler output never waits, and past ``limits.max_in_memory`` it is paged to disk.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.core.spill import SpillFile

from .conftest import VirtualClockLoop


def subscriber_behind(channel: str, capacity: int, handler: Any, *,
                      name: str = "sink") -> Organism:
    """One agent subscribed to ``channel``, whose capacity is ``capacity``."""
    return Organism.from_dict({
        "channels": {channel: {"capacity": capacity}},
        "agents": {name: {"handler": handler, "subscribe": [channel]}}})


def test_senders_waiting_on_one_channel_are_admitted_in_turn(virtual: Any) -> None:
    """Issue 20's case: a busy sender took every freed place while others waited."""

    async def main(loop: VirtualClockLoop) -> None:
        async def sink(spore: Spore, ctx: Any) -> None:
            await asyncio.sleep(0.001)

        org = subscriber_behind("work", 4, sink)
        admitted: Counter[str] = Counter()
        async with org.running():
            async def sender(name: str) -> None:
                while loop.time() < 2.0:
                    await org.send(None, {"from": name}, channel="work")
                    admitted[name] += 1

            await asyncio.gather(*(sender(name) for name in "ABC"))
            await org.idle()
        total = sum(admitted.values())
        assert total > 300
        for name in "ABC":  # each within 2x of a third of the total
            assert total / 6 <= admitted[name] <= total * 2 / 3, admitted

    virtual(main)


def test_a_full_mailbox_makes_outside_senders_wait(virtual: Any) -> None:
    """Issue 16's case: 12 sends to a slow agent behind a channel of capacity 3 were all
    admitted at once (its mailbox held 11)."""

    async def main(loop: VirtualClockLoop) -> None:
        async def slow(spore: Spore, ctx: Any) -> None:
            await asyncio.sleep(1.0)

        org = subscriber_behind("jobs", 3, slow, name="slow")
        most_queued = 0

        def watch() -> None:
            nonlocal most_queued
            if org.state == "running":
                lane = org.wiring().agents["slow"].lane
                most_queued = max(most_queued, lane.queued)
                loop.call_later(0.01, watch)

        async with org.running():
            watch()
            sends = [asyncio.ensure_future(org.send(None, {"n": n}, channel="jobs"))
                     for n in range(12)]
            await asyncio.sleep(0.5)
            assert sum(send.done() for send in sends) <= 3 + 3 + 1  # mailbox, intake, running
            await asyncio.gather(*sends)
            await org.idle()
        assert most_queued <= 3
        assert org.stats()["agents"]["slow"]["handled"] == 12

    virtual(main)


def test_handler_output_past_the_memory_limit_is_paged_out_and_read_back(
        virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        leaves = 0

        async def fan(spore: Spore, ctx: Any) -> list[dict[str, int]] | None:
            nonlocal leaves
            depth = spore.knowledge["depth"]
            if depth == 2:
                leaves += 1
                return None
            return [{"depth": depth + 1} for _ in range(60)]

        async def ask(spore: Spore, ctx: Any) -> None:
            # A request made while the organism pages: its answer is never paged out.
            answer = await ctx.request("echo", {"q": 1}, timeout=60)
            assert answer.knowledge == {"q": 1}

        async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
            return dict(spore.knowledge)

        org = Organism.from_dict({
            "limits": {"max_in_memory": 200, "max_hops": 8},
            "agents": {"fan": {"handler": fan, "emit": {"to": "fan"}},
                       "ask": {"handler": ask, "peers": ["echo"], "concurrency": 4},
                       "echo": {"handler": echo}}})
        peak_in_memory = 0

        def watch() -> None:
            nonlocal peak_in_memory
            run = org._run
            if org.state == "running" and run is not None:
                intake = run.intake
                peak_in_memory = max(peak_in_memory, intake.held - intake.spill.count)
                loop.call_soon(watch)

        async with org.running():
            watch()
            await org.send("fan", {"depth": 0})
            for _ in range(20):
                await org.send("ask", {})
            await org.idle()
            spilled = org._run.intake.spill.spilled_total  # type: ignore[union-attr]
        assert leaves == 60 * 60
        assert spilled > 1000
        assert peak_in_memory <= 200 + 60 + 20  # the limit, one handler's output, requests
        stats = org.stats()
        assert stats["agents"]["ask"]["handled"] == 20
        assert stats["totals"]["dead_letters"] == 0

    virtual(main)


def test_the_spill_file_is_a_fifo_that_keeps_unpicklable_spores_in_memory() -> None:
    spill = SpillFile()
    first = [Spore(knowledge={"n": n}, priority=1 + n % 10) for n in range(5)]
    live = Spore(knowledge={"lock": threading.Lock()})  # cannot be pickled
    assert spill.push(first) == []
    assert spill.push([Spore(knowledge={"n": 5}), live]) == [live]
    assert len(spill) == 6
    taken = spill.pop(4) + spill.pop(10)
    assert [s.knowledge["n"] for s in taken] == [0, 1, 2, 3, 4, 5]
    assert taken[:5] == first  # every field comes back
    assert len(spill) == 0
    assert spill.push(first[:2]) == []
    assert [s.knowledge["n"] for s in spill.clear()] == [0, 1]
    spill.close()
