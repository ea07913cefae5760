"""The durable journal: what is admitted is on disk, what is unfinished is replayed."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import HandlerError
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError
from sporeflow.pipeline.journal.store import Journal

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def organism(handlers: dict[str, Any], journal: Path | None, **agents: Any) -> Organism:
    spec = {"agents": {name: {"handler": handler, **agents.get(name, {})}
                       for name, handler in handlers.items()}}
    built = Organism.from_dict(spec)
    return Organism(built.spec, journal=journal)


async def record_pending(path: Path, *spores: Spore) -> None:
    """Leave ``spores`` unfinished in a journal, as a killed run would."""
    journal = Journal(path)
    await journal.open()
    await journal.record(spores)
    await journal.close()


# -- recording ----------------------------------------------------------------------


async def test_a_sent_spore_is_on_disk_when_send_returns(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await release.wait()

    org = organism({"slow": slow}, tmp_path / "j.db")
    async with org.running():
        sent = await org.send("slow", {"n": 1})
        with JournalFile(tmp_path / "j.db") as file:  # another connection: what is on disk
            assert [s.id for s in file.pending()] == [sent.id]
        release.set()
        await org.idle()
    with JournalFile(tmp_path / "j.db") as file:
        assert file.pending() == []


async def test_done_records_replies_and_finishes_the_parent_in_one_commit(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    await journal.open()
    parent = Spore(knowledge={"n": 1}, to_agent="a")
    await journal.record([parent])
    commits = journal.commits
    replies = [Spore(knowledge={"r": i}, from_agent="a") for i in range(3)]
    journal.done(parent, replies)
    await journal.flush()
    assert journal.commits == commits + 1
    with JournalFile(tmp_path / "j.db") as file:
        assert [s.knowledge for s in file.pending()] == [{"r": 0}, {"r": 1}, {"r": 2}]
        assert [s.id for s in file.pending()] == [r.id for r in replies]
    await journal.close()


# Replies get their ids, derived from the parent's, before the journal sees them:
# tests/test_idempotent_ids.py has a replayed handler give them the same ids again.


async def test_a_broadcast_is_finished_only_after_its_last_delivery(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    await journal.open()
    spore = Spore(knowledge={"n": 1}, channel="news")
    await journal.record([spore])
    journal.count_fanout(spore.id, 3)
    journal.done(spore, [])
    journal.settle(spore)
    await journal.flush()
    assert journal.pending == 1
    journal.done(spore, [])
    await journal.flush()
    assert journal.pending == 0
    await journal.close()


# -- replaying ---------------------------------------------------------------------


async def test_unfinished_spores_are_replayed_highest_priority_first(tmp_path: Path) -> None:
    await record_pending(tmp_path / "j.db", *(
        Spore(knowledge={"n": n}, to_agent="worker", priority=priority)
        for n, priority in enumerate([1, 9, 5, 9, 1])))
    seen: list[int] = []

    async def worker(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    org = organism({"worker": worker}, tmp_path / "j.db")
    async with org.running():
        await org.idle()
        assert org.stats()["journal"]["replayed"] == 5
    assert seen == [1, 3, 2, 0, 4]  # by priority, in arrival order within one


async def test_replayed_spores_go_before_new_ones(tmp_path: Path) -> None:
    await record_pending(tmp_path / "j.db", Spore(knowledge={"n": "old"}, to_agent="worker"))
    seen: list[str] = []

    async def worker(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    org = organism({"worker": worker}, tmp_path / "j.db")
    async with org.running():
        await org.send("worker", {"n": "new"})
        await org.idle()
    assert seen == ["old", "new"]


async def test_spores_that_expired_meanwhile_are_dead_lettered_not_replayed(
        tmp_path: Path) -> None:
    await record_pending(tmp_path / "j.db",
                         Spore(knowledge={"n": 1}, to_agent="worker",
                               expires_at=EPOCH + timedelta(seconds=10)),
                         Spore(knowledge={"n": 2}, to_agent="worker",
                               expires_at=EPOCH + timedelta(hours=1)))
    seen: list[int] = []

    async def worker(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    spec = Organism.from_dict({"agents": {"worker": {"handler": worker}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db", now=lambda: EPOCH + timedelta(minutes=1))
    async with org.running():
        await org.idle()
    assert seen == [2]
    assert [letter.reason for letter in org.dead_letters] == ["expired"]
    with JournalFile(tmp_path / "j.db") as file:
        assert [s.letter.spore.knowledge for s in file.dead_letters()] == [{"n": 1}]
        assert file.pending() == []


async def test_a_stop_leaves_unfinished_spores_for_the_next_start(tmp_path: Path) -> None:
    started = asyncio.Event()
    runs: list[int] = []

    async def stuck(spore: Spore, ctx: Any) -> None:
        runs.append(spore.knowledge["n"])
        started.set()
        await asyncio.Event().wait()  # never finishes: the stop cancels it

    org = organism({"stuck": stuck}, tmp_path / "j.db")
    await org.start()
    await org.send("stuck", {"n": 1})
    await started.wait()
    assert await org.stop(drain_timeout=0) == 1
    with JournalFile(tmp_path / "j.db") as file:
        assert [s.knowledge for s in file.pending()] == [{"n": 1}]
        assert file.dead_letters() == []  # 'shutdown' is not persisted: it stays pending


async def test_boot_spores_are_sent_once_per_journal(tmp_path: Path) -> None:
    boots: list[str] = []

    async def starter(spore: Spore, ctx: Any) -> None:
        boots.append(spore.id)

    for _ in range(2):
        org = organism({"starter": starter}, tmp_path / "j.db", starter={"boot": {"go": 1}})
        async with org.running():
            await org.idle()
    assert len(boots) == 1
    org = organism({"starter": starter}, tmp_path / "other.db", starter={"boot": {"go": 1}})
    async with org.running():
        await org.idle()
    assert len(boots) == 2  # a new journal boots again


# -- dead letters ------------------------------------------------------------------


async def test_dead_letters_are_kept_with_reason_error_traceback_and_attempts(
        tmp_path: Path) -> None:
    async def broken(spore: Spore, ctx: Any) -> None:
        raise ValueError(f"cannot take {spore.knowledge['n']}")

    org = organism({"broken": broken}, tmp_path / "j.db",
                   broken={"retry": {"attempts": 2, "backoff": 0}})
    async with org.running():
        sent = await org.send("broken", {"n": 7})
        await org.idle()
    with JournalFile(tmp_path / "j.db") as file:
        [stored] = file.dead_letters()
        assert file.pending() == []
    letter = stored.letter
    assert (letter.spore.id, letter.agent, letter.reason, letter.attempts) == (
        sent.id, "broken", "handler failed", 2)
    assert letter.error == "ValueError: cannot take 7"
    assert letter.traceback is not None
    assert "raise ValueError" in letter.traceback


# -- the file ----------------------------------------------------------------------


async def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my notes, not a journal\n")
    org = organism({"a": lambda spore, ctx: None}, path)
    with pytest.raises(JournalError, match="not a sporeflow journal") as caught:
        await org.start()
    assert str(path) in str(caught.value)
    assert path.read_text() == "my notes, not a journal\n"
    assert org.state == "new"


async def test_another_applications_database_is_refused_and_left_untouched(
        tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE pending (x)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="an SQLite database of something else"):
        await Journal(path).open()
    assert path.read_bytes() == before


async def test_a_damaged_journal_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await record_pending(path, *(Spore(knowledge={"pad": "x" * 500}, to_agent="a")
                                 for _ in range(50)))
    data = bytearray(path.read_bytes())
    data[4096 + 100:4096 * 3] = b"\xff" * (4096 * 2 - 100)  # pages 2 and 3 are garbage now
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged") as caught:
        await Journal(path).open()
    assert str(path) in str(caught.value)
    assert path.read_bytes() == bytes(data)



async def test_a_journal_whose_side_files_cannot_be_made_is_not_called_damaged(
        tmp_path: Path) -> None:
    # Found by a fault injector: on a read-only file system `dlq list` called a sound
    # journal "damaged" and said to point the journal at another file. Here SQLite cannot
    # create the journal's -shm beside it (a dangling link), as in a read-only folder.
    source = tmp_path / "source.db"
    running = Journal(source)
    await running.open()
    await running.record([Spore(knowledge={}, to_agent="a")])
    path = tmp_path / "j.db"
    path.write_bytes(source.read_bytes())  # what a killed run leaves: the file and its log
    (tmp_path / "j.db-wal").write_bytes((tmp_path / "source.db-wal").read_bytes())
    await running.close()
    (tmp_path / "j.db-shm").symlink_to(tmp_path / "no such folder" / "shm")
    with pytest.raises(JournalError, match="cannot open the journal") as caught:
        JournalFile(path)
    assert "damaged" not in str(caught.value)
    assert "j.db-shm" in str(caught.value)
    assert "writable" in str(caught.value)

async def test_one_journal_cannot_serve_two_running_organisms(tmp_path: Path) -> None:
    first = Journal(tmp_path / "j.db")
    await first.open()
    with pytest.raises(JournalError, match="in use by another running organism"):
        await Journal(tmp_path / "j.db").open()
    await first.close()
    second = Journal(tmp_path / "j.db")
    await second.open()  # free again once the first one closed
    await second.close()


async def test_finished_spores_are_compacted_away(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", compact_every=100)
    await journal.open()
    spores = [Spore(knowledge={"pad": "x" * 1000}, to_agent="a") for _ in range(1000)]
    await journal.record(spores)
    full = journal.stats()["size_bytes"]
    for spore in spores:
        journal.done(spore, [])
    await journal.close()
    assert journal.compactions >= 1
    assert full > 1_000_000
    assert journal.stats()["size_bytes"] < full / 10


async def test_stats_report_the_journal(tmp_path: Path) -> None:
    await record_pending(tmp_path / "j.db", Spore(knowledge={"n": 0}, to_agent="echo"))

    async def echo(spore: Spore, ctx: Any) -> None:
        return None

    org = organism({"echo": echo}, tmp_path / "j.db")
    async with org.running():
        await org.send("echo", {"n": 1})
        await org.idle()
        await org.journal.flush()  # type: ignore[union-attr]
        stats = org.stats()["journal"]
    assert stats["path"] == str(tmp_path / "j.db")
    assert stats["size_bytes"] > 0
    assert (stats["replayed"], stats["pending"], stats["written"]) == (1, 0, 1)
    assert {"compactions", "commits", "dead_letters"} <= set(stats)


async def test_without_a_journal_stats_say_so(tmp_path: Path) -> None:
    org = organism({"echo": lambda spore, ctx: None}, None)
    async with org.running():
        assert org.stats()["journal"] is None
        assert org.journal is None


def test_the_organism_file_names_the_journal_beside_itself(tmp_path: Path) -> None:
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: durable, journal: state/work.db}\n"
        "agents:\n  a: {handler: journal_file_handlers:noop}\n")
    (tmp_path / "journal_file_handlers.py").write_text(
        "def noop(spore, ctx):\n    return None\n")
    org = Organism.from_file(tmp_path / "organism.yaml")
    assert org.journal is not None
    assert org.journal.path == tmp_path / "state" / "work.db"
    override = Organism.from_file(tmp_path / "organism.yaml", journal=tmp_path / "x.db")
    assert override.journal is not None
    assert override.journal.path == tmp_path / "x.db"


async def test_a_replayed_broadcast_goes_only_to_the_agent_that_failed_on_it(
        tmp_path: Path) -> None:
    heard: list[str] = []
    fixed = False

    async def good(spore: Spore, ctx: Any) -> None:
        heard.append("good")

    async def bad(spore: Spore, ctx: Any) -> None:
        if not fixed:
            raise RuntimeError("not yet")
        heard.append("bad")

    spec = Organism.from_dict({"channels": {"news": {}}, "agents": {
        "good": {"handler": good, "subscribe": ["news"]},
        "bad": {"handler": bad, "subscribe": ["news"]}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        await org.broadcast({"headline": "x"}, channel="news")
        await org.idle()
    assert heard == ["good"]
    with JournalFile(tmp_path / "j.db") as file:
        assert file.pending() == []  # both deliveries settled: one handled, one dead
        assert file.replay(file.dead_letters()) == 1
        [again] = file.pending()
    assert again.to_agent == "bad"
    fixed = True
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        await org.idle()
    assert heard == ["good", "bad"]


# -- requests: their asker does not outlive the process -----------------------------------


async def test_an_outside_request_a_stop_interrupts_is_a_shutdown_letter_never_replayed(
        tmp_path: Path) -> None:
    """The caller is told its request failed at the stop; it is not kept for the next
    start, where nobody would await its response (which would be dead-lettered
    'unexpected response' after its handler ran again)."""
    started = asyncio.Event()
    runs: list[str] = []

    async def answer(spore: Spore, ctx: Any) -> dict[str, Any]:
        runs.append(spore.id)
        started.set()
        if len(runs) == 1:
            await asyncio.Event().wait()  # the stop cancels it
        return {"answer": 42}

    org = organism({"answer": answer}, tmp_path / "j.db")
    await org.start()
    asked = asyncio.ensure_future(org.request("answer", {"q": 1}, timeout=60))
    await started.wait()
    assert await org.stop(drain_timeout=0) == 1
    with pytest.raises(HandlerError, match="shutdown"):
        await asked
    assert [(letter.reason, letter.spore.id) for letter in org.dead_letters] == [
        ("shutdown", runs[0])]
    assert org.stats()["totals"]["unfinished_kept"] == 0
    with JournalFile(tmp_path / "j.db") as file:
        assert file.pending() == []
        assert [s.letter.reason for s in file.dead_letters()] == ["shutdown"]
    again = organism({"answer": answer}, tmp_path / "j.db")
    async with again.running():
        await again.idle()
    assert (len(runs), list(again.dead_letters)) == (1, [])


async def test_a_stop_counts_as_kept_only_what_the_journal_keeps(tmp_path: Path) -> None:
    """A handler's request is not written (its handler, replayed, asks again): at a stop
    it is a 'shutdown' dead letter, not counted kept, and the count of what was kept is
    what the journal holds."""
    asked = asyncio.Event()

    async def asker(spore: Spore, ctx: Any) -> None:
        await ctx.request("answer", {"q": 1}, timeout=60)

    async def answer(spore: Spore, ctx: Any) -> None:
        asked.set()
        await asyncio.Event().wait()  # the stop cancels it

    org = organism({"asker": asker, "answer": answer}, tmp_path / "j.db")
    await org.start()
    sent = await org.send("asker", {})
    await asked.wait()
    await org.stop(drain_timeout=0)
    with JournalFile(tmp_path / "j.db") as file:
        assert [s.id for s in file.pending()] == [sent.id]
    assert org.stats()["totals"]["unfinished_kept"] == 1
    assert [(letter.reason, letter.agent) for letter in org.dead_letters] == [
        ("shutdown", "answer")]
