"""A journal keeps its dead letters within a count and an age (issue 17), oldest dropped
first, each drop counted and logged."""

from __future__ import annotations

import logging
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import Limits, organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.retention import DeadLetterRetention

DROPPED = re.compile(r"dropped (\d+) dead letters")


async def listen(spore: Spore, ctx: Any) -> None:
    return None


def organism(journal: Path, **limits: Any) -> Organism:
    spec = organism_from_dict({"organism": {"name": "kept"}, "limits": limits,
                               "channels": {"news": {}},
                               "agents": {"reader": {"handler": listen, "subscribe": ["news"]}}})
    return Organism(spec, journal=journal)


async def refuse(org: Organism, numbers: range) -> None:
    """Make a dead letter of each number: a ready-made broadcast on a channel nobody
    declared (``broadcast`` would refuse it at the call)."""
    for n in numbers:
        await org.submit(Spore(knowledge={"n": n}, channel="nowhere"))
    await org.idle()
    journal = org.journal
    assert journal is not None
    await journal.flush()


def kept(path: Path) -> list[int]:
    with JournalFile(path) as file:
        return [stored.letter.spore.knowledge["n"] for stored in file.dead_letters()]


def logged_drops(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(found[1]) for record in caplog.records
            if (found := DROPPED.search(record.getMessage()))]


async def test_past_the_cap_the_oldest_dead_letters_are_dropped_counted_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sporeflow.journal")
    path = tmp_path / "j.db"
    org = organism(path, max_journal_dead_letters=100)
    async with org.running():
        for start in range(0, 300, 30):  # several commits, several sweeps
            await refuse(org, range(start, start + 30))
        stats = org.stats()["journal"]
    letters = kept(path)
    assert 0 < len(letters) <= 100
    assert letters == list(range(300 - len(letters), 300))  # the newest, in order
    assert stats["dead_letters"] == len(letters)
    assert stats["dead_letters_dropped"] == 300 - len(letters)
    drops = logged_drops(caplog)
    assert sum(drops) == 300 - len(letters)  # each drop is in the log, once
    assert len(drops) < 300 // 10  # a line per sweep, not per letter


async def test_dead_letters_older_than_the_age_limit_are_dropped_at_the_next_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sporeflow.journal")
    path = tmp_path / "j.db"
    first = organism(path)
    async with first.running():
        await refuse(first, range(5))
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    with sqlite3.connect(path) as conn:  # as if the first run was two days ago
        conn.execute("UPDATE dead_letters SET at = ?", (two_days_ago,))
    conn.close()
    second = organism(path, max_journal_dead_letter_age="24h")
    async with second.running():
        await refuse(second, range(5, 8))
        stats = second.stats()["journal"]
    assert kept(path) == [5, 6, 7]
    assert stats["dead_letters_dropped"] == 5
    assert logged_drops(caplog) == [5]
    assert "limits.max_journal_dead_letter_age=24h," in caplog.text  # as written, not 86400s


def test_the_age_is_swept_again_only_after_a_tenth_of_it() -> None:
    clock = [0.0]
    retention = DeadLetterRetention(Path("x.db"), Limits(max_journal_dead_letter_age=600.0),
                                    clock=lambda: clock[0])
    assert retention.due(0)  # the first sweep, at open
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY, at TEXT NOT NULL)")
    conn.execute("INSERT INTO dead_letters (at) VALUES (?)",
                 ((datetime.now(UTC) - timedelta(hours=1)).isoformat(),))
    conn.isolation_level = None
    assert retention.sweep(conn) == 0
    assert retention.dropped == 1
    assert not retention.due(0)
    clock[0] = 60.0  # a tenth of the age
    assert retention.due(0)
    assert retention.due(Limits().max_journal_dead_letters + 1)  # past the cap: at once
    conn.close()


async def test_dlq_purge_still_works_on_a_capped_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    org = organism(path, max_journal_dead_letters=10)
    async with org.running():
        await refuse(org, range(15))
    with JournalFile(path) as file:
        letters = file.dead_letters()
        assert file.purge(letters[:2]) == 2
    assert len(kept(path)) == len(letters) - 2
