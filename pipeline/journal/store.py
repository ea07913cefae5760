"""A write-ahead journal on SQLite, so that a crash or a kill of the embedded mode loses no spore.

What the organism admits is recorded before the sender hears back; a spore is
deleted once it is settled (handled with its replies recorded in the same
transaction, dead-lettered, resolved as a response, or returned outside).
What is left at the next start was unfinished and is replayed: delivery is
at-least-once. What a handler produces has ids derived from its parent's (see
``sporeflow.steps.ids``), given before it reaches the journal, so a replayed handler
produces the same ids and receivers can de-duplicate by spore id.

Writes go through one writer thread, which commits everything queued since
its last commit in one transaction (group commit): a burst of N admissions
costs about one commit. The file is in WAL mode with ``synchronous=NORMAL``
by default: a commit reaches the operating system before anyone is told, so a
crash, ``SIGKILL`` or OOM kill of the process loses nothing committed; only a
power cut or a kernel crash may lose the last commits. ``synchronous="full"``
also syncs every commit to the disk, at the cost of one fsync per batch.

A file that is not a sporeflow journal (not SQLite, another application's
database, or a damaged one) is refused with :class:`JournalError` and left
untouched. A row of a journal is untrusted input: one changed behind sporeflow's
back is replayed as found, and the chain's validate stage dead-letters it with why,
like any malformed spore (see ``sqlite.stored_spore``).

The journal fails stop: any error of the writer stops the run, and what happened after
its last commit is recorded at close if it can be, or the next start refuses to replay
(see :mod:`sporeflow.pipeline.journal.failstop`).

A spore whose handler keeps killing the process is dead-lettered ``poison`` after
``agents.X.max_crashes`` deaths: see ``journal.inflight`` (the rule) and ``.marking``.
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
from pathlib import Path
from typing import Any

from sporeflow.config import Limits, OrganismSpec
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.lineage import TraceStep
from sporeflow.pipeline.journal.batch import (
    DEAD,
    DELETE,
    INSERT,
    TRACE,
    Batch,
    Fanout,
    fold,
    write_batch,
)
from sporeflow.pipeline.journal.failstop import FailStop, Ops
from sporeflow.pipeline.journal.inflight import count_crashes
from sporeflow.pipeline.journal.lineage import TraceBuffer, TraceRows
from sporeflow.pipeline.journal.marking import HandlerMarking, InvocationWrapper, Invoke
from sporeflow.pipeline.journal.retention import DeadLetterRetention
from sporeflow.pipeline.journal.sqlite import (
    JournalError,
    Synchronous,
    booted_agents,
    check_file,
    check_in_place,
    check_log_in_place,
    compact,
    connect,
    file_size,
    lock,
    log_identity,
    logger,
    owned,
    stored_spore,
    transaction,
)
from sporeflow.steps import Spore, new_spore_id

__all__ = ["Journal"]


# A commit nobody waits for waits this long for more (as Kafka's linger.ms), or until
# this many operations are queued.
_LINGER_S = 0.005
_LINGER_OPS = 4096
_BEHIND = 16_384  # queued operations past which pipelined senders wait for a commit


class Journal:
    """An organism's durable record of unfinished spores and of its dead letters.

    The organism calls :meth:`open` at start (it returns the spores to replay),
    ``record`` for what it admits (awaited before the sender is answered),
    ``done``/``settle``/``dead`` as spores finish, and :meth:`close` at stop. It wraps
    handler calls with :meth:`wrapping` (the marks of ``journal.marking``) and sets
    ``on_failure`` to hear when the journal fails (see ``journal.failstop``).
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
        self._ops: Ops = []
        self._waiters: list[asyncio.Future[None]] = []
        self._fanout = Fanout()
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # ends a linger: a waiter, a close, a full batch
        self._writer: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._log: tuple[int, int] | None = None  # the write-ahead log's identity
        self._committing: Ops = []  # the batch on the writer thread
        self._closing = False
        self._stop = FailStop(self.path)
        self._marking = HandlerMarking(self.path, self, self._stop.fail)
        self._key = new_spore_id()  # the journal's name in its file, read at open
        self._retention = DeadLetterRetention(self.path, Limits())  # spec's, from open
        self._trace_rows = TraceRows()
        self._trace = TraceBuffer()

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    @property
    def on_failure(self) -> Callable[[], None] | None:
        """Called (on the event loop) once, when the journal fails; the organism's hook."""
        return self._stop.on_failure

    @on_failure.setter
    def on_failure(self, hook: Callable[[], None] | None) -> None:
        self._stop.on_failure = hook

    @property
    def poisoned(self) -> list[DeadLetter]:
        """The spores dead-lettered 'poison' during this run."""
        return self._marking.poisoned

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
        self._ops, self._waiters, self._committing = [], [], []
        self._fanout.clear()
        self._boots.clear()
        self._trace.take()
        self._marking.reset(spec.agents if spec is not None else {})
        self._retention = DeadLetterRetention(self.path, spec.limits if spec else Limits())
        self._organism = spec.name if spec is not None else None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sporeflow-journal")
        loop = asyncio.get_running_loop()
        try:
            pending = await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._release()
            raise
        self._stop.reset()
        self._closing = False
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop(), name=f"sporeflow-journal:{self.path}")
        self._writer.add_done_callback(self._writer_ended)
        for letter in self.poisoned:
            logger.warning("%s: spore %s dead-lettered %r: %s", self.path, letter.spore.id,
                           Reason.POISON.value, letter.error)
        return pending

    def _open_sync(self) -> list[Spore]:
        self._stop.check_note()
        exists = check_file(self.path)
        conn = self._conn = connect(self.path, self.synchronous, exists=exists)
        died = self._marking.died()
        with transaction(conn, self.path):
            owned(conn, self.path, self._organism)
            counted = count_crashes(conn, self.path, died, self._marking.limit)
            self._trace_rows.open(conn)
            row = conn.execute("SELECT value FROM meta WHERE key = 'journal'").fetchone()
            if row is None:  # this journal's own name, for its boot spores' ids
                row = (secrets.token_hex(8),)
                conn.execute("INSERT INTO meta (key, value) VALUES ('journal', ?)", row)
            self._key = row[0]
        self._marking.counted(counted)
        self._log = log_identity(self.path)  # the write-ahead log, there once written to
        # Within a priority, spores running at a death go last (see journal.inflight).
        rows = conn.execute("SELECT spore, id FROM pending ORDER BY priority DESC, "
                            "id IN (SELECT id FROM crashes), seq").fetchall()
        self._pending_rows = len(rows)
        self._dead_rows = self._retention.sweep(conn)  # what is left of the last runs'
        self.booted = booted_agents(conn)
        pending = [stored_spore(text, key) for text, key in rows]  # the chain checks them
        self._stop.make_reserve()
        self._marking.start()  # this run's marks; the last run's are counted
        return pending

    async def close(self) -> None:
        """Commit what is queued, compact the file and close it; after a failure, try
        once to commit what happened since (see ``journal.failstop``)."""
        writer = self._writer
        if writer is None:
            return
        self._trace_out()
        self._closing = True
        self._urgent.set()
        self._wake.set()
        await asyncio.wait([writer])  # however it ends: a failure is in self.failure
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
            if self._stop.gone(self._lock_fd):  # told; nothing to salvage into
                return
            if self._stop.failure is None:
                with contextlib.suppress(JournalError), transaction(conn, self.path):
                    # Crash counts of finished spores end (see journal.inflight).
                    conn.execute("DELETE FROM crashes WHERE id NOT IN (SELECT id FROM pending)")
                self._compact(conn)
            else:
                # One last attempt to record what happened since the failure.
                self._stop.conclude(conn, lambda lost: self._write(conn, fold(lost, self._boots)))
        finally:
            self._marking.close(remove=True)  # an orderly end: nothing was running
            self._stop.drop_reserve()
            conn.close()
            self._conn = None

    def _release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._marking.close(remove=False)
        self._stop.drop_reserve()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- what the organism records (on the event loop; never blocks) -------------------

    def record(self, spores: Iterable[Spore]) -> asyncio.Future[None]:
        """Queue ``spores`` as admitted; the future resolves once they are on disk."""
        ops = self._ops
        for spore in spores:
            ops.append((INSERT, spore))
            self.written += 1
        waiter = asyncio.get_running_loop().create_future()
        failure = self._stop.failure
        if failure is not None:
            waiter.set_exception(failure)
            return waiter
        self._waiters.append(waiter)
        self._urgent.set()
        self._kick()
        return waiter

    def add(self, spores: Iterable[Spore]) -> bool:
        """Queue spores for the next group commit; nobody waits. True once the writer is
        ``_BEHIND``: a pipelined sender then waits for a commit (bounded memory)."""
        ops = self._ops
        for spore in spores:
            ops.append((INSERT, spore))
            self.written += 1
        self._kick()
        return len(ops) >= _BEHIND

    def done(self, spore: Spore, replies: list[Spore], agent: str | None = None) -> None:
        """Queue ``spore`` as handled (by ``agent``) and its ``replies`` (their ids derived
        already, by the lane's shaper) as new, for one transaction."""
        self._marking.settled(spore.id, agent)  # first: it stops counting as running now
        ops = self._ops
        if replies:
            ops.extend([(INSERT, reply) for reply in replies])
            self.written += len(replies)
        if self._fanout.last(spore.id):
            ops.append((DELETE, spore.id))
        self._kick()

    def settle(self, spore: Spore) -> None:
        """Queue ``spore`` as finished without replies (a resolved response, returned outside)."""
        if self._fanout.last(spore.id):
            self._ops.append((DELETE, spore.id))
            self._kick()

    def dead(self, letter: DeadLetter) -> None:
        """Queue a dead letter: kept in the journal, and its spore no longer pending."""
        self._marking.settled(letter.spore.id, letter.agent)
        self._ops.append((DEAD, letter, self._fanout.last(letter.spore.id)))
        self._kick()

    def trace(self, step: TraceStep) -> None:
        """Hold a settlement's step for ``sporeflow trace``; committed in batches (see
        ``journal.lineage``)."""
        full = self._trace.add(step)
        if full is not None:
            self._ops.append((TRACE, full))

    def _trace_out(self) -> None:
        steps = self._trace.take()
        if steps:
            self._ops.append((TRACE, steps))

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
        self._fanout.count(spore_id, targets)

    def _kick(self) -> None:
        if not self._wake.is_set():
            self._wake.set()
        elif len(self._ops) >= _LINGER_OPS:
            self._urgent.set()

    async def flush(self) -> None:
        """Return once everything queued so far is committed (held trace steps too)."""
        self._trace_out()
        await self.record(())

    # -- handler calls: the marks of what runs (see journal.marking) ----------------------

    def wrapping(self, inner: InvocationWrapper | None = None) -> InvocationWrapper:
        """A wrapper of handler calls marking each spore running first (around ``inner``)."""
        return self._marking.wrapping(inner)

    def marked(self, agent: str, invoke: Invoke) -> Invoke:
        """``invoke`` of ``agent``, marking each spore before its handler starts."""
        return self._marking.marked(agent, invoke)

    # -- failing stop (see journal.failstop) -----------------------------------------------

    @property
    def failure(self) -> JournalError | None:
        """Why the journal failed, or None; after :meth:`close`, it also says whether what
        happened after the failure could be recorded."""
        return self._stop.failure

    async def failed(self) -> JournalError:
        """Return the journal's failure once it fails (never, while it works)."""
        return await self._stop.failed()

    def _writer_ended(self, writer: asyncio.Task[None]) -> None:
        """The writer must end only when closing: any other end fails the journal."""
        if self._closing and not writer.cancelled() and writer.exception() is None:
            return
        unwritten = self._committing + self._ops
        if writer.cancelled():  # the event loop ends without a stop: as if killed
            self._stop.fail(asyncio.CancelledError(
                "the journal's writer was cancelled (the event loop ended before the organism "
                "stopped)"), unwritten, note=False)
        else:
            self._stop.fail(writer.exception() or RuntimeError("the journal's writer ended"),
                            unwritten)
        self._ops = []
        for waiter in self._waiters:
            if not waiter.done() and self._stop.failure is not None:
                waiter.set_exception(self._stop.failure)
        self._waiters = []

    # -- the writer ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            await wake.wait()
            if not self._waiters and not self._closing and len(self._ops) < _LINGER_OPS:
                await self._linger()
            wake.clear()
            ops, waiters = self._ops, self._waiters
            if not ops and not waiters:
                if self._closing:
                    return
                continue
            self._ops, self._waiters = [], []
            if self._stop.failure is None:
                self._committing = ops
                try:
                    await loop.run_in_executor(self._executor, self._commit, ops)
                except Exception as exc:  # any failure stops the journal, told why
                    self._stop.fail(exc, ops)
                self._committing = []
            else:  # failed: kept for the last attempt at close, not written
                self._stop.keep(ops)
            failure = self._stop.failure
            for waiter in waiters:
                if not waiter.done():
                    if failure is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(failure)
            if self._closing and not self._ops:
                return

    async def _linger(self) -> None:
        """Nobody waits for what is queued (pipelined sends, handlers' output): let more
        gather for up to ``_LINGER_S``, so that spores admitted and finished meanwhile
        never reach the disk. A waiter, a close or a full batch ends it at once."""
        self._urgent.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LINGER_S):
                await self._urgent.wait()

    def _write(self, conn: sqlite3.Connection, batch: Batch) -> tuple[int, int]:
        """Write ``batch`` in one transaction; return the rows removed and added."""
        return write_batch(conn, self.path, batch, self._trace_rows)

    def _commit(self, ops: Ops) -> None:
        """Write ``ops`` in one transaction (on the writer thread)."""
        batch = fold(ops, self._boots)
        conn = self._conn
        if conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        check_in_place(self._lock_fd)
        check_log_in_place(conn, self.path, self._log)
        removed, added = self._write(conn, batch)
        for spore_id in batch.boots:  # committed: noted for good
            self._boots.pop(spore_id, None)
        self.commits += 1
        self._pending_rows += added - removed
        self._dead_rows += len(batch.letters)
        if self._retention.due(self._dead_rows):
            self._dead_rows = self._retention.sweep(conn)
        self._deleted_since_compaction += removed
        if self._deleted_since_compaction >= self.compact_every:
            self._compact(conn)

    def _compact(self, conn: sqlite3.Connection) -> None:
        """Give the pages of finished spores back (on the writer thread)."""
        if compact(conn, self.path):
            self.compactions += 1
            self._deleted_since_compaction = 0

    # -- observing -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Unfinished spores in the file, as of the last commit."""
        return self._pending_rows

    def stats(self) -> dict[str, Any]:
        """A JSON-serialisable summary, for ``organism.stats()["journal"]``."""
        return {
            "path": str(self.path), "size_bytes": file_size(self.path), "replayed": self.replayed,
            "pending": self._pending_rows, "written": self.written, "commits": self.commits,
            "compactions": self.compactions, "dead_letters": self._dead_rows,
            "synchronous": self.synchronous, "failed": self._stop.failure is not None,
            "poisoned": len(self.poisoned), "dead_letters_dropped": self._retention.dropped,
            "queued": len(self._ops),  # operations waiting for the writer
        }

