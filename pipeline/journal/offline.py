"""A journal opened outside a running organism (``sporeflow dlq``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sporeflow.pipeline.core.deadletters import DeadLetter, LetterChoice
from sporeflow.pipeline.core.lineage import TraceStep
from sporeflow.pipeline.journal.lineage import read_steps
from sporeflow.pipeline.journal.sqlite import (
    CRASHES_SQL,
    JournalError,
    StoredDeadLetter,
    booted_agents,
    check_file,
    connect,
    stored_spore,
    transaction,
)
from sporeflow.steps import Spore

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

    def __enter__(self) -> JournalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

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
                     ids: Sequence[str] = ()) -> list[StoredDeadLetter]:
        """The dead letters matching every filter given, oldest first.

        ``ids`` match a dead letter's number or its spore's id.
        """
        choice = LetterChoice(tuple(agents), tuple(reasons), tuple(ids))
        rows = self._conn.execute(
            "SELECT seq, spore, reason, error, agent, attempts, traceback, at, spore_id "
            "FROM dead_letters ORDER BY seq")
        # Filtered here, not in SQL: the rule is the broker's dead-letter queue's too.
        return [StoredDeadLetter(row[0], DeadLetter(
            stored_spore(row[1], row[8]), row[2], row[3], row[4], row[5], row[6],
            _moment(row[7]))) for row in rows
            if choice.matches(row[0], row[8], row[4], row[2])]

    def replay(self, letters: Iterable[StoredDeadLetter]) -> int:
        """Move ``letters`` back among the pending spores; returns how many were moved.

        A broadcast goes back to the agent that failed on it only; an expired spore
        loses its expiry (replaying it asks for it to be handled).
        """
        chosen = list(letters)
        rows = [(s.id, s.priority, s.to_json()) for s in (c.replayable() for c in chosen)]
        with transaction(self._conn, self.path) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO pending (id, priority, spore) VALUES (?, ?, ?)", rows)
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?",
                             [(s.number,) for s in chosen])
            # A replayed spore's crashes are counted afresh (see journal.inflight).
            conn.execute(CRASHES_SQL)
            conn.executemany("DELETE FROM crashes WHERE id = ?", [(row[0],) for row in rows])
        return len(chosen)

    def purge(self, letters: Iterable[StoredDeadLetter]) -> int:
        """Delete ``letters`` for good; returns how many were deleted."""
        numbers = [(s.number,) for s in letters]
        with transaction(self._conn, self.path) as conn:
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?", numbers)
        return len(numbers)



_UNKNOWN_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(text: object) -> datetime:
    """When a letter was dead-lettered, as its row says; a row whose time is unreadable
    (a tampered file) is still listed, shown, replayed or purged, dated 1970."""
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else _UNKNOWN_MOMENT
    except ValueError:
        return _UNKNOWN_MOMENT
