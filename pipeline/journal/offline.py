"""A journal opened outside a running organism (``sporeflow dlq``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from sporeflow.config import SporeError
from sporeflow.pipeline.core.deadletters import DeadLetter, LetterChoice
from sporeflow.pipeline.core.lineage import TraceStep
from sporeflow.pipeline.core.replaying import ReplayBook
from sporeflow.pipeline.journal.lineage import read_steps
from sporeflow.pipeline.journal.sqlite import (
    CRASHES_SQL,
    JournalError,
    StoredDeadLetter,
    booted_agents,
    check_file,
    connect,
    lock,
    owner_of,
    stored_spore,
    to_json,
    transaction,
)
from sporeflow.steps import Spore
from sporeflow.steps.spore import PRIORITY_DEFAULT

__all__ = ["JournalFile"]


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
        if not check_file(self.path):
            raise JournalError(f"{self.path}: the file is empty; it is not a journal yet")
        self._conn = connect(self.path, "normal", exists=True)
        self._lock_fd: int | None = None  # held while a change is made (refuse_if_running)

    def __enter__(self) -> JournalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock goes with it
            self._lock_fd = None

    def refuse_if_running(self, action: str) -> None:
        """Unless ``action`` is ``read``: hold the journal's lock, as a running organism
        does, until this file is closed, or raise if a running organism holds it. It keeps
        its dead letters in memory too, so a ``replay`` or ``purge`` made here behind its
        back could be undone or done twice (replayed here and by it: a letter handled
        twice); held, no organism starts on it meanwhile."""
        if action == "read" or self._lock_fd is not None:
            return
        self._lock_fd = lock(self.path, busy=(
            f"the journal is in use by a running organism; {action} its dead letters "
            f"through it: `sporeflow dlq {action} ORGANISM.yaml` without --journal asks the "
            f"running organism (or stop it first)"))

    def organism(self) -> str | None:
        """The name of the organism whose runs wrote this journal (None: not recorded)."""
        return owner_of(self._conn)

    def booted(self) -> set[str]:
        """The agents whose boot spore this journal has recorded (it sends them once)."""
        return booted_agents(self._conn)

    def pending(self) -> list[Spore]:
        """The unfinished spores, in the order they would be replayed."""
        rows = self._conn.execute("SELECT spore, id FROM pending ORDER BY priority DESC, seq")
        return [stored_spore(text, key) for text, key in rows]

    def trace_steps(self) -> list[TraceStep]:
        """The settlements the journal keeps for ``sporeflow trace``, oldest first."""
        return read_steps(self._conn)

    def dead_letters(self, *, agents: Sequence[str] = (), reasons: Sequence[str] = (),
                     ids: Sequence[str] = (), choice: LetterChoice | None = None,
                     ) -> list[StoredDeadLetter]:
        """The dead letters matching every filter given (or ``choice``), oldest first.

        ``ids`` match a dead letter's number or its spore's id.
        """
        if choice is None:
            choice = LetterChoice(tuple(agents), tuple(reasons), tuple(ids))
        rows = self._conn.execute(
            "SELECT seq, spore, reason, error, agent, attempts, traceback, at, spore_id "
            "FROM dead_letters ORDER BY seq")
        # Filtered here, not in SQL: the rule is the broker's dead-letter queue's too.
        return [_letter(row) for row in rows
                if choice.matches(row[0], _text(row[8]), _text(row[4]) if row[4] is not None
                                  else None, _text(row[2]), partial(_addressee, row[1]))]

    def replay(self, letters: Iterable[StoredDeadLetter],
               book: ReplayBook | None = None) -> int:
        """Move ``letters`` back among the pending spores, each on its own (``book``, the
        replay's rule, judges and keeps what came of each: ``book.refused`` says which
        stayed and why); returns how many were moved, in one transaction.

        A broadcast goes back to the agent that failed on it only; an expired spore
        loses its expiry (replaying it asks for it to be handled).
        """
        book = book if book is not None else ReplayBook()
        rows: list[tuple[str, int, str]] = []
        for stored, spore in book.judged(letters):
            key = str(spore.id)
            if any(key == row[0] for row in rows) or self._is_pending(key):
                # Pending spores are kept by id: a second would replace the first, one
                # delivery lost (two subscribers that failed on one broadcast).
                book.refuse(stored, f"spore {key!r:.80} is pending already (replayed, or "
                                    f"not finished by the last run)",
                            todo="it stays a dead letter: replay it again once a run has "
                                 "delivered the pending one")
                continue
            try:
                text = _row_text(spore)
            except SporeError as exc:
                book.refuse(stored, exc, forever=True)
                continue
            with book.delivering(stored):
                rows.append((key, _rank(spore.priority), text))
        if rows:
            moved = [(stored.number,) for stored in book.replayed]
            with transaction(self._conn, self.path) as conn:
                conn.executemany("INSERT INTO pending (id, priority, spore) VALUES (?, ?, ?)",
                                 rows)
                conn.executemany("DELETE FROM dead_letters WHERE seq = ?", moved)
                # A replayed spore's crashes are counted afresh (see journal.inflight).
                conn.execute(CRASHES_SQL)
                conn.executemany("DELETE FROM crashes WHERE id = ?",
                                 [(row[0],) for row in rows])
        return len(rows)

    def _is_pending(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM pending WHERE id = ?",
                                  (key,)).fetchone() is not None

    def purge(self, letters: Iterable[StoredDeadLetter]) -> int:
        """Delete ``letters`` for good; returns how many were deleted."""
        numbers = [(s.number,) for s in letters]
        with transaction(self._conn, self.path) as conn:
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?", numbers)
        return len(numbers)



_UNKNOWN_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)


def _letter(row: tuple[Any, ...]) -> StoredDeadLetter:
    """A row of ``dead_letters`` (seq, spore, reason, error, agent, attempts, traceback,
    at, spore_id) as a letter. Each column is read as what it should hold: SQLite keeps
    whatever a changed file put there (a blob where text was), and one such row must not
    stop a listing, nor the purge that removes it."""
    seq, spore, reason, error, agent, attempts, trace, at, spore_id = row
    return StoredDeadLetter(seq, DeadLetter(
        stored_spore(spore, _text(spore_id)), _text(reason), _text(error),
        _text(agent) if agent is not None else None,
        attempts if type(attempts) is int else 0,
        _text(trace) if trace is not None else None, _moment(at)))


def _addressee(spore: object) -> object:
    """The ``to_agent`` of a stored spore's JSON (None when it has none, or is no JSON)."""
    try:
        data = json.loads(spore)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError):  # a row changed behind our back
        return None
    return data.get("to_agent") if isinstance(data, dict) else None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _row_text(spore: Spore) -> str:
    """A replayed spore's row: its JSON form, which a letter read from a changed row (a
    field of the wrong type) may lack; then it cannot go back."""
    try:
        return to_json(spore.to_dict())
    except Exception as exc:  # what the changed row holds: this letter is refused
        raise SporeError(f"its spore has no JSON form to put back ({type(exc).__name__}: "
                         f"{exc!s:.200}); `dlq show` prints what it holds") from None


def _rank(priority: object) -> int:
    """The row's priority, which orders the pending spores (a malformed one is refused by
    the validate stage when it is replayed; it waits in the middle)."""
    return priority if type(priority) is int else PRIORITY_DEFAULT


def _moment(text: object) -> datetime:
    """When a letter was dead-lettered, as its row says; a row whose time is unreadable
    (a tampered file) is still listed, shown, replayed or purged, dated 1970."""
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else _UNKNOWN_MOMENT
    except ValueError:
        return _UNKNOWN_MOMENT
