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
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sporeflow.config import SporeError, SporeflowError
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.steps import Spore, new_spore_id

try:  # an advisory lock keeps two processes from replaying one journal; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["Journal", "JournalError", "JournalFile", "StoredDeadLetter"]

APPLICATION_ID = 0x53504A4C  # "SPJL": marks the file as a sporeflow journal
SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = frozenset({"pending", "dead_letters", "meta"})
_SCHEMA = """
CREATE TABLE pending (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    spore TEXT NOT NULL
);
CREATE TABLE dead_letters (
    seq INTEGER PRIMARY KEY,
    spore_id TEXT NOT NULL,
    at TEXT NOT NULL,
    agent TEXT,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT,
    attempts INTEGER NOT NULL,
    spore TEXT NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_WAL_LIMIT = 8 * 1024 * 1024  # the WAL file is truncated back to this after checkpoints

_INSERT, _DELETE, _DEAD, _META = range(4)

logger = logging.getLogger("sporeflow.journal")

Synchronous = Literal["normal", "full"]


class JournalError(SporeflowError):
    """The journal file cannot be used (foreign, damaged, in use) or a write failed."""


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter kept in a journal, with its number there (what ``--id`` takes)."""

    number: int
    letter: DeadLetter


# -- opening and checking a file ---------------------------------------------------


def _refuse(path: Path, why: str) -> JournalError:
    return JournalError(f"{path}: {why}; it was left untouched: point the journal at "
                        f"another file (a new path is created)")


def _check_file(path: Path) -> bool:
    """Return True when ``path`` is a sporeflow journal, False when it is new or empty.

    Raise :class:`JournalError` for anything else, without writing to the file.
    """
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc.strerror}") from None
    if not head:
        return False
    if head != _SQLITE_MAGIC:
        raise _refuse(path, "not a sporeflow journal (not an SQLite database)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from None
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != APPLICATION_ID or not _TABLES <= tables:
            raise _refuse(path, "not a sporeflow journal (an SQLite database of something "
                                "else)")
        if version != SCHEMA_VERSION:
            raise _refuse(path, f"a sporeflow journal of format {version}, and this sporeflow "
                                f"reads format {SCHEMA_VERSION}")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise _refuse(path, f"the journal is damaged ({problems[0]})")
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"the journal is damaged ({exc})") from None
    finally:
        conn.close()
    return True


def _connect(path: Path, synchronous: Synchronous, *, exists: bool) -> sqlite3.Connection:
    """Open ``path`` for writing (creating the schema if new), in WAL mode."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not exists:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        if not exists:  # one transaction: a file is a whole journal or an empty one
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} "
                               f"PRAGMA application_id = {APPLICATION_ID}; "
                               f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal for writing: {exc}") from None
    return conn


def _booted(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT key FROM meta WHERE key LIKE 'booted:%'")
    return {row[0].removeprefix("booted:") for row in rows}


def _spore_of(path: Path, text: str) -> Spore:
    try:
        return Spore.from_json(text)
    except SporeError as exc:
        raise _refuse(path, f"the journal holds a spore that does not decode ({exc})") from None


_INSERT_SQL = ("INSERT OR IGNORE INTO pending (id, priority, spore) "
               "SELECT value ->> 'id', value ->> 'priority', value FROM json_each(?)")
_DELETE_SQL = "DELETE FROM pending WHERE id IN (SELECT value FROM json_each(?))"
_DEAD_SQL = ("INSERT INTO dead_letters (spore_id, at, agent, reason, error, traceback, attempts, "
             "spore) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, "
             "value ->> 5, value ->> 6, value -> 7 FROM json_each(?)")
_NOT_JSON = (TypeError, ValueError, RecursionError)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _spores_json(spores: Iterable[Spore]) -> str:
    """The spores as one JSON array, leaving out (and logging) any that is not JSON."""
    forms = []
    for spore in spores:
        try:
            forms.append(spore.to_dict())
        except Exception as exc:  # a field of the wrong type: validation refuses it
            logger.warning("spore %r has a malformed field (%s: %s): not journaled",
                           getattr(spore, "id", None), type(exc).__name__, exc)
    try:
        return _json(forms)
    except _NOT_JSON:
        kept = []
        for form in forms:
            try:
                _json(form)
            except _NOT_JSON as exc:
                # Validation dead-letters it: it never runs, so has nothing to replay.
                logger.warning("spore %s is not JSON (%s): not journaled", form["id"], exc)
            else:
                kept.append(form)
        return _json(kept)


def _letter_row(letter: DeadLetter) -> list[Any]:
    spore = letter.spore
    row: list[Any] = [str(spore.id), letter.at.isoformat(), letter.agent, letter.reason,
                      letter.error, letter.traceback, letter.attempts, None]
    try:
        row[7] = spore.to_dict()
        _json(row[7])
    except Exception:  # not JSON, or a malformed field: kept readable, as text
        row[7] = {"id": str(spore.id), "not_json": repr(spore)[:10_000]}
    return row


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
        self._lock_fd = _lock(self.path)
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
        exists = _check_file(self.path)
        conn = self._conn = _connect(self.path, self.synchronous, exists=exists)
        rows = conn.execute("SELECT spore FROM pending ORDER BY priority DESC, seq").fetchall()
        self._pending_rows = len(rows)
        self._dead_rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self.booted = _booted(conn)
        return [_spore_of(self.path, row[0]) for row in rows]

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
                letters.append(_letter_row(letter))
                if op[2] and inserts.pop(letter.spore.id, None) is None:
                    deletes.append(letter.spore.id)
            else:
                meta.append((op[1], op[2]))
        conn = self._conn
        if conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        # Each statement takes its whole batch as one JSON array: one step of SQLite, so
        # the writer thread takes the GIL back once per statement, not once per row.
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = added = 0
                if deletes:
                    removed = conn.execute(_DELETE_SQL, (_json(deletes),)).rowcount
                if inserts:
                    added = conn.execute(_INSERT_SQL, (_spores_json(inserts.values()),)).rowcount
                if letters:
                    conn.execute(_DEAD_SQL, (_json(letters),))
                if meta:
                    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                     meta)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may have ended it already
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: writing the journal failed: {exc}; the "
                               f"organism keeps running without it") from None
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


def _lock(path: Path) -> int:
    """Hold an advisory lock on ``path`` (created if missing) for as long as the fd is open."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc.strerror}") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(f"{path}: the journal is in use by another running organism; "
                               f"stop it first or use another journal file") from None
    return fd


# -- the journal file at rest (for `sporeflow dlq`) -------------------------------------


class JournalFile:
    """A journal opened outside a running organism: its dead letters and pending spores.

    ``with JournalFile(path) as journal: ...``; the file must exist and be a journal.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise JournalError(f"{self.path}: no journal here yet; it is created by the first "
                               f"`sporeflow run` of an organism with this journal")
        if not _check_file(self.path):
            raise JournalError(f"{self.path}: the file is empty; it is not a journal yet")
        self._conn = _connect(self.path, "normal", exists=True)

    def __enter__(self) -> JournalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def booted(self) -> set[str]:
        """The agents whose boot spore this journal has recorded (it sends them once)."""
        return _booted(self._conn)

    def pending(self) -> list[Spore]:
        """The unfinished spores, in the order they would be replayed."""
        rows = self._conn.execute("SELECT spore FROM pending ORDER BY priority DESC, seq")
        return [_spore_of(self.path, row[0]) for row in rows]

    def dead_letters(self, *, agents: Sequence[str] = (), reasons: Sequence[str] = (),
                     ids: Sequence[str] = ()) -> list[StoredDeadLetter]:
        """The dead letters matching every filter given, oldest first.

        ``ids`` match a dead letter's number or its spore's id.
        """
        sql, params = _where(agents, reasons, ids)
        rows = self._conn.execute(
            "SELECT seq, spore, reason, error, agent, attempts, traceback, at "
            f"FROM dead_letters{sql} ORDER BY seq", params)
        return [StoredDeadLetter(row[0], DeadLetter(
            _spore_of(self.path, row[1]), row[2], row[3], row[4], row[5], row[6],
            datetime.fromisoformat(row[7]))) for row in rows]

    def replay(self, letters: Iterable[StoredDeadLetter]) -> int:
        """Move ``letters`` back among the pending spores; returns how many were moved.

        A broadcast goes back to the agent that failed on it only; an expired spore
        loses its expiry (replaying it asks for it to be handled).
        """
        chosen = list(letters)
        rows = [(s.id, s.priority, s.to_json()) for s in map(_replayable, chosen)]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO pending (id, priority, spore) VALUES (?, ?, ?)", rows)
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?",
                             [(s.number,) for s in chosen])
        return len(chosen)

    def purge(self, letters: Iterable[StoredDeadLetter]) -> int:
        """Delete ``letters`` for good; returns how many were deleted."""
        numbers = [(s.number,) for s in letters]
        with self._transaction() as conn:
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?", numbers)
        return len(numbers)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may have ended it already
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: writing the journal failed: {exc}") from None


def _replayable(stored: StoredDeadLetter) -> Spore:
    letter = stored.letter
    spore = letter.spore
    if spore.to_agent is None and letter.agent is not None:
        spore = replace(spore, to_agent=letter.agent)
    if letter.reason == "expired":
        spore = replace(spore, expires_at=None)
    return spore


def _where(agents: Sequence[str], reasons: Sequence[str],
           ids: Sequence[str]) -> tuple[str, list[Any]]:
    """The WHERE clause of the dead letters matching every filter given."""
    clauses: list[str] = []
    params: list[Any] = []
    if agents:
        clauses.append(f"agent IN ({', '.join('?' * len(agents))})")
        params.extend(agents)
    if reasons:
        clauses.append(f"reason IN ({', '.join('?' * len(reasons))})")
        params.extend(reasons)
    if ids:
        clauses.append("(" + " OR ".join("seq = ? OR spore_id = ?" for _ in ids) + ")")
        for ident in ids:
            params.extend((int(ident) if ident.isdigit() else -1, ident))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
