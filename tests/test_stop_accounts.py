"""A stop that times out: dead_letters, stats() and ``sporeflow dlq list`` tell one story."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from sporeflow.pipeline import Organism
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.journal.offline import JournalFile

STUCK = '''
import asyncio

STARTED = asyncio.Event()

async def stuck(spore, ctx):
    STARTED.set()
    await asyncio.Event().wait()  # never finishes: the stop cancels it
'''
ORGANISM = """
organism: {name: stop-accounts, journal: journal.db}
agents:
  stuck: {handler: stop_stuck:stuck}
"""


def listed(organism: Path) -> list[dict[str, object]]:
    result = CliRunner().invoke(cli, ["dlq", "list", str(organism), "--json"])
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_a_journaled_stop_that_timed_out_agrees_in_memory_in_stats_and_dlq_list(
        tmp_path: Path) -> None:
    (tmp_path / "organism.yaml").write_text(ORGANISM)
    (tmp_path / "stop_stuck.py").write_text(STUCK)
    org = Organism.from_file(tmp_path / "organism.yaml")
    await org.start()
    for n in range(4):  # one runs, three wait in its mailbox
        await org.send("stuck", {"n": n})
    started = org.wiring().agents["stuck"].spec.handler.__globals__["STARTED"]
    await asyncio.wait_for(started.wait(), 10)
    assert await org.stop(drain_timeout=0.2) == 4  # the drain times out: one runs for ever
    stats = org.stats()
    # None of the four is dead: the journal keeps them for the next start.
    assert list(org.dead_letters) == []
    assert stats["dead_letters"]["total"] == 0 == stats["totals"]["dead_letters"]
    assert stats["dead_letters"]["by_reason"] == {}
    assert listed(tmp_path / "organism.yaml") == []
    assert stats["totals"]["unfinished_kept"] == 4
    assert stats["journal"]["pending"] == 4
    with JournalFile(tmp_path / "journal.db") as file:
        assert sorted(s.knowledge["n"] for s in file.pending()) == [0, 1, 2, 3]


async def test_without_a_journal_a_stop_dead_letters_what_it_interrupts(tmp_path: Path) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(spore: object, ctx: object) -> None:
        started.set()
        await release.wait()

    org = Organism.from_dict({"agents": {"stuck": {"handler": stuck}}})
    await org.start()
    for n in range(4):
        await org.send("stuck", {"n": n})
    await asyncio.wait_for(started.wait(), 10)
    assert await org.stop(drain_timeout=0) == 4
    stats = org.stats()
    assert [letter.reason for letter in org.dead_letters] == ["shutdown"] * 4
    assert stats["dead_letters"]["by_reason"] == {"shutdown": 4}
    assert stats["totals"]["unfinished_kept"] == 0


async def test_a_dead_letter_notice_a_stop_interrupts_stays_in_the_journal(
        tmp_path: Path) -> None:
    listening = asyncio.Event()

    async def fail(spore: object, ctx: object) -> None:
        raise ValueError("no")

    async def watch(spore: object, ctx: object) -> None:
        listening.set()
        await asyncio.Event().wait()  # never finishes: the stop interrupts it

    spec = Organism.from_dict({"agents": {
        "fragile": {"handler": fail},
        "watcher": {"handler": watch, "subscribe": ["dead-letter"]}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    await org.start()
    await org.send("fragile", {"n": 1})
    await asyncio.wait_for(listening.wait(), 10)
    assert await org.stop(drain_timeout=0) == 1
    assert [letter.reason for letter in org.dead_letters] == ["handler failed"]
    with JournalFile(tmp_path / "j.db") as file:  # the notice is kept, not lost
        assert [(s.channel, s.knowledge["reason"]) for s in file.pending()] == [
            ("dead-letter", "handler failed")]
        assert [s.letter.reason for s in file.dead_letters()] == ["handler failed"]
