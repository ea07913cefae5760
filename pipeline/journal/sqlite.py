"""The journal's file: its SQLite schema, how a file is checked, opened and locked, and
how spores and dead letters become rows."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from sporeflow.config import SporeError
from sporeflow.config.errors import JournalError
from sporeflow.config.json_shape import writable_json
from sporeflow.pipeline.core.deadletters import DeadLetter, StoredDeadLetter, spore_form
from sporeflow.pipeline.core.privatefiles import make_folder, open_private
from sporeflow.steps import Spore
from sporeflow.steps.spore import Unreadable, spore_as_found

try:  # an advisory lock keeps two processes from replaying one journal; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # the file size limit, named when a write fails on it; POSIX only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


__all__ = [
    "compact",
    "file_size",
    "transaction",
    "APPLICATION_ID",
    "CRASHES_SQL",
    "DEAD_SQL",
    "DELETE_SQL",
    "INSERT_SQL",
    "JournalError",
    "NOT_JSON",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SQLITE_MAGIC",
    "StoredDeadLetter",
    "Synchronous",
    "TABLES",
    "WAL_LIMIT",
    "booted_agents",
    "check_file",
    "check_log_in_place",
    "connect",
    "describe_failure",
    "letter_row",
    "lock",
    "log_identity",
    "logger",
    "refuse",
    "spores_json",
    "stored_spore",
    "to_json",
]

APPLICATION_ID = 0x53504A4C  # "SPJL": marks the file as a sporeflow journal
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
TABLES = frozenset({"pending", "dead_letters", "meta"})
SCHEMA = """
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
# How often the process died while a spore was being handled (see journal.inflight).
# Not in SCHEMA: journals made before it get it at their next start, and older
# sporeflow versions read journals that have it.
CRASHES_SQL = """CREATE TABLE IF NOT EXISTS crashes (
    id TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    agent TEXT
)"""
_SLACK = 64 * 1024  # "full": less room than this is left
WAL_LIMIT = 8 * 1024 * 1024  # the WAL file is truncated back to this after checkpoints


logger = logging.getLogger("sporeflow.journal")

Synchronous = Literal["normal", "full"]


# -- opening and checking a file ---------------------------------------------------


def refuse(path: Path, why: str) -> JournalError:
    return JournalError(f"{path}: {why}; it was left untouched: point the journal at "
                        f"another file (a new path is created)")


_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFDIR: "a folder", stat.S_IFCHR: "a device",
          stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def check_file(path: Path) -> bool:
    """Return True when ``path`` is a sporeflow journal, False when it is new or empty.

    Raise :class:`JournalError` for anything else, without writing to the file.
    """
    try:
        # Not a plain open: a named pipe would block it for good, waiting for a writer.
        kind = os.stat(path).st_mode
        if not stat.S_ISREG(kind):
            what = _KINDS.get(stat.S_IFMT(kind), "a special file")
            raise refuse(path, f"not a sporeflow journal ({what}, not a regular file)")
        with path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the journal: {exc.strerror}") from None
    if not head:
        return False
    if head != SQLITE_MAGIC:
        raise refuse(path, "not a sporeflow journal (not an SQLite database)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc}") from None
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if app_id != APPLICATION_ID or not TABLES <= tables:
            raise refuse(path, "not a sporeflow journal (an SQLite database of something "
                                "else)")
        if version != SCHEMA_VERSION:
            raise refuse(path, f"a sporeflow journal of format {version}, and this sporeflow "
                                f"reads format {SCHEMA_VERSION}")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise refuse(path, f"the journal is damaged ({problems[0]})")
    except sqlite3.DatabaseError as exc:
        raise _unreadable(path, exc) from None
    finally:
        conn.close()
    return True


def _unreadable(path: Path, error: sqlite3.DatabaseError) -> JournalError:
    """Why SQLite could not read the journal at ``path``: the file is damaged, or SQLite
    cannot open or write what it needs beside it (a read-only folder or file system)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
        return JournalError(
            f"{path}: cannot open the journal ({error}): SQLite keeps {path.name}-wal and "
            f"{path.name}-shm beside it, and must be able to create and write them: make "
            f"the folder writable (not on a read-only file system); the journal was left "
            f"untouched")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or not name:
        return refuse(path, f"the journal is damaged ({error})")
    return JournalError(f"{path}: cannot read the journal ({error}, {name}); it was left "
                        f"untouched")


def connect(path: Path, synchronous: Synchronous, *, exists: bool) -> sqlite3.Connection:
    """Open ``path`` for writing (creating the schema if new), in WAL mode."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        # Temporary tables and indices in memory: the journal never needs room in TMPDIR
        # (a small /tmp full would fail it, named as its own disk being full).
        conn.execute("PRAGMA temp_store = MEMORY")
        if not exists:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        if not exists:  # one transaction: a file is a whole journal or an empty one
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} "
                               f"PRAGMA application_id = {APPLICATION_ID}; "
                               f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the journal for writing: {exc}") from None
    return conn


def owner_of(conn: sqlite3.Connection) -> str | None:
    """The name of the organism whose runs wrote the journal (None: not recorded)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'organism'").fetchone()
    return None if row is None else str(row[0])


def owned(conn: sqlite3.Connection, path: Path, organism: str | None) -> None:
    """Claim the journal for ``organism`` (its name, kept in ``meta``), or refuse a
    journal another organism's runs wrote: its spores would be replayed here, to agents
    this organism may not have (found by a new user: accepted silently)."""
    if organism is None:
        return
    owner = owner_of(conn)
    if owner is None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('organism', ?)", (organism,))
    elif owner != organism:
        raise JournalError(f"{path}: this journal belongs to organism {owner!r}, not "
                           f"{organism!r}: its spores would be replayed here; give this "
                           f"organism a journal of its own")


def booted_agents(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT key FROM meta WHERE key LIKE 'booted:%'")
    return {row[0].removeprefix("booted:") for row in rows}


def stored_spore(text: object, key: object) -> Spore:
    """The spore a row holds under ``key`` (its id), read as found: a row changed behind
    sporeflow's back is refused by the validate stage like any malformed spore, never
    here, so that one bad row stops neither a start nor ``sporeflow dlq``. A row that
    holds no spore, or another spore than its key says, stands as an ``Unreadable``."""
    try:
        data = json.loads(text)  # type: ignore[arg-type]  # any column type: checked here
        spore = spore_as_found(data)
    except (*NOT_JSON, SporeError) as exc:
        why = f"its text is not JSON ({exc})" if isinstance(exc, NOT_JSON) else str(exc)
        problem = SporeError(f"journal row {key!r} holds no spore: {why}")
    else:
        # As text: a row keeps a malformed id (7) under its text ('7'); validate refuses it.
        if str(data.get("id")) == str(key):
            return spore
        problem = SporeError(f"journal row {key!r} holds spore {data.get('id')!r}, not its "
                             f"own: the row was changed")
    return Unreadable.of(problem, id=str(key), data=text if isinstance(text, str) else repr(text))


INSERT_SQL = ("INSERT OR IGNORE INTO pending (id, priority, spore) "
               "SELECT value ->> 'id', value ->> 'priority', value FROM json_each(?)")
DELETE_SQL = "DELETE FROM pending WHERE id IN (SELECT value FROM json_each(?))"
DEAD_SQL = ("INSERT INTO dead_letters (spore_id, at, agent, reason, error, traceback, attempts, "
             "spore) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, "
             "value ->> 5, value ->> 6, value -> 7 FROM json_each(?)")
NOT_JSON = (TypeError, ValueError, RecursionError)


def to_json(value: Any) -> str:
    # SQLite takes text as UTF-8: a lone surrogate (which validation refuses, after the
    # journal kept what a handler returned) is written escaped, never a failed commit.
    return writable_json(value, separators=(",", ":"), allow_nan=False)


def spores_json(spores: Iterable[Spore]) -> str:
    """The spores as one JSON array, leaving out (and logging) any that is not JSON."""
    forms = []
    for spore in spores:
        try:
            forms.append(spore.to_dict())
        except Exception as exc:  # a field of the wrong type: validation refuses it
            logger.warning("spore %r has a malformed field (%s: %s): not journaled",
                           getattr(spore, "id", None), type(exc).__name__, exc)
    try:
        return to_json(forms)
    except NOT_JSON:
        kept = []
        for form in forms:
            try:
                to_json(form)
            except NOT_JSON as exc:
                # Validation dead-letters it: it never runs, so has nothing to replay.
                logger.warning("spore %s is not JSON (%s): not journaled", form["id"], exc)
            else:
                kept.append(form)
        return to_json(kept)


def letter_row(letter: DeadLetter) -> list[Any]:
    spore = letter.spore
    # Not JSON, or a malformed field: kept readable, as a bounded text (``spore_form``).
    return [str(spore.id), letter.at.isoformat(), letter.agent, letter.reason,
            letter.error, letter.traceback, letter.attempts, spore_form(spore)]


_BUSY = "the journal is in use by another running organism; stop it first or use another " \
        "journal file"


def lock(path: Path, busy: str = _BUSY) -> int:
    """Hold an advisory lock on ``path`` (created if missing) for as long as the fd is open;
    ``busy``: what is said when a running organism holds it (and only then)."""
    try:
        make_folder(path.parent)
        fd = open_private(path, os.O_RDWR)  # made first, so SQLite's side files are 0600 too
    except OSError as exc:
        raise JournalError(f"{path}: cannot open the journal: {exc.strerror}") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(f"{path}: {busy}") from None
    return fd


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``); any SQLite error ends it
    and is raised as a :class:`JournalError` naming ``path``, caused by that error.

    A ROLLBACK that fails too (SQLite may have ended the transaction itself, as after a
    full disk) never hides the error that made it necessary: it becomes a note on it.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as failure:
            if conn.in_transaction:  # a failed COMMIT may have ended it already
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    failure.add_note(f"the rollback after it failed too: {rollback}")
            raise
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: writing the journal failed: {exc}") from exc


class JournalGone(JournalError):
    """The journal's file was deleted or replaced while the organism had it open."""


def check_in_place(fd: int | None) -> None:
    """Raise if the journal's file, open as ``fd``, has no name left (deleted, or renamed
    over) while open: SQLite would go on writing to the deleted file, and each commit
    would be a promise broken."""
    if fd is None:
        return
    try:
        gone = os.fstat(fd).st_nlink == 0
    except OSError:
        gone = True
    if gone:
        raise JournalGone(
            "the file was deleted (or replaced) while the organism ran: the next start on "
            "this path begins with no journal; keep the journal's folder out of "
            "temporary-file cleaners")


def log_identity(path: Path) -> tuple[int, int] | None:
    """Which file the journal at ``path`` has as its write-ahead log (``-wal``): its device
    and inode, or None when it has none."""
    try:
        found = os.stat(f"{path}-wal")
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_log_in_place(conn: sqlite3.Connection, path: Path,
                       log: tuple[int, int] | None) -> None:
    """Raise if the write-ahead log the journal opened (``log``, its identity) was deleted or
    replaced: SQLite would go on committing to the deleted file, and a kill would then
    lose every commit since the last checkpoint. What was committed is first copied into
    the journal's file (a checkpoint: the connection still has the deleted log open)."""
    if log is None or log_identity(path) == log:
        return
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.Error:
        busy = 1
    kept = (f"what was committed until then is in {path}" if not busy else
            f"what was committed since the last checkpoint could not be copied into {path} "
            f"and is lost if the process dies")
    raise JournalError(
        f"its write-ahead log {path}-wal was deleted (or replaced) while the organism ran; "
        f"{kept}; keep {path.name} and its -wal and -shm files out of temporary-file "
        f"cleaners")


def describe_failure(path: Path, error: BaseException) -> str:
    """What made a write to the journal at ``path`` fail, in words: a full disk, the
    process's file size limit, an I/O error, or the exception itself."""
    if isinstance(error, JournalError):
        if error.__cause__ is None:  # the journal's own words
            return str(error)
        error = error.__cause__
    if isinstance(error, sqlite3.Error):
        text = str(error)
        name = getattr(error, "sqlite_errorname", "") or ""
        limit = _file_size_limit_reached(path)
        if limit is not None:
            return f"file size limit reached (RLIMIT_FSIZE is {limit} bytes: {text})"
        if name == "SQLITE_FULL" or text == "database or disk is full" or (
                name.startswith("SQLITE_IOERR") and _disk_full(path)):
            return f"disk full ({text})"
        if name.startswith("SQLITE_IOERR"):
            return f"I/O error ({text}, {name})"
        return f"{text} ({name})" if name else text
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"disk full ({error.strerror})"
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return f"file size limit reached ({error.strerror})"
    return f"{type(error).__name__}: {error}"


def _file_size_limit_reached(path: Path) -> int | None:
    """The process's file size limit, if one of the journal's files has reached it."""
    if resource is None:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return None
    # The journal's files that grow: the file, SQLite's WAL and shared memory, the marks
    # of what runs (journal.inflight).
    for suffix in ("", "-wal", "-shm", "-inflight"):
        try:
            if os.stat(f"{path}{suffix}").st_size + _SLACK >= soft:
                return soft
        except OSError:
            continue
    return None


def _disk_full(path: Path) -> bool:
    try:
        fs = os.statvfs(path.parent)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return min(fs.f_bavail, fs.f_bfree) * fs.f_frsize < _SLACK


def compact(conn: sqlite3.Connection, path: Path) -> bool:
    """Give the pages of finished spores back and shrink the WAL; False (logged) if that
    failed: compaction is housekeeping, never a reason to fail a write."""
    try:
        # executescript steps the pragma to its end; execute would free one page.
        conn.executescript("PRAGMA incremental_vacuum;")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error as exc:
        logger.warning("%s: compacting the journal failed: %s", path, exc)
        return False
    return True


def file_size(path: Path) -> int:
    """A journal's size on disk, its write-ahead log included."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total
