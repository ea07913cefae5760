"""The journal's record of settlements, for ``sporeflow trace --journal``: the table
``trace``, its bound, and how it is read.

Each settled delivery the journal sees (handled, failed or dead-lettered, ended) is one
step, a :class:`~sporeflow.pipeline.core.lineage.TraceStep` as a JSON array. Steps are
held (:class:`TraceBuffer`) and go with a group commit once ``TRACE_BATCH`` of them wait,
and at every flush and stop: a commit per spore would otherwise write one more page of
the file each time. The steps held go as one row, a JSON array of them (``steps`` says
how many) with their times as seconds since the epoch: one encoding and one statement per
batch, and no ISO text per time, where a row per step cost the writer thread more than
everything else it does for a spore. The trace is a diagnostic record, not the journal's
promise: a crash loses at most its last ``TRACE_BATCH - 1`` steps, never a pending spore.

Settlements come from input, so the table is bounded: past ``JOURNAL_TRACE_ROWS`` steps,
the oldest rows are dropped down to nine tenths of it (a sweep per tenth, not one per
row). A journal made before the table gets it at its next start, one made before
batches its ``steps`` column (its rows, one step each, are still read); until then it
has no trace to read, and older sporeflow versions ignore the table.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from sporeflow.pipeline.core.lineage import TraceStep
from sporeflow.pipeline.journal.sqlite import NOT_JSON

__all__ = ["JOURNAL_TRACE_ROWS", "TRACE_BATCH", "TRACE_INSERT_SQL", "TRACE_SQL", "TraceBuffer",
           "TraceRows", "batch_row", "read_steps"]

JOURNAL_TRACE_ROWS: Final = 100_000  # some 50 MB of file at most
TRACE_BATCH: Final = 256
_AT, _CREATED = TraceStep._fields.index("at"), TraceStep._fields.index("created_at")
_FIRST_YEAR, _LAST_YEAR = 1971, 9998  # times written as seconds (others as ISO text)
TRACE_SQL: Final = """CREATE TABLE IF NOT EXISTS trace (
    seq INTEGER PRIMARY KEY,
    step TEXT NOT NULL,
    steps INTEGER NOT NULL DEFAULT 1
)"""
TRACE_INSERT_SQL: Final = "INSERT INTO trace (step, steps) VALUES (?, ?)"
# The rows older than the newest that hold ``?`` steps in all, the newest row always kept
# (a batch larger than that, with a small cap); seq grows with every row.
_OVER_SQL: Final = """DELETE FROM trace WHERE seq < (SELECT max(seq) FROM trace) AND seq <= (
    SELECT seq FROM (SELECT seq, sum(steps) OVER (ORDER BY seq DESC) AS newer FROM trace)
    WHERE newer > ? ORDER BY seq DESC LIMIT 1)"""
_COUNT_SQL: Final = "SELECT coalesce(sum(steps), 0) FROM trace"


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


def batch_row(steps: list[TraceStep]) -> list[list[Any]]:
    """``steps`` as what a row of the table holds (on the writer thread)."""
    rows = []
    for step in steps:
        row = list(step)
        row[_AT] = _seconds(step.at)
        created = step.created_at
        row[_CREATED] = None if created is None else _seconds(created)
        rows.append(row)
    return rows


def _seconds(moment: datetime) -> float | str:
    """``moment`` as seconds since the epoch; as ISO text when seconds would not read back
    as the same time: naive (a refused spore's, kept as found), or in a year a float
    rounds out of a datetime's range. Nothing here may raise: the writer stops on it."""
    if moment.tzinfo is not None and _FIRST_YEAR <= moment.year <= _LAST_YEAR:
        return moment.timestamp()
    return moment.isoformat()


def _step_of(row: object) -> TraceStep | None:
    """The step of a batch's entry (times as seconds), or None if it holds none."""
    if type(row) is not list or len(row) != len(TraceStep._fields):
        return None
    try:
        for index in (_AT, _CREATED):
            if type(row[index]) in (int, float):
                row[index] = datetime.fromtimestamp(row[index], UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # a time no datetime holds
        return None
    return TraceStep.from_row(row)


class TraceRows:
    """The count of a journal's trace steps, and the sweep that bounds it (on the writer
    thread, inside the transaction that adds rows)."""

    def __init__(self, cap: int = JOURNAL_TRACE_ROWS) -> None:
        self.cap = cap
        self.rows = 0

    def open(self, conn: sqlite3.Connection) -> None:
        """Make the table (or its ``steps``) if the journal predates it; count its steps."""
        conn.execute(TRACE_SQL)
        if "steps" not in {row[1] for row in conn.execute("PRAGMA table_info(trace)")}:
            conn.execute("ALTER TABLE trace ADD COLUMN steps INTEGER NOT NULL DEFAULT 1")
        self.rows = conn.execute(_COUNT_SQL).fetchone()[0]

    def added(self, conn: sqlite3.Connection, count: int) -> None:
        self.rows += count
        if self.rows > self.cap:
            conn.execute(_OVER_SQL, (self.cap - self.cap // 10,))
            self.rows = conn.execute(_COUNT_SQL).fetchone()[0]


def read_steps(conn: sqlite3.Connection) -> list[TraceStep]:
    """Every step a journal holds, oldest first (none in a journal made before the table);
    a row changed behind sporeflow's back that holds no step is left out."""
    try:
        rows = conn.execute("SELECT step FROM trace ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # no such table: a journal no run has opened since
        return []
    steps: list[TraceStep] = []
    for (text,) in rows:
        try:
            row = json.loads(text)
        except NOT_JSON:
            continue
        if type(row) is list and row and type(row[0]) is list:  # a batch of steps
            steps.extend(step for step in map(_step_of, row) if step is not None)
        else:  # one step, as journals made before batches hold them
            step = TraceStep.from_row(row)
            if step is not None:
                steps.append(step)
    return steps

