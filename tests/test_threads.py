"""Sync handlers run on their agent's own threads (``pipeline.agents.threads``).

A thread still running past its handler's timeout is abandoned: its spore fails as
``timeout``, the thread keeps one of its agent's slots until it returns, and neither
other agents nor the end of the process wait for it. Blocked handlers wait on a
``threading.Event`` the test sets at its end; the test itself waits on conditions
(``organism.idle()``, a subprocess's exit) with deadlines, never on a sleep.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sporeflow.pipeline import LiveView, Organism, Spore
from sporeflow.pipeline.agents.threads import AgentThreads
from sporeflow.pipeline.observe.prometheus import StatsCollector, take_snapshot
from sporeflow.pipeline.observe.summary import render_summary
from sporeflow.steps import AgentLane, LanePolicy

BACKSTOP = 30.0
# More blocked handlers than asyncio's default thread pool has threads on this machine.
BLOCKED = min(32, (os.cpu_count() or 1) + 4) + 2


async def settled(organism: Organism) -> None:
    await asyncio.wait_for(organism.idle(), BACKSTOP)


async def test_blocked_threads_of_one_agent_do_not_starve_another_agent() -> None:
    release = threading.Event()
    ran: list[int] = []

    def stuck(spore: Spore, ctx: Any) -> None:
        release.wait(BACKSTOP)

    def quick(spore: Spore, ctx: Any) -> None:
        ran.append(spore.knowledge["n"])

    organism = Organism.from_dict({
        "organism": {"name": "starve"},
        "agents": {
            "blocked": {"handler": stuck, "concurrency": BLOCKED, "timeout": "100ms"},
            "innocent": {"handler": quick, "concurrency": 2, "timeout": "5s"},
        },
    })
    try:
        async with organism.running():
            for n in range(BLOCKED):
                await organism.send("blocked", {"n": n})
            await settled(organism)  # every blocked handler timed out, its thread runs on
            blocked = organism.stats()["agents"]["blocked"]
            assert (blocked["failed"], blocked["abandoned"]) == (BLOCKED, BLOCKED)
            for n in range(10):
                await organism.send("innocent", {"n": n})
            await settled(organism)
            innocent = organism.stats()["agents"]["innocent"]
            assert (innocent["handled"], innocent["failed"]) == (10, 0)
            assert sorted(ran) == list(range(10))
            assert organism.stats()["agents"]["blocked"]["abandoned"] == BLOCKED
    finally:
        release.set()
    reasons = {letter.reason for letter in organism.dead_letters}
    assert reasons == {"timeout"}
    assert organism.dead_letters.total == BLOCKED


async def test_an_abandoned_thread_holds_its_slot_until_it_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    started: list[int] = []

    def handler(spore: Spore, ctx: Any) -> dict[str, int]:
        started.append(spore.knowledge["n"])
        if spore.knowledge["n"] == 1:
            release.wait(BACKSTOP)
        return {"n": spore.knowledge["n"]}

    organism = Organism.from_dict({
        "organism": {"name": "slots"},
        "agents": {"slow": {"handler": handler, "concurrency": 1, "timeout": "100ms"}},
    })
    caplog.set_level(logging.WARNING, logger="sporeflow")
    try:
        async with organism.running():
            first = await organism.send("slow", {"n": 1})
            await settled(organism)  # the first spore timed out; its thread still runs
            stats = organism.stats()["agents"]["slow"]
            assert (stats["failed"], stats["abandoned"], stats["in_flight"]) == (1, 1, 0)
            lane = organism.wiring().lanes["slow"]
            assert (lane.busy, lane.stuck) == (1, 1)  # the one slot stays taken
            assert shown(organism) == {"summary": "1", "live": "1", "metrics": 1.0}

            await organism.send("slow", {"n": 2})
            await wait_until(lambda: lane.received == 2)
            stats = organism.stats()["agents"]["slow"]
            assert (stats["queued"], stats["abandoned"]) == (1, 1)  # no slot to run it
            assert started == [1]

            release.set()  # the thread returns: its slot is free, the second spore runs
            await settled(organism)
            stats = organism.stats()["agents"]["slow"]
            assert (stats["handled"], stats["failed"], stats["queued"]) == (1, 1, 0)
            assert (stats["abandoned"], stats["in_flight"]) == (0, 0)
            assert (lane.busy, lane.stuck) == (0, 0)
            assert started == [1, 2]
            assert shown(organism) == {"summary": None, "live": None, "metrics": 0.0}
    finally:
        release.set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "abandoned" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per abandoned thread
    assert "'slow'" in warnings[0]
    assert first.id in warnings[0]


def shown(organism: Organism) -> dict[str, Any]:
    """Agent slow's abandoned threads as the summary, the live view and the metrics show
    them (the text columns appear only while some agent has any)."""
    stats = organism.stats()
    summary = render_summary(stats, 1.0).splitlines()
    frame = LiveView(organism, console=Console(file=io.StringIO())).render().plain
    live = frame.replace("in flight", "in-flight").splitlines()
    metrics = {(family.name, sample.labels["agent"]): sample.value
               for family in StatsCollector(lambda: take_snapshot(organism)).collect()
               for sample in family.samples if "agent" in sample.labels}
    return {"summary": _column(summary, "slow", "abandoned"),
            "live": _column(live[1:], "slow", "abandoned"),
            "metrics": metrics[("sporeflow_agent_abandoned", "slow")]}


def _column(lines: list[str], row: str, column: str) -> str | None:
    """The cell of ``row`` under ``column`` in a text table whose first line is its
    header (cells hold no spaces); None without that column."""
    header = lines[0].split()
    if column not in header:
        return None
    cells = next(line.split() for line in lines if line.split()[:1] == [row])
    return cells[header.index(column) - header.index("agent")]


async def wait_until(condition: Callable[[], bool], timeout: float = BACKSTOP) -> None:
    """Yield to the loop until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0)


HANDLERS = '''
import time


def boot(spore, ctx):
    return {"n": 1}


def stuck(spore, ctx):
    time.sleep(3600)  # the fault: a sync handler that blocks far past its timeout
'''

ORGANISM = '''
organism: {name: stuckjob}
agents:
  starter:
    handler: stuckjob_handlers:boot
    boot: {}
    emit: {to: stuck}
  stuck:
    handler: stuckjob_handlers:stuck
    timeout: 200ms
'''


def test_run_until_idle_exits_promptly_past_a_blocked_sync_handler(tmp_path: Path) -> None:
    (tmp_path / "stuckjob_handlers.py").write_text(textwrap.dedent(HANDLERS))
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(path), "--until-idle"],
        capture_output=True, cwd=tmp_path, timeout=BACKSTOP, check=False)
    took = time.monotonic() - began
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert " handled in " in stderr  # the summary
    assert "the thread is abandoned" in stderr  # the warning
    lines = stderr.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("agent  ")):]
    assert _column(table, "stuck", "abandoned") == "1"  # still running at the end
    assert "1 dead letter (timeout: 1)" in stderr
    assert took < BACKSTOP


async def test_threads_are_made_on_demand_up_to_the_size_and_closed_without_waiting(
) -> None:
    loop = asyncio.get_running_loop()
    release = threading.Event()

    async def nothing(spore: Spore, attempt: int) -> None:
        pass

    lane = AgentLane("pool", nothing, lambda result, parent: [], LanePolicy(concurrency=2),
                     on_done=lambda *_: None, on_failed=lambda *_: None)
    threads = AgentThreads("pool", 2, lambda: lane, logging.getLogger("test.threads"))
    spore = Spore(knowledge={})
    assert threads.alive == 0  # nothing made before the first call
    assert await threads.run(lambda x: x * 2, 21, spore=spore) == 42
    assert threads.alive == 1
    blocked = [loop.create_task(threads.run(release.wait, BACKSTOP, spore=spore))
               for _ in range(3)]
    await wait_until(lambda: threads.running == 2)
    assert threads.alive == 2  # the third call waits for a thread: there are two
    for task in blocked:
        task.cancel()
    await asyncio.gather(*blocked, return_exceptions=True)
    assert (threads.abandoned, lane.stuck, lane.busy) == (2, 2, 2)  # the third never runs
    threads.close()  # returns at once; the two threads still run
    with pytest.raises(RuntimeError, match="closed"):
        await threads.run(lambda: None, spore=spore)
    release.set()
    await wait_until(lambda: lane.stuck == 0 and threads.alive == 0)
    assert (lane.busy, threads.running) == (0, 0)

    brief = AgentThreads("brief", 1, lambda: lane, logging.getLogger("test.threads"),
                         keepalive=0.01)
    assert await brief.run(int, "7", spore=spore) == 7
    await wait_until(lambda: brief.alive == 0)  # idle past its keepalive: it ended
    assert await brief.run(int, "8", spore=spore) == 8  # and another is made on demand
    brief.close()


async def test_each_agent_runs_its_sync_handlers_on_threads_of_its_own() -> None:
    seen: dict[str, set[str]] = {}

    def record(spore: Spore, ctx: Any) -> None:
        seen.setdefault(ctx.agent, set()).add(threading.current_thread().name)

    class Recorder:
        def handle(self, spore: Spore, ctx: Any) -> None:
            record(spore, ctx)

    organism = Organism.from_dict({
        "organism": {"name": "own"},
        "agents": {"plain": {"handler": record, "concurrency": 2},
                   "instance": {"handler": Recorder, "concurrency": 3}},
    })
    async with organism.running():
        for n in range(6):
            await organism.send("plain", {"n": n})
            await organism.send("instance", {"n": n})
        await settled(organism)
    assert set(seen) == {"plain", "instance"}
    for agent, names in seen.items():
        assert all(name.startswith(f"sporeflow:{agent}:") for name in names), names
    assert len(seen["plain"]) <= 2
    assert len(seen["instance"]) <= 3


async def test_a_plain_generator_handler_runs_off_the_event_loop() -> None:
    # Before: its thread only made the generator object; the lane's shaper then ran its
    # body on the event loop (a time.sleep in it held the loop).
    where: list[str] = []
    seen: list[int] = []

    def produce(spore: Spore, ctx: Any) -> Any:
        for i in range(3):
            where.append(threading.current_thread().name)
            time.sleep(0.05)
            yield {"i": i}

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["i"])

    org = Organism.from_dict({"agents": {"produce": {"handler": produce,
                                                     "emit": {"to": "sink"}},
                                         "sink": {"handler": sink}}})
    async with org.running(drain_timeout=5):
        await org.send("produce", {})
        await asyncio.wait_for(org.idle(), 10)
    assert len(where) == 3
    assert all(name.startswith("sporeflow:produce:") for name in where), where
    assert seen == [0, 1, 2]


async def test_a_def_generators_item_goes_before_the_next_is_made() -> None:
    # Found in review: items were taken a batch at a time, each batch waiting for its
    # last item, so an item made before a wait (a poll, a sensor) went only with the
    # next. Here the generator waits for the sink to have item 0: held, it would not.
    reached = threading.Event()
    released: list[bool] = []

    def produce(spore: Spore, ctx: Any) -> Any:
        yield {"i": 0}
        released.append(reached.wait(10))  # a backstop: True only if item 0 went first
        yield {"i": 1}
        for i in range(2, 600):  # quick items go a batch at a time
            yield {"i": i}

    got: list[int] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        got.append(spore.knowledge["i"])
        if spore.knowledge["i"] == 0:
            reached.set()

    org = Organism.from_dict({"agents": {"produce": {"handler": produce, "emit": {"to": "sink"}},
                                         "sink": {"handler": sink}}})
    async with org.running(drain_timeout=5):
        await org.send("produce", {})
        await asyncio.wait_for(org.idle(), 30)
    assert released == [True]
    assert got == list(range(600))


async def test_a_def_generators_items_before_its_failure_go_as_an_async_ones_do() -> None:
    # Found in review: the items taken on the thread were lost when the generator raised.
    seen: dict[str, list[int]] = {"sync": [], "async": []}

    def sync_produce(spore: Spore, ctx: Any) -> Any:
        yield {"i": 0}
        raise RuntimeError("flaky")

    async def async_produce(spore: Spore, ctx: Any) -> Any:
        yield {"i": 0}
        raise RuntimeError("flaky")

    def sink(name: str) -> Any:
        async def handle(spore: Spore, ctx: Any) -> None:
            seen[name].append(spore.knowledge["i"])
        return handle

    org = Organism.from_dict({"agents": {
        "sp": {"handler": sync_produce, "emit": {"to": "sync"}},
        "ap": {"handler": async_produce, "emit": {"to": "async"}},
        "sync": {"handler": sink("sync")}, "async": {"handler": sink("async")}}})
    async with org.running(drain_timeout=5):
        await org.send("sp", {})
        await org.send("ap", {})
        await asyncio.wait_for(org.idle(), 30)
    assert seen == {"sync": [0], "async": [0]}
    assert sorted(d.reason for d in org.dead_letters) == ["handler failed"] * 2
