"""The journal's record of settlements, for ``sporeflow trace --journal``: the table
``trace``, its bound, and how it is read.

Each settled delivery the journal sees (handled, failed or dead-lettered, ended) is one
row, a :class:`~sporeflow.pipeline.core.lineage.TraceStep` as a JSON array. Steps are held
(:class:`TraceBuffer`) and go with a group commit once ``TRACE_BATCH`` of them wait, and
at every flush and stop: a commit per spore would otherwise write one more page of the
file each time. The trace is a diagnostic record, not the journal's promise: a crash
loses at most its last ``TRACE_BATCH - 1`` steps, never a pending spore.

Settlements come from input, so the table is bounded: past ``JOURNAL_TRACE_ROWS`` rows,
the oldest are dropped down to nine tenths of it (a sweep per tenth, not one per row).
A journal made before the table gets it at its next start; until then it has no trace
to read, and older sporeflow versions ignore the table.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Final

from sporeflow.pipeline.core.lineage import TraceStep
from sporeflow.pipeline.journal.sqlite import NOT_JSON

__all__ = ["JOURNAL_TRACE_ROWS", "TRACE_BATCH", "TRACE_INSERT_SQL", "TRACE_SQL", "TraceBuffer",
           "TraceRows", "read_steps"]

JOURNAL_TRACE_ROWS: Final = 100_000  # some 50 MB of file at most
TRACE_BATCH: Final = 256
TRACE_SQL: Final = """CREATE TABLE IF NOT EXISTS trace (
    seq INTEGER PRIMARY KEY,
    step TEXT NOT NULL
)"""
# One statement per row, each row's JSON made by Python: json_each would parse the batch
# and write each row's text again, which cost more than the rest of a step (callgrind).
# The writer gives the GIL back per row here, once per TRACE_BATCH settlements.
TRACE_INSERT_SQL: Final = "INSERT INTO trace (step) VALUES (?)"
# Everything but the newest ``?`` rows; seq grows with every row written.
_OVER_SQL: Final = ("DELETE FROM trace WHERE seq <= (SELECT seq FROM trace ORDER BY seq DESC "
                    "LIMIT 1 OFFSET ?)")


class TraceBuffer:
    """The steps waiting for a commit (on the event loop)."""

    def __init__(self, batch: int = TRACE_BATCH) -> None:
        self.batch = batch
        self.steps: list[TraceStep] = []

    def add(self, step: TraceStep) -> list[TraceStep] | None:
        """Hold ``step``; return the steps to commit once a batch is full."""
        steps = self.steps
        steps.append(step)
        return self.take() if len(steps) >= self.batch else None

    def take(self) -> list[TraceStep]:
        """Every step held, handed over (the buffer is empty after)."""
        steps, self.steps = self.steps, []
        return steps


class TraceRows:
    """The count of a journal's trace rows, and the sweep that bounds it (on the writer
    thread, inside the transaction that adds rows)."""

    def __init__(self, cap: int = JOURNAL_TRACE_ROWS) -> None:
        self.cap = cap
        self.rows = 0

    def open(self, conn: sqlite3.Connection) -> None:
        """Make the table if the journal predates it; count its rows."""
        conn.execute(TRACE_SQL)
        self.rows = conn.execute("SELECT count(*) FROM trace").fetchone()[0]

    def added(self, conn: sqlite3.Connection, count: int) -> None:
        self.rows += count
        if self.rows > self.cap:
            self.rows -= conn.execute(_OVER_SQL, (self.cap - self.cap // 10,)).rowcount


def read_steps(conn: sqlite3.Connection) -> list[TraceStep]:
    """Every step a journal holds, oldest first (none in a journal made before the table);
    a row changed behind sporeflow's back that holds no step is left out."""
    try:
        rows = conn.execute("SELECT step FROM trace ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # no such table: a journal no run has opened since
        return []
    steps = []
    for (text,) in rows:
        try:
            step = TraceStep.from_row(json.loads(text))
        except NOT_JSON:
            continue
        if step is not None:
            steps.append(step)
    return steps

