"""State snapshots carry the spores queued: they come back through the chain, once each."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, OrganismStateError, Spore
from sporeflow.pipeline.journal.offline import JournalFile


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the loop until ``condition()`` holds; fail after ``timeout`` real seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0)


def blocked_worker() -> tuple[Organism, asyncio.Event]:
    """An organism whose 'worker' holds its first spore until the event is set."""
    gate = asyncio.Event()

    async def work(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    return Organism.from_dict({"agents": {"worker": {"handler": work}}}), gate


def counting(handled: list[Any], **agents: Any) -> Organism:
    def note(spore: Spore, ctx: Any) -> None:
        handled.append(spore.knowledge["n"])

    return Organism.from_dict({"agents": {"worker": {"handler": note}, **agents}})


async def test_a_snapshot_taken_with_50_spores_queued_restores_them_handled_once() -> None:
    first, gate = blocked_worker()
    await first.start()
    for n in range(51):  # 0 runs, 1..50 wait in the mailbox
        await first.send("worker", {"n": n})
    lane = first.wiring().agents["worker"].lane
    await until(lambda: lane.queued == 50)
    snapshot = json.loads(json.dumps(first.save_state()))  # as a file would keep it
    assert [s["knowledge"]["n"] for s in snapshot["spores"]["queued"]["worker"]] == list(
        range(1, 51))
    assert snapshot["spores"]["intake"] == []
    assert lane.queued == 50  # a snapshot copies; it takes nothing
    gate.set()
    await first.idle()
    await first.stop()

    handled: list[int] = []
    second = counting(handled)
    second.load_state(snapshot)  # before the start: they enter at the start
    async with second.running():
        await second.idle()
    assert sorted(handled) == list(range(1, 51))
    stats = second.stats()
    assert stats["agents"]["worker"]["received"] == 50
    assert stats["dead_letters"]["total"] == 0


async def test_a_broadcast_delivery_restored_goes_to_its_agent_alone_while_running() -> None:
    gate = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    wiring = {"channels": {"news": {}}}
    first = Organism.from_dict({**wiring, "agents": {
        "slow": {"handler": slow, "subscribe": ["news"]},
        "quick": {"handler": lambda spore, ctx: None, "subscribe": ["news"]}}})
    async with first.running():
        for n in range(3):
            await first.broadcast({"n": n}, channel="news")
        slow_lane = first.wiring().agents["slow"].lane
        await until(lambda: slow_lane.queued == 2
                    and first.stats()["agents"]["quick"]["handled"] == 3)
        snapshot = first.save_state()
        gate.set()
    assert list(snapshot["spores"]["queued"]) == ["slow"]

    seen: dict[str, list[int]] = {"slow": [], "quick": []}
    second = Organism.from_dict({**wiring, "agents": {
        name: {"handler": lambda spore, ctx, name=name: seen[name].append(
            spore.knowledge["n"]), "subscribe": ["news"]} for name in seen}})
    async with second.running():
        second.load_state(snapshot)  # running: they enter the chain at once
        await second.idle()
    assert seen == {"slow": [1, 2], "quick": []}


async def test_what_a_handler_sent_waits_in_the_intake_and_is_kept_with_its_state() -> None:
    snapshots: list[dict[str, Any]] = []

    async def fan(spore: Spore, ctx: Any) -> None:
        for n in range(12):
            ctx.send("worker", {"n": n})  # sent; not awaited: no pause while paged out
        ctx.state["sent"] = 12
        snapshots.append(organism.save_state())  # the sends are not routed yet

    organism = Organism.from_dict({
        "agents": {"fan": {"handler": fan, "emit": {"to": "worker"}},
                   "worker": {"handler": lambda spore, ctx: None}},
        "limits": {"max_in_memory": 5}})  # most of the twelve are paged out to disk
    async with organism.running():
        await organism.send("fan", {})
        await organism.idle()
        assert organism.stats()["totals"]["paged_out_total"] > 0
    [snapshot] = snapshots
    assert snapshot["agents"] == {"fan": {"sent": 12}}
    assert sorted(s["knowledge"]["n"] for s in snapshot["spores"]["intake"]) == list(range(12))

    handled: list[int] = []
    second = counting(handled)
    second.load_state(snapshot)
    async with second.running():
        await second.idle()
    assert sorted(handled) == list(range(12))


async def test_restored_spores_are_journaled_and_a_stop_keeps_them_there(
        tmp_path: Path) -> None:
    first, gate = blocked_worker()
    async with first.running():
        for n in range(4):
            await first.send("worker", {"n": n})
        lane = first.wiring().agents["worker"].lane
        await until(lambda: lane.queued == 3)
        snapshot = first.save_state()
        gate.set()

    second, _ = blocked_worker()  # never released: the stop interrupts it
    journaled = Organism(second.spec, journal=tmp_path / "j.db")
    await journaled.start()
    journaled.load_state(snapshot)
    assert await journaled.stop(drain_timeout=0) == 3
    assert list(journaled.dead_letters) == []  # kept for the next start, not dead
    with JournalFile(tmp_path / "j.db") as file:
        assert sorted(s.knowledge["n"] for s in file.pending()) == [1, 2, 3]


async def test_restored_spores_pass_expire_and_route_like_any_other() -> None:
    first, gate = blocked_worker()
    async with first.running():
        for n in range(3):
            await first.send("worker", {"n": n})
        lane = first.wiring().agents["worker"].lane
        await until(lambda: lane.queued == 2)
        snapshot = json.loads(json.dumps(first.save_state()))
        gate.set()
    queued = snapshot["spores"]["queued"]
    queued["worker"][0]["expires_at"] = datetime(2020, 1, 1, tzinfo=UTC).isoformat()
    queued["worker"][1]["to_agent"] = "ghost"  # an agent the organism does not have

    handled: list[int] = []
    second = counting(handled)
    second.load_state(snapshot)
    async with second.running():
        await second.idle()
    assert handled == []
    assert sorted(letter.reason for letter in second.dead_letters) == [
        "expired", "unknown agent"]


async def test_a_malformed_spore_in_a_snapshot_is_named_and_nothing_is_loaded() -> None:
    handled: list[int] = []
    organism = counting(handled)
    snapshot = {"sporeflow_state": 1, "agents": {"worker": {"seen": 1}},
                "spores": {"queued": {"worker": [{"knowledge": {"n": 1}},
                                                 {"knowledge": {"n": 2}, "hops": "many"}]}}}
    with pytest.raises(OrganismStateError, match=r"spores\.queued\['worker'\]\[1\] is not a "
                                                 r"spore: .*hops"):
        organism.load_state(snapshot)
    with pytest.raises(OrganismStateError, match="'intake': \\[spore, ...\\]"):
        organism.load_state({"sporeflow_state": 1, "agents": {}, "spores": {"intake": 3}})
    async with organism.running():
        await organism.idle()
        assert organism.wiring().agents["worker"].state == {}
    assert handled == []


async def test_an_idle_organism_saves_no_spores_section() -> None:
    organism = counting([])
    async with organism.running():
        await organism.send("worker", {"n": 1})
        await organism.idle()
        assert "spores" not in organism.save_state()


async def test_a_spore_that_is_no_json_is_left_out_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    organism = counting([])
    async with organism.running():
        good = Spore(knowledge={"n": 1}, to_agent="worker")
        bad = Spore(knowledge={"n": {1, 2}}, to_agent="worker")  # a set: the chain refuses it
        organism._require_running().intake.feed([good, bad])  # as a handler's reply would be
        snapshot = organism.save_state()  # in the same step: neither is routed yet
        await organism.idle()
    assert [s["id"] for s in snapshot["spores"]["intake"]] == [good.id]
    assert f"spore {bad.id} is left out of the snapshot: it is not JSON" in caplog.text
    assert [letter.reason for letter in organism.dead_letters] == ["invalid"]
