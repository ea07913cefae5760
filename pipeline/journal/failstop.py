"""The journal fails stop, and what it then knows and keeps.

Any error of the writer (a full disk, the process's file size limit, an I/O error,
an exception of any kind) makes it *failed*: the error is logged with its real cause,
senders waiting for their spores to be on disk get it, ``on_failure`` tells the
organism, which admits nothing more from outside, and :meth:`Journal.failed` returns it
(``sporeflow run`` then stops without draining and exits 1 with that one line). What
can be known then:

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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sporeflow.pipeline.core.privatefiles import open_private
from sporeflow.pipeline.journal.sqlite import (
    JournalError,
    JournalGone,
    check_in_place,
    describe_failure,
    logger,
)

__all__ = ["LOST_LIMIT", "RESERVE_BYTES", "FailStop", "Ops"]

LOST_LIMIT = 1_000_000  # changes kept after a failure for the last commit at close
RESERVE_BYTES = 1024 * 1024  # JOURNAL-reserve: room given back for that last commit

Ops = list[tuple[Any, ...]]  # the writer's queued changes, as the journal queues them


class FailStop:
    """One journal's failure, the changes it keeps since, and its reserve and note files.

    The journal calls :meth:`fail` when it cannot write, hands over what it could not
    write with :meth:`keep`, and at close, once nothing runs, :meth:`conclude` makes the
    last attempt (see the module docstring).
    """

    def __init__(self, path: Path) -> None:
        self.path = path  # the journal's file
        self.note = Path(f"{path}-unrecorded")
        self.reserve = Path(f"{path}-reserve")
        # Called (on the event loop) once, when the journal fails; the organism's hook.
        self.on_failure: Callable[[], None] | None = None
        self._failure: JournalError | None = None
        self._failed = asyncio.Event()
        self._cause = ""  # the failure's cause, in words
        self._lost: Ops | None = []  # changes since the failure

    def reset(self) -> None:
        """A new run of the journal: not failed, nothing kept."""
        self._failure = None
        self._failed = asyncio.Event()
        self._lost = []

    @property
    def failure(self) -> JournalError | None:
        """Why the journal failed, or None; after :meth:`conclude`, it also says whether
        what happened after the failure could be recorded."""
        return self._failure

    async def failed(self) -> JournalError:
        """Return the journal's failure once it fails (never, while it works)."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    def fail(self, error: BaseException, ops: Ops | None = None, *, note: bool = True) -> None:
        """The journal cannot write: keep ``ops`` for the last attempt at close, tell why
        and whom it concerns, once (on the event loop). ``note``: leave the note that
        makes the next start refuse, unless the last attempt succeeds (never for a file
        deleted: there is nothing left to refuse)."""
        if ops:
            self.keep(ops)
        if self._failure is not None:
            return
        cause = error.__cause__ if isinstance(error, JournalError) and error.__cause__ else error
        self._cause = describe_failure(self.path, cause)
        gone = isinstance(error, JournalGone)
        lost = "no spore in it is durable" if gone else "nothing after the last commit is durable"
        failure = JournalError(f"journal {self.path}: {self._cause}; the run stopped, {lost}")
        failure.__cause__ = cause
        self._failure = failure
        logger.critical("%s", failure)
        if note and not gone:
            self._leave_note()
        self._failed.set()
        if self.on_failure is not None:
            try:
                self.on_failure()
            except Exception:  # the failure is what matters: it is reported regardless
                logger.exception("%s: telling the organism that its journal failed", self.path)

    def gone(self, fd: int | None) -> bool:
        """Fail, unless failed already, if the journal's file (open as ``fd``) was deleted;
        True if it was (at close: there is nothing left to record the rest in)."""
        try:
            check_in_place(fd)
        except JournalGone as gone:
            self.fail(gone)
            return True
        return False

    def keep(self, ops: Ops) -> None:
        """Keep changes the failed journal does not write, for the last attempt at close."""
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
            fd = open_private(self.note, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            logger.critical("%s: cannot leave the note %s either (%s): the next start may "
                            "replay finished work", self.path, self.note, exc.strerror)
            return
        try:
            with contextlib.suppress(OSError):  # an empty note says enough
                os.write(fd, f"{self._cause}\n".encode())
        finally:
            os.close(fd)

    def check_note(self) -> None:
        """Refuse to open a journal whose last run left the note (on the writer thread)."""
        note = self.note
        if note.exists():
            raise JournalError(
                f"{self.path}: a run could not record the work it finished after its journal "
                f"failed ({_read_note(note)}), so replaying the unfinished spores could handle "
                f"finished work again; free space, then delete {note} to replay them anyway "
                f"(at least once), or point the journal at a new file")

    # -- the room set aside for the last commit ------------------------------------------

    def make_reserve(self) -> None:
        """Set aside room for the last commit after a failure (see the module docstring)."""
        if not hasattr(os, "posix_fallocate"):  # pragma: no cover - not POSIX
            return
        try:
            fd = open_private(self.reserve, os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.warning("%s: no room set aside for a last write after a failure: %s",
                           self.path, exc.strerror)
            self.drop_reserve()

    def drop_reserve(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.reserve)

    # -- the last attempt, at close ------------------------------------------------------

    def conclude(self, conn: sqlite3.Connection, write: Callable[[Ops], object]) -> None:
        """Once nothing runs (on the writer thread): try once to commit what happened
        since the failure with ``write`` (the journal's one transaction of ``ops``), and
        make the failure say how that went."""
        self._failure = self._final_failure(self._salvage(conn, write))

    def _salvage(self, conn: sqlite3.Connection, write: Callable[[Ops], object]) -> bool:
        """After a failure, once nothing runs: commit what happened since, in one
        transaction, after giving room back (on the writer thread). True if it did."""
        if self._lost is None:
            return False
        self.drop_reserve()
        with contextlib.suppress(sqlite3.Error):  # the WAL's room back, if it can
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        try:
            write(self._lost)
        except Exception as exc:
            logger.critical("%s: recording the work finished after the failure failed too: %s",
                            self.path, describe_failure(self.path, exc))
            return False
        self._lost = []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.note)
        return True

    def _final_failure(self, recorded: bool) -> JournalError:
        assert self._failure is not None
        head = f"journal {self.path}: {self._cause}; the run stopped"
        if recorded:
            text = (f"{head}; what it finished after the failure was recorded when the journal "
                    f"closed, so the next start replays only unfinished spores")
        elif self.note.exists():
            text = (f"{head}, nothing after the last commit is durable and what finished since "
                    f"could not be recorded: the next start refuses the journal until "
                    f"{self.note} is deleted (some spores may then be handled twice)")
        else:
            text = (f"{head}, nothing after the last commit is durable: the next start replays "
                    f"from it, and some spores may be handled twice")
        failure = JournalError(text)
        failure.__cause__ = self._failure.__cause__
        return failure


def _read_note(note: Path) -> str:
    try:
        return note.read_text(errors="replace").strip() or "a write failed"
    except OSError:
        return "a write failed"
