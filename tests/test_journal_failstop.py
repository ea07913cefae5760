"""The journal fails stop: a write that fails (a full disk, any exception) stops the run
with its real cause and a non-zero exit, and no work the journal knew was done is
replayed later."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.cli.main import _run
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError, transaction
from sporeflow.pipeline.journal.store import Journal

BACKSTOP_S = 60.0
CHUNKS, SIZE = 10, 100  # the workload: CHUNKS x SIZE items, made a chunk at a time
FILE_LIMIT = 3 * 512 * 1024  # RLIMIT_FSIZE: far less than the run writes to the WAL

HANDLERS = '''
import asyncio
import os

async def chunk(spore, ctx):
    k = spore.knowledge
    return [{**k, "item": k["chunk"] * k["size"] + i} for i in range(k["size"])]

async def square(spore, ctx):
    item = spore.knowledge["item"]
    return {**spore.knowledge, "square": item * item}

async def record(spore, ctx):
    # A millisecond of work per item: the run lasts thousands of group commits, so the WAL
    # outgrows the file size limit however the commits batch, while what is unfinished
    # at any moment (a chunk or two) stays small.
    await asyncio.sleep(0.001)
    k = spore.knowledge
    fd = os.open(os.environ["SINK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{k['item']}\\n".encode())
    finally:
        os.close(fd)
    # The last item of a chunk asks for the next: the work goes on a chunk at a time.
    if k["item"] % k["size"] == k["size"] - 1 and k["chunk"] + 1 < k["chunks"]:
        await ctx.send("source", {"chunk": k["chunk"] + 1, "chunks": k["chunks"],
                                  "size": k["size"]})
'''

ORGANISM = f'''
organism: {{name: disk-full}}
agents:
  source:
    handler: handlers:chunk
    boot: {{chunk: 0, chunks: {CHUNKS}, size: {SIZE}}}
    emit: {{to: square}}
  square:
    handler: handlers:square
    emit: {{to: sink}}
    concurrency: 4
  sink:
    handler: handlers:record
limits: {{max_hops: 1000}}
'''


def write_organism(folder: Path) -> Path:
    (folder / "handlers.py").write_text(HANDLERS)
    path = folder / "organism.yaml"
    path.write_text(ORGANISM)
    return path


def run(organism: Path, journal: Path, sink: Path,
        file_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit_files() -> None:  # in the child: writes past the limit fail with EFBIG
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(organism), "--until-idle",
         "--quiet", "--journal", str(journal)],
        preexec_fn=limit_files, capture_output=True, text=True, timeout=BACKSTOP_S,
        env={**os.environ, "SINK_FILE": str(sink)})


def test_a_full_disk_stops_the_run_with_its_cause_and_nothing_done_is_done_again(
        tmp_path: Path) -> None:
    organism = write_organism(tmp_path)
    journal, sink = tmp_path / "journal.db", tmp_path / "sink.txt"

    full = run(organism, journal, sink, file_limit=FILE_LIMIT)
    assert full.returncode != 0, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("JournalError: journal "), full.stderr
    assert str(journal) in last, full.stderr
    assert "file size limit" in last, full.stderr
    assert "cannot rollback" not in full.stderr
    done_before = len(sink.read_text().split()) if sink.exists() else 0
    assert done_before < CHUNKS * SIZE, "the run went on without its journal"

    again = run(organism, journal, sink)
    assert again.returncode == 0, again.stderr
    counts = Counter(int(line) for line in sink.read_text().split())
    assert set(counts) == set(range(CHUNKS * SIZE))
    twice = sorted(item for item, n in counts.items() if n > 1)
    assert twice == [], f"{len(twice)} items handled twice, of {done_before} before the restart"
    with JournalFile(journal) as left:
        assert left.pending() == []


# -- in one process ---------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def organism_with(handlers: dict[str, Any], journal: Path) -> Organism:
    built = Organism.from_dict({"agents": {name: {"handler": handler}
                                           for name, handler in handlers.items()}})
    return Organism(built.spec, journal=journal)


async def test_any_exception_of_the_writer_stops_admission_and_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handled: list[int] = []

    async def work(spore: Spore, ctx: Any) -> None:
        handled.append(spore.knowledge["n"])

    org = organism_with({"work": work}, tmp_path / "j.db")
    async with org.running():
        await org.send("work", {"n": 1})
        await org.idle()

        def broken(*args: Any) -> None:
            raise Boom("the writer broke")

        monkeypatch.setattr(org.journal, "_commit", broken)
        with pytest.raises(JournalError, match="Boom: the writer broke") as caught:
            await org.send("work", {"n": 2})
        assert isinstance(caught.value.__cause__, Boom)
        assert org.state == "failed"
        with pytest.raises(Exception, match="admits no new spores"):
            await org.send("work", {"n": 3})
        assert org.journal is not None
        assert org.journal.failure is not None
    assert handled[0] == 1
    assert 3 not in handled
    assert org.stats()["journal"]["failed"] is True


async def test_the_cli_run_ends_with_the_journal_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()

    async def work(spore: Spore, ctx: Any) -> None:
        started.set()

    built = Organism.from_dict({"agents": {"work": {"handler": work, "boot": {"n": 1}}}})
    org = Organism(built.spec, journal=tmp_path / "j.db")
    # No --until-idle: only the journal's failure ends this run.
    task = asyncio.ensure_future(_run(org, until_idle=False, drain_timeout=5.0))
    await asyncio.wait_for(started.wait(), BACKSTOP_S)
    assert org.journal is not None

    def broken(*args: Any) -> None:
        raise Boom("no more writes")

    monkeypatch.setattr(org.journal, "_commit", broken)
    org.journal.add([Spore(knowledge={"n": 2}, to_agent="work")])
    with pytest.raises(JournalError, match="Boom: no more writes"):
        await asyncio.wait_for(task, BACKSTOP_S)
    assert org.state == "stopped"


def test_a_failing_rollback_does_not_hide_why_the_commit_failed(tmp_path: Path) -> None:
    class Connection:  # COMMIT fails, and so does the ROLLBACK after it
        in_transaction = True

        def execute(self, sql: str) -> None:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            if sql == "ROLLBACK":
                raise sqlite3.OperationalError("cannot rollback - no transaction is active")

    with pytest.raises(JournalError, match="database or disk is full") as caught:
        with transaction(Connection(), tmp_path / "j.db"):  # type: ignore[arg-type]
            pass
    assert "cannot rollback" not in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_work_finished_after_a_failure_is_recorded_when_the_journal_closes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.db"
    journal = Journal(path)
    await journal.open()
    a, b = Spore(knowledge={"n": 1}, to_agent="x"), Spore(knowledge={"n": 2}, to_agent="x")
    await journal.record([a, b])
    real_write = journal._write

    def full(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(journal, "_write", full)
    with pytest.raises(JournalError, match="disk full"):
        await journal.record([Spore(knowledge={"n": 3}, to_agent="x")])
    journal.done(a, [])  # known done after the failure: must not be replayed
    monkeypatch.setattr(journal, "_write", real_write)  # the disk has room again
    await journal.close()
    assert journal.failure is not None
    assert "recorded" in str(journal.failure)
    with JournalFile(path) as file:
        assert sorted(s.knowledge["n"] for s in file.pending()) == [2, 3]


async def test_when_nothing_can_be_recorded_the_next_start_refuses_to_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.db"
    journal = Journal(path)
    await journal.open()
    a = Spore(knowledge={"n": 1}, to_agent="x")
    await journal.record([a])

    def full(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(journal, "_write", full)
    journal.done(a, [])
    with pytest.raises(JournalError):
        await journal.flush()
    await journal.close()
    assert "refuses" in str(journal.failure)
    again = Journal(path)
    with pytest.raises(JournalError, match="could not record") as caught:
        await again.open()
    assert "delete" in str(caught.value)
    # The user frees space and accepts replaying (at least once): it opens again.
    os.unlink(f"{path}-unrecorded")
    assert [s.id for s in await again.open()] == [a.id]
    await again.close()


async def test_a_journal_file_deleted_while_the_organism_runs_stops_the_run(
        tmp_path: Path) -> None:
    # Found by a fault injector: with the journal's folder deleted mid-run, SQLite went
    # on writing to the deleted file; sends were accepted as on disk, stop() said the
    # unfinished ones were kept for the next start, and that start found no journal.
    gate = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    folder = tmp_path / "jd"
    org = organism_with({"slow": slow}, folder / "j.db")
    async with org.running(drain_timeout=0.1):
        await org.send("slow", {"n": 0})
        for name in os.listdir(folder):
            os.unlink(folder / name)
        folder.rmdir()
        with pytest.raises(JournalError, match="deleted") as caught:
            await org.send("slow", {"n": 1})
        assert str(caught.value).startswith(f"journal {folder / 'j.db'}: the file was deleted")
        assert org.state == "failed"


async def test_a_journal_file_deleted_after_its_last_commit_is_told_at_close(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gate = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    org = organism_with({"slow": slow}, tmp_path / "j.db")
    await org.start()
    await org.send("slow", {"n": 0})
    (tmp_path / "j.db").unlink()
    assert await org.stop(drain_timeout=0.1) == 1
    assert org.journal is not None
    assert org.journal.failure is not None
    assert "the file was deleted" in str(org.journal.failure)
    assert str(org.journal.failure).endswith("the run stopped, no spore in it is durable")
    assert not (tmp_path / "j.db-unrecorded").exists()  # no note: nothing to refuse
    stopped = [r.getMessage() for r in caplog.records if "stopped with" in r.getMessage()]
    assert stopped == ["stopped with 1 spore(s) unfinished: 1 left to the journal, which "
                       "failed: its error says what is durable, the rest dead-lettered as "
                       "'shutdown'"]


async def test_a_write_ahead_log_deleted_while_the_organism_runs_stops_the_run_keeping_what_was_committed(  # noqa: E501
        tmp_path: Path) -> None:
    # Found by a fault injector: with j.db-wal deleted mid-run, SQLite went on committing
    # to the deleted log, sends returned as on disk, and a kill then left j.db without
    # them, refused as "not a sporeflow journal".
    gate = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    path = tmp_path / "j.db"
    org = organism_with({"slow": slow}, path)
    async with org.running(drain_timeout=0.1):
        first = await org.send("slow", {"n": 0})
        os.unlink(f"{path}-wal")
        with pytest.raises(JournalError, match="write-ahead log") as caught:
            await org.send("slow", {"n": 1})
        assert f"{path}-wal was deleted (or replaced)" in str(caught.value)
        assert org.state == "failed"
        # What a kill now leaves: the journal's file alone, with what was committed.
        killed = tmp_path / "killed.db"
        killed.write_bytes(path.read_bytes())
        with JournalFile(killed) as left:
            assert [s.id for s in left.pending()] == [first.id]


FAN_OUT = """
import asyncio, sys
from sporeflow import Organism

async def fan(spore, ctx):
    return [{"n": n, "pad": "x" * 2000} for n in range(200)]

async def sink(spore, ctx):
    await asyncio.sleep(0.001)  # slower than fan: thousands of spores pending at once

async def main():
    org = Organism.from_dict({"agents": {
        "fan": {"handler": fan, "emit": {"to": "sink"}, "concurrency": 8},
        "sink": {"handler": sink, "concurrency": 4}}}, journal=sys.argv[1])
    async with org.running():
        for _ in range(20):
            await org.send("fan", {})
        await org.idle()
    print(org.journal.failure, org.stats()["totals"]["handled"])

asyncio.run(main())
"""


def test_the_journal_needs_no_room_in_the_temporary_folder(
        full_folder: Path, tmp_path: Path) -> None:
    # Found by a fault injector: with TMPDIR full, a large commit failed the journal as
    # "disk full", naming the journal's own file, whose disk had room: SQLite kept its
    # statement journals in files there. It keeps them in memory now. (SQLite reads
    # TMPDIR once per process, hence a process of its own.)
    done = subprocess.run([sys.executable, "-c", FAN_OUT, str(tmp_path / "j.db")],
                          env={**os.environ, "TMPDIR": str(full_folder)},
                          capture_output=True, text=True, timeout=BACKSTOP_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", str(20 * 201)], done.stdout + done.stderr


@pytest.fixture
def full_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 1 MiB file system that is full (a tmpfs: needs root, as CI has)."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with contextlib.suppress(OSError), (folder / "fill").open("wb") as fill:
            while True:
                fill.write(b"\0" * 65536)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


async def test_a_send_the_journal_failed_names_its_spore_which_may_still_be_handled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a fault injector: the send raised "nothing after the last commit is
    # durable" without the spore's id, and the spore was handled after the restart: a
    # caller sending it again made a copy with a new id, which nothing could de-duplicate.
    handled: dict[int, str] = {}

    async def work(spore: Spore, ctx: Any) -> None:
        handled[spore.knowledge["n"]] = spore.id

    org = organism_with({"work": work}, tmp_path / "j.db")
    async with org.running():
        await org.send("work", {"n": 1})
        await org.idle()
        monkeypatch.setattr(org.journal, "_commit", lambda *_: (_ for _ in ()).throw(
            Boom("the writer broke")))
        with pytest.raises(JournalError, match="Boom: the writer broke") as caught:
            await org.send("work", {"n": 2})
    said = re.search(r"Spore (\S+) was admitted before the failure and may still be "
                     r"handled", str(caught.value))
    assert said is not None, str(caught.value)
    monkeypatch.undo()
    with JournalFile(tmp_path / "j.db") as journal:
        pending = {spore.id for spore in journal.pending()}
    assert said.group(1) in pending | {handled.get(2)}
    assert said.group(1) != handled[1]
