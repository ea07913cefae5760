"""A write-ahead journal on SQLite, so that a crash or a kill of the embedded mode loses no spore.

What the organism admits is recorded before the sender hears back; a spore is
deleted once it is settled (handled with its replies recorded in the same
transaction, dead-lettered, resolved as a response, or returned outside).
What is left at the next start was unfinished and is replayed: delivery is
at-least-once, and replies returned by a handler get ids derived from their
parent's, so a replayed handler produces the same ids and receivers can
de-duplicate by spore id.

Writes go through one writer thread, which commits everything queued since
its last commit in one transaction (group commit): a burst of N admissions
costs about one commit. The file is in WAL mode with ``synchronous=NORMAL``
by default: a commit reaches the operating system before anyone is told, so a
crash, ``SIGKILL`` or OOM kill of the process loses nothing committed; only a
power cut or a kernel crash may lose the last commits. ``synchronous="full"``
also syncs every commit to the disk, at the cost of one fsync per batch.

A file that is not a sporeflow journal (not SQLite, another application's
database, or a damaged one) is refused with :class:`JournalError` and left
untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.journal.sqlite import (
    DEAD_SQL,
    DELETE_SQL,
    INSERT_SQL,
    JournalError,
    Synchronous,
    booted_agents,
    check_file,
    connect,
    letter_row,
    lock,
    logger,
    spore_of,
    spores_json,
    to_json,
    transaction,
)
from sporeflow.steps import Spore, new_spore_id

__all__ = ["Journal"]

_INSERT, _DELETE, _DEAD, _META = range(4)  # the writer's operations


def _set_id(spore: Spore, spore_id: str) -> None:
    object.__setattr__(spore, "id", spore_id)  # frozen: bypass it, for a fresh spore only


def _derived_id(parent: str, agent: str, index: int) -> str:
    digest = hashlib.blake2b(f"{parent}|{agent}|{index}".encode(), digest_size=9)
    return f"r-{digest.hexdigest()}"


# -- the journal a running organism writes -------------------------------------------


class Journal:
    """An organism's durable record of unfinished spores and of its dead letters.

    The organism calls :meth:`open` at start (it returns the spores to replay),
    ``record`` for what it admits (awaited before the sender is answered),
    ``done``/``settle``/``dead`` as spores finish, and :meth:`close` at stop.
    """

    def __init__(self, path: str | Path, *, synchronous: Synchronous = "normal",
                 compact_every: int = 20_000) -> None:
        if synchronous not in ("normal", "full"):
            raise JournalError(f"journal synchronous={synchronous!r}; use 'normal' (survives "
                               f"a crash of the process) or 'full' (also a power cut)")
        self.path = Path(path)
        self.synchronous: Synchronous = synchronous
        self.compact_every = compact_every
        self.replayed = 0
        self.written = 0
        self.commits = 0
        self.compactions = 0
        self.booted: set[str] = set()  # agents whose boot spore is recorded
        self._boots: dict[str, str] = {}  # boot spore id -> its agent, until recorded
        self._pending_rows = 0
        self._dead_rows = 0
        self._deleted_since_compaction = 0
        self._ops: list[tuple[Any, ...]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._fanout: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._failure: JournalError | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    # -- opening and closing --------------------------------------------------------

    async def open(self) -> list[Spore]:
        """Open (or create) the file; return the unfinished spores, highest priority first."""
        if self._writer is not None:
            raise JournalError(f"{self.path}: the journal is already open")
        self._lock_fd = lock(self.path)
        # Nothing of an earlier run of this object may leak into this one.
        self._ops, self._waiters = [], []
        self._fanout.clear()
        self._boots.clear()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sporeflow-journal")
        loop = asyncio.get_running_loop()
        try:
            pending = await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._release()
            raise
        self._failure = None
        self._closing = False
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop(), name=f"sporeflow-journal:{self.path}")
        return pending

    def _open_sync(self) -> list[Spore]:
        exists = check_file(self.path)
        conn = self._conn = connect(self.path, self.synchronous, exists=exists)
        rows = conn.execute("SELECT spore FROM pending ORDER BY priority DESC, seq").fetchall()
        self._pending_rows = len(rows)
        self._dead_rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self.booted = booted_agents(conn)
        return [spore_of(self.path, row[0]) for row in rows]

    async def close(self) -> None:
        """Commit what is queued, compact the file and close it."""
        writer = self._writer
        if writer is None:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await writer
        self._writer = None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_sync)
        finally:
            self._release()

    def _close_sync(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self._failure is None:
                self._compact(conn)
        finally:
            conn.close()
            self._conn = None

    def _release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- what the organism records (on the event loop; never blocks) -------------------

    def record(self, spores: Iterable[Spore]) -> asyncio.Future[None]:
        """Queue ``spores`` as admitted; the future resolves once they are on disk."""
        ops = self._ops
        for spore in spores:
            ops.append((_INSERT, spore))
            self.written += 1
        waiter = asyncio.get_running_loop().create_future()
        if self._failure is not None:
            waiter.set_exception(self._failure)
            return waiter
        self._waiters.append(waiter)
        self._kick()
        return waiter

    def add(self, spores: Iterable[Spore]) -> None:
        """Queue spores made inside the organism (sent by handlers); nobody waits."""
        ops = self._ops
        for spore in spores:
            ops.append((_INSERT, spore))
            self.written += 1
        self._kick()

    def done(self, spore: Spore, replies: list[Spore]) -> list[Spore]:
        """Queue ``spore`` as handled and its ``replies`` as new, for one transaction.

        The replies, fresh from the handler, get ids derived from ``spore``'s (so a
        replayed handler gives its replies the same ids again); returns them.
        """
        ops = self._ops
        if replies:
            parent = spore.id
            for index, reply in enumerate(replies):
                # The lane's shaper made each reply just now and nothing else holds it yet,
                # so its id is set in place: dataclasses.replace would cost ten times more.
                _set_id(reply, _derived_id(parent, reply.from_agent, index))
                ops.append((_INSERT, reply))
            self.written += len(replies)
        if self._last_delivery(spore.id):
            ops.append((_DELETE, spore.id))
        self._kick()
        return replies

    def settle(self, spore: Spore) -> None:
        """Queue ``spore`` as finished without replies (a resolved response, returned outside)."""
        if self._last_delivery(spore.id):
            self._ops.append((_DELETE, spore.id))
            self._kick()

    def dead(self, letter: DeadLetter) -> None:
        """Queue a dead letter: kept in the journal, and its spore no longer pending."""
        self._ops.append((_DEAD, letter, self._last_delivery(letter.spore.id)))
        self._kick()

    def boot_id(self, agent: str) -> str | None:
        """The id to give ``agent``'s boot spore, or None when the journal has sent it.

        A boot spore is work like any other: sent once per journal, and replayed if
        unfinished. The note that it was sent is committed with the spore itself.
        """
        if agent in self.booted:
            return None
        spore_id = new_spore_id()
        self._boots[spore_id] = agent
        self.booted.add(agent)
        return spore_id

    def count_fanout(self, spore_id: str, targets: int) -> None:
        """Broadcast ``spore_id`` went to ``targets`` agents: it is done after the last."""
        self._fanout[spore_id] = self._fanout.get(spore_id, 0) + targets

    def _last_delivery(self, spore_id: str) -> bool:
        fanout = self._fanout
        if not fanout:
            return True
        left = fanout.get(spore_id)
        if left is None:
            return True
        if left > 1:
            fanout[spore_id] = left - 1
            return False
        del fanout[spore_id]
        return True

    def _kick(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        await self.record(())

    # -- the writer ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            ops, waiters = self._ops, self._waiters
            if not ops and not waiters:
                if self._closing:
                    return
                continue
            self._ops, self._waiters = [], []
            failure = self._failure
            if failure is None:
                try:
                    await loop.run_in_executor(self._executor, self._commit, ops)
                except JournalError as exc:
                    logger.critical("%s", exc)
                    failure = self._failure = exc
                except Exception as exc:  # any other failure stops the journal, told why
                    failure = self._failure = JournalError(
                        f"{self.path}: writing the journal failed: {type(exc).__name__}: "
                        f"{exc}")
                    failure.__cause__ = exc
                    logger.critical("%s", failure)
            # After a failure, what is queued is dropped and its senders told why.
            for waiter in waiters:
                if not waiter.done():
                    if failure is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(failure)
            if self._closing and not self._ops:
                return

    def _commit(self, ops: list[tuple[Any, ...]]) -> None:
        """Write ``ops`` in one transaction (on the writer thread)."""
        inserts: dict[str, Spore] = {}
        deletes: list[str] = []
        letters: list[list[Any]] = []
        meta: list[tuple[str, str]] = []
        for op in ops:
            kind = op[0]
            if kind == _INSERT:
                inserts[op[1].id] = op[1]
                if self._boots and op[1].id in self._boots:
                    meta.append((f"booted:{self._boots.pop(op[1].id)}", "1"))
            elif kind == _DELETE:
                # Admitted and finished within one batch: it need never touch the disk.
                if inserts.pop(op[1], None) is None:
                    deletes.append(op[1])
            elif kind == _DEAD:
                letter = op[1]
                letters.append(letter_row(letter))
                if op[2] and inserts.pop(letter.spore.id, None) is None:
                    deletes.append(letter.spore.id)
            else:
                meta.append((op[1], op[2]))
        conn = self._conn
        if conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        # Each statement takes its whole batch as one JSON array: one step of SQLite, so
        # the writer thread takes the GIL back once per statement, not once per row.
        with transaction(conn, self.path):
            removed = added = 0
            if deletes:
                removed = conn.execute(DELETE_SQL, (to_json(deletes),)).rowcount
            if inserts:
                added = conn.execute(INSERT_SQL, (spores_json(inserts.values()),)).rowcount
            if letters:
                conn.execute(DEAD_SQL, (to_json(letters),))
            if meta:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 meta)
        self.commits += 1
        self._pending_rows += added - removed
        self._dead_rows += len(letters)
        self._deleted_since_compaction += removed
        if self._deleted_since_compaction >= self.compact_every:
            self._compact(conn)

    def _compact(self, conn: sqlite3.Connection) -> None:
        """Give the pages of finished spores back and shrink the WAL (on the writer thread)."""
        try:
            # executescript steps the pragma to its end; execute would free one page.
            conn.executescript("PRAGMA incremental_vacuum;")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:  # compaction is housekeeping: never fail a write over it
            logger.warning("%s: compacting the journal failed: %s", self.path, exc)
            return
        self.compactions += 1
        self._deleted_since_compaction = 0

    # -- observing -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Unfinished spores in the file, as of the last commit."""
        return self._pending_rows

    def size_bytes(self) -> int:
        """The file's size on disk, its write-ahead log included."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable summary, for ``organism.stats()["journal"]``."""
        return {
            "path": str(self.path), "size_bytes": self.size_bytes(), "replayed": self.replayed,
            "pending": self._pending_rows, "written": self.written, "commits": self.commits,
            "compactions": self.compactions, "dead_letters": self._dead_rows,
            "synchronous": self.synchronous, "failed": self._failure is not None,
        }
