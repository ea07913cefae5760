"""Group commit: the operations the journal queues, folded into what one transaction
writes, and that one write."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sporeflow.pipeline.journal.lineage import TRACE_INSERT_SQL, TraceRows, batch_row
from sporeflow.pipeline.journal.sqlite import (
    DEAD_SQL,
    DELETE_SQL,
    INSERT_SQL,
    letter_row,
    spores_json,
    to_json,
    transaction,
)
from sporeflow.steps import Spore

__all__ = ["DEAD", "DELETE", "INSERT", "META", "TRACE", "Batch", "Fanout", "fold",
           "write_batch"]

INSERT, DELETE, DEAD, META, TRACE = range(5)  # the writer's operations


@dataclass(slots=True)
class Batch:
    """Operations folded into what one transaction writes."""

    inserts: dict[str, Spore] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    letters: list[list[Any]] = field(default_factory=list)
    meta: list[tuple[str, str]] = field(default_factory=list)
    boots: list[str] = field(default_factory=list)  # boot spore ids noted in meta
    trace: list[list[list[Any]]] = field(default_factory=list)  # batches of settlements


class Fanout(dict[str, int]):
    """Broadcasts delivered to several agents: spore id -> its deliveries not settled yet.
    A broadcast is finished in the journal only after its last delivery."""

    def count(self, spore_id: str, targets: int) -> None:
        """Broadcast ``spore_id`` went to ``targets`` agents: it is done after the last."""
        self[spore_id] = self.get(spore_id, 0) + targets

    def last(self, spore_id: str) -> bool:
        """A delivery of ``spore_id`` is settled: True if it was its last (or only) one."""
        if not self:
            return True
        left = self.get(spore_id)
        if left is None:
            return True
        if left > 1:
            self[spore_id] = left - 1
            return False
        del self[spore_id]
        return True


def fold(ops: list[tuple[Any, ...]], boots: Mapping[str, str]) -> Batch:
    """What ``ops`` leave to write, in order: a spore admitted and finished among
    them never touches the disk. ``boots``: boot spore id -> its agent, until recorded."""
    batch = Batch()
    inserts, deletes = batch.inserts, batch.deletes
    for op in ops:
        kind = op[0]
        if kind == INSERT:
            inserts[op[1].id] = op[1]
            if boots and op[1].id in boots:
                batch.meta.append((f"booted:{boots[op[1].id]}", "1"))
                batch.boots.append(op[1].id)
        elif kind == DELETE:
            if inserts.pop(op[1], None) is None:
                deletes.append(op[1])
        elif kind == TRACE:  # a batch of steps (see lineage.TraceBuffer)
            batch.trace.append(batch_row(op[1]))
        elif kind == DEAD:
            letter = op[1]
            batch.letters.append(letter_row(letter))
            if op[2] and inserts.pop(letter.spore.id, None) is None:
                deletes.append(letter.spore.id)
        else:
            batch.meta.append((op[1], op[2]))
    return batch


def write_batch(conn: sqlite3.Connection, path: Path, batch: Batch,
                trace_rows: TraceRows | None = None) -> tuple[int, int]:
    """Write ``batch`` in one transaction; return the rows removed and added (of pending
    spores). ``trace_rows`` counts and bounds the trace rows written."""
    # Each statement takes its whole batch as one JSON array: one step of SQLite, so
    # the writer thread takes the GIL back once per statement, not once per row.
    with transaction(conn, path):
        removed = added = 0
        if batch.deletes:
            removed = conn.execute(DELETE_SQL, (to_json(batch.deletes),)).rowcount
        if batch.inserts:
            added = conn.execute(INSERT_SQL,
                                 (spores_json(batch.inserts.values()),)).rowcount
        if batch.letters:
            conn.execute(DEAD_SQL, (to_json(batch.letters),))
        if batch.trace:
            conn.executemany(TRACE_INSERT_SQL, [(to_json(rows), len(rows))
                                                for rows in batch.trace])
            if trace_rows is not None:
                trace_rows.added(conn, sum(map(len, batch.trace)))
        if batch.meta:
            conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             batch.meta)
    return removed, added
