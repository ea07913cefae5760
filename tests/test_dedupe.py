"""``agents.X.dedupe``: a copy of a spore the agent handled within the window is dropped.

The paths (embedded, memory broker, RabbitMQ) are in conformance/test_idempotence.py;
here: the declaration, the bounded window, failures, the journal, logs and metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import ConfigError, organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.observe.prometheus import StatsCollector, take_snapshot
from sporeflow.steps.seen import SeenWindow

from .conformance.test_idempotence import Clock


async def noop(spore: Spore, ctx: Any) -> None:
    return None


def test_dedupe_is_a_duration_and_off_by_default() -> None:
    spec = organism_from_dict({"agents": {"a": {"handler": noop, "dedupe": "10m"},
                                          "b": {"handler": noop, "dedupe": 0},
                                          "c": {"handler": noop}}})
    assert [spec.agents[n].dedupe for n in "abc"] == [600.0, None, None]
    with pytest.raises(ConfigError, match=r"agents\.a\.dedupe"):
        organism_from_dict({"agents": {"a": {"handler": noop, "dedupe": "soon"}}})


def test_the_window_forgets_what_is_older_and_stays_within_its_cap() -> None:
    seen = SeenWindow(10.0, cap=3)
    for key, at in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
        assert seen.add(key, at) is None
    seen.forget(10.5)  # a is 10.5 s old
    assert ("a" in seen, "b" in seen, len(seen)) == (False, True, 2)
    seen.add("d", 3.0)
    assert seen.add("e", 4.0) == 1.0  # b went early, to keep within 3: its time is told
    assert sorted(k for k in "abcde" if k in seen) == ["c", "d", "e"]
    seen.add("c", 5.0)  # seen again: it moves to the end, the newest
    assert seen.add("f", 6.0) == 3.0


def copies(handler: Any, *, journal: Path | None = None, now: Any = None,
           **agent: Any) -> Organism:
    spec = organism_from_dict({"agents": {"x": {"handler": handler, "dedupe": "1m", **agent}}})
    extra = {"now": now} if now is not None else {}
    return Organism(spec, journal=journal, **extra)


async def test_a_copy_of_a_spore_whose_handling_failed_runs_again() -> None:
    runs: list[int] = []

    async def fails_once(spore: Spore, ctx: Any) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first")

    org = copies(fails_once)
    async with org.running():
        for _ in range(3):
            await org.send("x", {}, id="same")
            await org.idle()
    assert len(runs) == 2  # failed, handled, then the third is a copy of a handled one
    agent = org.stats()["agents"]["x"]
    assert (agent["failed"], agent["handled"], agent["deduplicated"]) == (1, 1, 1)
    assert [letter.reason for letter in org.dead_letters] == ["handler failed"]


async def test_a_dropped_copy_is_logged_and_finishes_its_journal_row(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    org = copies(noop, journal=tmp_path / "j.db")
    with caplog.at_level(logging.DEBUG, logger="sporeflow"):
        async with org.running():
            for _ in range(2):
                await org.send("x", {}, id="same")
                await org.idle()
    with JournalFile(tmp_path / "j.db") as file:
        assert (file.pending(), file.dead_letters()) == ([], [])
    [line] = [r for r in caplog.records if "dedupe" in r.getMessage()]
    assert "'x' dropped spore same" in line.getMessage()
    assert (line.levelno, getattr(line, "spore_id", None)) == (logging.DEBUG, "same")
    assert org.dead_letters.total == 0


async def test_without_dedupe_a_copy_is_handled_again() -> None:
    runs: list[str] = []

    async def count(spore: Spore, ctx: Any) -> None:
        runs.append(spore.id)

    org = Organism.from_dict({"agents": {"x": {"handler": count}}})
    async with org.running():
        for _ in range(2):
            await org.send("x", {}, id="same")
            await org.idle()
    assert runs == ["same", "same"]
    assert org.stats()["agents"]["x"]["deduplicated"] == 0


async def test_the_count_is_a_prometheus_counter() -> None:
    org = copies(noop, now=Clock())
    async with org.running():
        for _ in range(3):
            await org.send("x", {}, id="same")
            await org.idle()
        snapshot = take_snapshot(org)
    samples = {(s.name, s.labels.get("agent")): s.value
               for family in StatsCollector(lambda: snapshot).collect()
               for s in family.samples}
    assert samples[("sporeflow_agent_deduplicated_total", "x")] == 2
    assert samples[("sporeflow_agent_handled_total", "x")] == 1
