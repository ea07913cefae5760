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

The journal fails stop. Any error of the writer (a full disk, the process's file
size limit, an I/O error, an exception of any kind) makes it *failed*: the error
is logged with its real cause, senders waiting for their spores to be on disk
get it, ``on_failure`` tells the organism, which admits nothing more from
outside, and :meth:`Journal.failed` returns it (``sporeflow run`` then stops
without draining and exits 1 with that one line). What can be known then:

- the file is exactly as of its last commit; nothing after it is durable;
- the journal still knows, in memory, what happened since: admissions, and
  work finished (handled, dead-lettered, settled), including the batch whose
  commit failed. It keeps these changes (up to ``LOST_LIMIT``) instead of
  writing them;
- at :meth:`Journal.close`, once nothing runs, it tries once more to commit all
  of them in one transaction, after giving room back: it deletes the 1 MiB
  file ``JOURNAL-reserve`` it set aside at open and checkpoints the WAL. Spores
  made and finished since the failure cancel out, so the last commit is small.
  If it succeeds, the file is exact again: the next start replays only what is
  unfinished;
- if it fails too, work the journal knew was done could be replayed as if
  pending. So at the failure it leaves a note, ``JOURNAL-unrecorded``, removed
  only by that last commit succeeding; a start that finds the note refuses the
  journal with a :class:`JournalError` saying so. The user frees space and
  deletes the note to replay anyway (at least once, some spores perhaps twice),
  or starts a new journal. Only a process killed between the failure and the
  note, or a note that cannot be created, replays from the last commit.

A spore whose handler keeps killing the process is dead-lettered ``poison``
after ``agents.X.max_crashes`` deaths instead of replayed forever: see
:mod:`sporeflow.pipeline.journal.inflight`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sporeflow.config import OrganismSpec
from sporeflow.config.model import DEFAULT_MAX_CRASHES
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.journal.inflight import (
    InFlightMarks,
    count_crashes,
    limits_of,
    poison_error,
)
from sporeflow.pipeline.journal.sqlite import (
    DEAD_SQL,
    DELETE_SQL,
    INSERT_SQL,
    JournalError,
    Synchronous,
    booted_agents,
    check_file,
    connect,
    describe_failure,
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
LOST_LIMIT = 1_000_000  # changes kept after a failure for the last commit at close
RESERVE_BYTES = 1024 * 1024  # JOURNAL-reserve: room given back for that last commit

Invoke = Callable[[Spore, int], Any]
Shape = Callable[[Any, Spore], Any]


class InvocationWrapper(Protocol):
    """What the agent builder takes to wrap each handler call (``agents.builder``)."""

    def wrap(self, agent: str, invoke: Invoke, shape: Shape) -> tuple[Invoke, Shape]: ...


@dataclass(slots=True)
class _Batch:
    """Operations folded into what one transaction writes."""

    inserts: dict[str, Spore] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    letters: list[list[Any]] = field(default_factory=list)
    meta: list[tuple[str, str]] = field(default_factory=list)
    boots: list[str] = field(default_factory=list)  # boot spore ids noted in meta


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
    ``done``/``settle``/``dead`` as spores finish, and :meth:`close` at stop. It wraps
    handler calls with :meth:`wrapping` (the marks of ``journal.inflight``) and sets
    ``on_failure`` to hear when the journal fails (see the module docstring).
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
        self.poisoned: list[DeadLetter] = []  # dead-lettered 'poison' during this run
        # Called (on the event loop) once, when the journal fails; the organism's hook.
        self.on_failure: Callable[[], None] | None = None
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
        self._failed = asyncio.Event()
        self._cause = ""  # the failure's cause, in words
        self._lost: list[tuple[Any, ...]] | None = []  # changes since the failure
        self._committing: list[tuple[Any, ...]] = []  # the batch on the writer thread
        self._closing = False
        self._marks = InFlightMarks(Path(f"{self.path}-inflight"))
        self._suspects: dict[str, tuple[int, str | None]] = {}
        self._limit: Callable[[str | None], int] = limits_of({}, DEFAULT_MAX_CRASHES)
        self._key = new_spore_id()  # the journal's name in its file, read at open

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    @property
    def _note(self) -> Path:
        return Path(f"{self.path}-unrecorded")

    @property
    def _reserve(self) -> Path:
        return Path(f"{self.path}-reserve")

    # -- opening and closing --------------------------------------------------------

    async def open(self, spec: OrganismSpec | None = None) -> list[Spore]:
        """Open (or create) the file; return the unfinished spores, highest priority first.

        A spore that reached its agent's ``max_crashes`` (``spec``'s agents; 3 for an
        agent it lacks) is dead-lettered ``poison`` instead (see ``journal.inflight``).
        """
        if self._writer is not None:
            raise JournalError(f"{self.path}: the journal is already open")
        self._lock_fd = lock(self.path)
        # Nothing of an earlier run of this object may leak into this one.
        self._ops, self._waiters, self._lost, self._committing = [], [], [], []
        self._fanout.clear()
        self._boots.clear()
        self.poisoned = []
        self._limit = limits_of(spec.agents if spec is not None else {}, DEFAULT_MAX_CRASHES)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sporeflow-journal")
        loop = asyncio.get_running_loop()
        try:
            pending = await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._release()
            raise
        self._failure = None
        self._failed = asyncio.Event()
        self._closing = False
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop(), name=f"sporeflow-journal:{self.path}")
        self._writer.add_done_callback(self._writer_ended)
        for letter in self.poisoned:
            logger.warning("%s: spore %s dead-lettered %r: %s", self.path, letter.spore.id,
                           Reason.POISON.value, letter.error)
        return pending

    def _open_sync(self) -> list[Spore]:
        note = self._note
        if note.exists():
            raise JournalError(
                f"{self.path}: a run could not record the work it finished after its journal "
                f"failed ({_read_note(note)}), so replaying the unfinished spores could handle "
                f"finished work again; free space, then delete {note} to replay them anyway "
                f"(at least once), or point the journal at a new file")
        exists = check_file(self.path)
        conn = self._conn = connect(self.path, self.synchronous, exists=exists)
        try:
            died = self._marks.previous()
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot read {self._marks.path}: "
                               f"{exc.strerror}") from None
        with transaction(conn, self.path):
            counted = count_crashes(conn, self.path, died, self._limit)
            row = conn.execute("SELECT value FROM meta WHERE key = 'journal'").fetchone()
            if row is None:  # this journal's own name, for its boot spores' ids
                row = (secrets.token_hex(8),)
                conn.execute("INSERT INTO meta (key, value) VALUES ('journal', ?)", row)
            self._key = row[0]
        self.poisoned, self._suspects = counted.poisoned, counted.suspects
        # Within a priority, spores that were running at a death go last: the others are
        # not held up by one that kills the process again (see journal.inflight).
        rows = conn.execute("SELECT spore FROM pending ORDER BY priority DESC, "
                            "id IN (SELECT id FROM crashes), seq").fetchall()
        self._pending_rows = len(rows)
        self._dead_rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        self.booted = booted_agents(conn)
        pending = [spore_of(self.path, row[0]) for row in rows]
        self._make_reserve()
        try:
            self._marks.start()  # this run's marks; the last run's are counted
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot write {self._marks.path}: "
                               f"{exc.strerror}") from None
        return pending

    def _make_reserve(self) -> None:
        """Set aside room for the last commit after a failure (see the module docstring)."""
        if not hasattr(os, "posix_fallocate"):  # pragma: no cover - not POSIX
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.warning("%s: no room set aside for a last write after a failure: %s",
                           self.path, exc.strerror)
            self._drop_reserve()

    def _drop_reserve(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._reserve)

    async def close(self) -> None:
        """Commit what is queued, compact the file and close it; after a failure, try
        once to commit what happened since (see the module docstring)."""
        writer = self._writer
        if writer is None:
            return
        self._closing = True
        self._wake.set()
        await asyncio.wait([writer])  # however it ends: a failure is in self._failure
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
                with contextlib.suppress(JournalError), transaction(conn, self.path):
                    # Crash counts of finished spores end (see journal.inflight).
                    conn.execute("DELETE FROM crashes WHERE id NOT IN (SELECT id FROM pending)")
                self._compact(conn)
            else:
                self._failure = self._final_failure(self._salvage(conn))
        finally:
            self._marks.close(remove=True)  # an orderly end: nothing was running
            self._drop_reserve()
            conn.close()
            self._conn = None

    def _release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._marks.close(remove=False)
        self._drop_reserve()
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
        if self._marks.running:  # first: the spore stops counting as running at once
            self._settled(spore.id)
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
        if self._marks.running:
            self._settled(spore.id)
        if self._last_delivery(spore.id):
            self._ops.append((_DELETE, spore.id))
            self._kick()

    def dead(self, letter: DeadLetter) -> None:
        """Queue a dead letter: kept in the journal, and its spore no longer pending."""
        if self._marks.running:
            self._settled(letter.spore.id)
        self._ops.append((_DEAD, letter, self._last_delivery(letter.spore.id)))
        self._kick()

    def boot_id(self, agent: str) -> str | None:
        """The id to give ``agent``'s boot spore, or None when the journal has sent it.

        A boot spore is work like any other: sent once per journal, and replayed if
        unfinished. The note that it was sent is committed with the spore itself.
        """
        if agent in self.booted:
            return None
        # Always the same for one agent of one journal: if the process dies before the
        # boot spore is on disk, it is sent again with its id, its replies get their ids
        # again, and a crash they caused is counted on the same ids (journal.inflight).
        digest = hashlib.blake2b(f"{self._key}|{agent}".encode(), digest_size=9).hexdigest()
        spore_id = f"boot-{digest}"
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

    # -- handler calls: the marks of what runs (see journal.inflight) ---------------------

    def wrapping(self, inner: InvocationWrapper | None = None) -> InvocationWrapper:
        """A wrapper of handler calls (for the agent builder) that marks each spore as
        running before its handler starts, around ``inner`` (tracing), if any."""
        return _Marking(self, inner)

    def marked(self, agent: str, invoke: Invoke) -> Invoke:
        """``invoke`` of ``agent``, marking each spore before its handler starts."""
        marks = self._marks

        def invoke_marked(spore: Spore, attempt: int) -> Any:
            if marks.active:
                try:
                    marks.mark(agent, spore.id)
                except OSError as exc:  # the marks are the journal's: it fails stop
                    marks.close(remove=False)
                    self._fail(exc)
            if self._suspects and spore.id in self._suspects:
                return self._run_suspect(agent, invoke, spore, attempt)
            return self._until_returned(invoke(spore, attempt), spore.id)

        return invoke_marked

    async def _until_returned(self, call: Any, spore_id: str) -> Any:
        """Await a handler's call: the spore stops counting as running once the handler
        returns or raises, unless what it returned still runs the handler's code (an
        async iterable: then once the spore is settled)."""
        streams = False
        try:
            result = await call
            streams = hasattr(result, "__aiter__")
            return result
        finally:
            if not streams and self._marks.running:
                self._settled(spore_id)

    def _settled(self, spore_id: str) -> None:
        try:
            self._marks.settled(spore_id)
        except OSError as exc:  # the marks are the journal's: it fails stop
            self._marks.close(remove=False)
            self._fail(exc)

    async def _run_suspect(self, agent: str, invoke: Invoke, spore: Spore,
                           attempt: int) -> Any:
        """A spore that crashed the process before it was in the journal: past its limit,
        dead-letter it without running it; else write it to the journal, then run it."""
        count, _ = self._suspects.pop(spore.id)
        if count >= self._limit(agent):
            letter = DeadLetter(spore, Reason.POISON, poison_error(count, agent), agent, count)
            logger.warning("%s: spore %s dead-lettered %r: %s", self.path, spore.id,
                           Reason.POISON.value, letter.error)
            self.poisoned.append(letter)
            self.dead(letter)
            return None  # not run: nothing comes of it
        with contextlib.suppress(JournalError):  # failed: the run is stopping anyway
            await self.flush()
        return await invoke(spore, attempt)

    # -- failing stop -------------------------------------------------------------------

    @property
    def failure(self) -> JournalError | None:
        """Why the journal failed, or None; after :meth:`close`, it also says whether what
        happened after the failure could be recorded."""
        return self._failure

    async def failed(self) -> JournalError:
        """Return the journal's failure once it fails (never, while it works)."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    def _fail(self, error: BaseException, ops: list[tuple[Any, ...]] | None = None, *,
              note: bool = True) -> None:
        """The journal cannot write: keep ``ops`` for the last attempt at close, tell why
        and whom it concerns, once (on the event loop). ``note``: leave the note that
        makes the next start refuse, unless the last attempt succeeds."""
        if ops:
            self._keep(ops)
        if self._failure is not None:
            return
        cause = error.__cause__ if isinstance(error, JournalError) and error.__cause__ else error
        self._cause = describe_failure(self.path, cause)
        failure = JournalError(f"journal {self.path}: {self._cause}; the run stopped, nothing "
                               f"after the last commit is durable")
        failure.__cause__ = cause
        self._failure = failure
        logger.critical("%s", failure)
        if note:
            self._leave_note()
        self._failed.set()
        if self.on_failure is not None:
            try:
                self.on_failure()
            except Exception:  # the failure is what matters: it is reported regardless
                logger.exception("%s: telling the organism that its journal failed", self.path)

    def _keep(self, ops: list[tuple[Any, ...]]) -> None:
        lost = self._lost
        if lost is None:
            return
        if len(lost) + len(ops) > LOST_LIMIT:
            self._lost = None
            logger.error("%s: more than %d changes since the journal failed: they will not be "
                         "recorded at close", self.path, LOST_LIMIT)
            return
        lost.extend(ops)

    def _leave_note(self) -> None:
        """Say in the file system, for the next start, that finished work is unrecorded."""
        try:
            fd = os.open(self._note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            logger.critical("%s: cannot leave the note %s either (%s): the next start may "
                            "replay finished work", self.path, self._note, exc.strerror)
            return
        try:
            with contextlib.suppress(OSError):  # an empty note says enough
                os.write(fd, f"{self._cause}\n".encode())
        finally:
            os.close(fd)

    def _salvage(self, conn: sqlite3.Connection) -> bool:
        """After a failure, once nothing runs: commit what happened since, in one
        transaction, after giving room back (on the writer thread). True if it did."""
        if self._lost is None:
            return False
        self._drop_reserve()
        with contextlib.suppress(sqlite3.Error):  # the WAL's room back, if it can
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        try:
            self._write(conn, self._fold(self._lost))
        except Exception as exc:
            logger.critical("%s: recording the work finished after the failure failed too: %s",
                            self.path, describe_failure(self.path, exc))
            return False
        self._lost = []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._note)
        return True

    def _final_failure(self, recorded: bool) -> JournalError:
        assert self._failure is not None
        head = f"journal {self.path}: {self._cause}; the run stopped"
        if recorded:
            text = (f"{head}; what it finished after the failure was recorded when the journal "
                    f"closed, so the next start replays only unfinished spores")
        elif self._note.exists():
            text = (f"{head}, nothing after the last commit is durable and what finished since "
                    f"could not be recorded: the next start refuses the journal until "
                    f"{self._note} is deleted (some spores may then be handled twice)")
        else:
            text = (f"{head}, nothing after the last commit is durable: the next start replays "
                    f"from it, and some spores may be handled twice")
        failure = JournalError(text)
        failure.__cause__ = self._failure.__cause__
        return failure

    def _writer_ended(self, writer: asyncio.Task[None]) -> None:
        """The writer must end only when closing: any other end fails the journal."""
        if self._closing and not writer.cancelled() and writer.exception() is None:
            return
        if writer.cancelled():  # the event loop ends without a stop: as if killed
            self._fail(asyncio.CancelledError("the journal's writer was cancelled (the event "
                                              "loop ended before the organism stopped)"),
                       self._committing + self._ops, note=False)
        else:
            self._fail(writer.exception() or RuntimeError("the journal's writer ended"),
                       self._committing + self._ops)
        self._ops = []
        for waiter in self._waiters:
            if not waiter.done() and self._failure is not None:
                waiter.set_exception(self._failure)
        self._waiters = []

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
            if self._failure is None:
                self._committing = ops
                try:
                    await loop.run_in_executor(self._executor, self._commit, ops)
                except Exception as exc:  # any failure stops the journal, told why
                    self._fail(exc, ops)
                self._committing = []
            else:  # failed: kept for the last attempt at close, not written
                self._keep(ops)
            failure = self._failure
            for waiter in waiters:
                if not waiter.done():
                    if failure is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(failure)
            if self._closing and not self._ops:
                return

    def _fold(self, ops: list[tuple[Any, ...]]) -> _Batch:
        """What ``ops`` leave to write, in order: a spore admitted and finished among
        them never touches the disk."""
        batch = _Batch()
        inserts, deletes, boots = batch.inserts, batch.deletes, self._boots
        for op in ops:
            kind = op[0]
            if kind == _INSERT:
                inserts[op[1].id] = op[1]
                if boots and op[1].id in boots:
                    batch.meta.append((f"booted:{boots[op[1].id]}", "1"))
                    batch.boots.append(op[1].id)
            elif kind == _DELETE:
                if inserts.pop(op[1], None) is None:
                    deletes.append(op[1])
            elif kind == _DEAD:
                letter = op[1]
                batch.letters.append(letter_row(letter))
                if op[2] and inserts.pop(letter.spore.id, None) is None:
                    deletes.append(letter.spore.id)
            else:
                batch.meta.append((op[1], op[2]))
        return batch

    def _write(self, conn: sqlite3.Connection, batch: _Batch) -> tuple[int, int]:
        """Write ``batch`` in one transaction; return the rows removed and added."""
        # Each statement takes its whole batch as one JSON array: one step of SQLite, so
        # the writer thread takes the GIL back once per statement, not once per row.
        with transaction(conn, self.path):
            removed = added = 0
            if batch.deletes:
                removed = conn.execute(DELETE_SQL, (to_json(batch.deletes),)).rowcount
            if batch.inserts:
                added = conn.execute(INSERT_SQL,
                                     (spores_json(batch.inserts.values()),)).rowcount
            if batch.letters:
                conn.execute(DEAD_SQL, (to_json(batch.letters),))
            if batch.meta:
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 batch.meta)
        return removed, added

    def _commit(self, ops: list[tuple[Any, ...]]) -> None:
        """Write ``ops`` in one transaction (on the writer thread)."""
        batch = self._fold(ops)
        conn = self._conn
        if conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        removed, added = self._write(conn, batch)
        for spore_id in batch.boots:  # committed: noted for good
            self._boots.pop(spore_id, None)
        self.commits += 1
        self._pending_rows += added - removed
        self._dead_rows += len(batch.letters)
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
            "poisoned": len(self.poisoned),
        }


class _Marking:
    """:meth:`Journal.wrapping`: marks around ``inner``'s wrapping (tracing's span)."""

    def __init__(self, journal: Journal, inner: InvocationWrapper | None) -> None:
        self._journal = journal
        self._inner = inner

    def wrap(self, agent: str, invoke: Invoke, shape: Shape) -> tuple[Invoke, Shape]:
        if self._inner is not None:
            invoke, shape = self._inner.wrap(agent, invoke, shape)
        return self._journal.marked(agent, invoke), shape


def _read_note(note: Path) -> str:
    try:
        return note.read_text(errors="replace").strip() or "a write failed"
    except OSError:
        return "a write failed"
