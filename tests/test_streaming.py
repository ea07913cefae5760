"""Async-generator handlers stream; sources stop first when the organism stops."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Organism, Spore

from .conftest import VirtualClockLoop


def test_each_yielded_item_is_handled_before_the_next_is_yielded(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        handled: list[int] = []
        turns: list[asyncio.Event] = [asyncio.Event() for _ in range(3)]

        async def source(spore: Spore, ctx: Any) -> AsyncIterator[dict[str, int]]:
            for n in range(3):
                yield {"n": n}
                await asyncio.wait_for(turns[n].wait(), 60)  # the sink handled item n

        async def sink(spore: Spore, ctx: Any) -> None:
            handled.append(spore.knowledge["n"])
            turns[spore.knowledge["n"]].set()

        org = Organism.from_dict({"agents": {
            "source": {"handler": source, "emit": {"to": "sink"}},
            "sink": {"handler": sink}}})
        async with org.running():
            await org.send("source", {})
            await org.idle()
        assert handled == [0, 1, 2]
        assert org.stats()["totals"]["dead_letters"] == 0

    virtual(main)


def test_stop_ends_an_endless_generator_source_at_its_next_item(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async def ticks(spore: Spore, ctx: Any) -> AsyncIterator[dict[str, int]]:
            n = 0
            while True:
                yield {"n": n}
                n += 1
                await asyncio.sleep(0.05)

        async def sink(spore: Spore, ctx: Any) -> None:
            pass

        org = Organism.from_dict({"agents": {
            "ticks": {"handler": ticks, "emit": {"to": "sink"}, "boot": {}},
            "sink": {"handler": sink}}})
        await org.start()
        await asyncio.sleep(1.0)
        began = loop.time()
        left = await org.stop(drain_timeout=30)
        assert loop.time() - began <= 0.1  # the source stopped; the drain did not wait
        assert left == 0
        stats = org.stats()["agents"]
        assert stats["ticks"]["handled"] == 1
        assert 15 <= stats["sink"]["handled"] <= 25

    virtual(main)


def test_a_boot_handler_sending_forever_stops_at_its_next_send(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async def producer(spore: Spore, ctx: Any) -> None:
            n = 0
            while True:
                await ctx.send("sink", {"n": n})
                n += 1
                await asyncio.sleep(0.01)

        async def sink(spore: Spore, ctx: Any) -> None:
            pass

        org = Organism.from_dict({"agents": {
            "producer": {"handler": producer, "peers": ["sink"], "boot": {}},
            "sink": {"handler": sink}}})
        await org.start()
        await asyncio.sleep(1.0)
        sent_before = org.stats()["agents"]["sink"]["received"]
        began = loop.time()
        await org.stop(drain_timeout=30)
        assert loop.time() - began <= 0.1
        assert org.stats()["agents"]["sink"]["received"] <= sent_before + 1
        [letter] = org.dead_letters
        assert letter.agent == "producer"
        assert "stopping" in letter.error

    virtual(main)


def test_run_with_max_duration_ends_an_endless_source(tmp_path: Path) -> None:
    (tmp_path / "ticks.py").write_text(textwrap.dedent("""
        import asyncio

        async def ticks(spore, ctx):
            n = 0
            while True:
                yield {"n": n}
                n += 1
                await asyncio.sleep(0.01)

        async def sink(spore, ctx):
            pass
    """))
    (tmp_path / "organism.yaml").write_text(textwrap.dedent("""
        organism: {name: ticking}
        agents:
          ticks: {handler: ticks:ticks, emit: {to: sink}, boot: {}}
          sink: {handler: ticks:sink}
    """))
    result = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", "organism.yaml", "--quiet",
         "--max-duration", "1", "--drain-timeout", "1s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sink" in result.stderr  # the summary
    # Found by a new user: a batch (--until-idle) that --max-duration ended before it was
    # idle exited 0, as if it had finished; 124 says it ran out of time, as timeout(1) does.
    result = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", "organism.yaml", "--quiet",
         "--until-idle", "--max-duration", "0.2s", "--drain-timeout", "1s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 124, result.stderr
    assert ("stopped by --max-duration 200ms before it was idle: the batch did not finish"
            in result.stderr)


def test_a_typo_in_until_is_reported_at_start_not_after_the_drain(tmp_path: Path) -> None:
    (tmp_path / "pingpong.py").write_text(textwrap.dedent("""
        import asyncio

        async def bounce(spore, ctx):  # a conversation that never ends by itself
            await asyncio.sleep(0.01)
            return {"n": spore.knowledge.get("n", 0) + 1}
    """))
    (tmp_path / "organism.yaml").write_text(textwrap.dedent("""
        organism: {name: pingpong}
        limits: {max_hops: 1000000}
        agents:
          ping: {handler: pingpong:bounce, emit: {to: pong}, boot: {}}
          pong: {handler: pingpong:bounce, emit: {to: ping}}
    """))
    # A drain of 120 s would outlast the backstop: the run must not drain at all.
    result = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", "organism.yaml", "--quiet",
         "--until", "agents.ping.handeld >= 10", "--drain-timeout", "120s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "did you mean 'agents.ping.handled'?" in result.stderr


async def test_a_retried_generator_makes_its_items_again_with_the_same_ids() -> None:
    # The contract (README, retries): a generator's items are fed as they come, so a run
    # that fails after some and is retried makes them again, with the same ids, which
    # `dedupe` drops. (Found in review: it had been all or nothing, as a list is.)
    seen: dict[str, list[tuple[int, str]]] = {"plain": [], "deduped": []}
    tries: dict[str, int] = {}

    async def produce(spore: Spore, ctx: Any) -> Any:
        to = spore.knowledge["to"]
        tries[to] = tries.get(to, 0) + 1
        yield Spore(knowledge={"i": 0}, to_agent=to)
        if tries[to] == 1:
            raise RuntimeError("flaky")
        yield Spore(knowledge={"i": 1}, to_agent=to)

    def sink(name: str) -> Any:
        async def handle(spore: Spore, ctx: Any) -> None:
            seen[name].append((spore.knowledge["i"], spore.id))
        return handle

    org = Organism.from_dict({"agents": {
        "produce": {"handler": produce, "retry": {"attempts": 2, "backoff": "0s"}},
        "plain": {"handler": sink("plain")},
        "deduped": {"handler": sink("deduped"), "dedupe": "1m"}}})
    async with org.running(drain_timeout=5):
        for to in ("plain", "deduped"):
            await org.send("produce", {"to": to})
            await asyncio.wait_for(org.idle(), 30)
    plain, deduped = seen["plain"], seen["deduped"]
    assert [i for i, _ in plain] == [0, 0, 1]
    assert plain[0][1] == plain[1][1]  # the copy has the first one's id
    assert [i for i, _ in deduped] == [0, 1]
