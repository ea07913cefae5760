"""The journal's limit: a plain SQLite loop with the journal's settings (WAL,
`synchronous=NORMAL`), one JSON row written per spore and deleted once handled,
committed in groups of 256 rows (each group deletes the one before). What any journal
keeping every spore on disk until it is handled can reach on this machine; the rate of
committing rows one by one is the limit of a sender that awaits each spore's commit.

Only the workloads whose spores the journal keeps are defined: W1, W4 and W5 (every
hop of the reply chain is a spore).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from time import perf_counter

from bench.outcome import Outcome, WorkloadRun
from bench.workloads import Workload

GROUP = 256


def rows_per_second(total: int, group: int = GROUP) -> Outcome:
    """Write and then delete ``total`` rows, ``group`` rows per commit."""
    with tempfile.TemporaryDirectory(prefix="sporeflow-bench-sqlite-") as folder:
        return _rows_per_second(Path(folder) / "limit.db", total, group)


def _rows_per_second(path: Path, total: int, group: int) -> Outcome:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE spores (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    before: list[tuple[str]] = []
    start = perf_counter()
    for first in range(0, total, group):
        rows = [(f"s-{n}", json.dumps({"id": f"s-{n}", "to_agent": "sink",
                                       "knowledge": {"i": n}}))
                for n in range(first, min(total, first + group))]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO spores (id, body) VALUES (?, ?)", rows)
        conn.executemany("DELETE FROM spores WHERE id = ?", before)
        conn.execute("COMMIT")
        before = [(row[0],) for row in rows]
    conn.executemany("DELETE FROM spores WHERE id = ?", before)
    elapsed = perf_counter() - start
    conn.close()
    return Outcome(total, elapsed)


def spores(w: Workload) -> Outcome:
    return rows_per_second(w.count * w.width)


RUNS: dict[str, WorkloadRun] = {"W1": spores, "W4": spores, "W5": spores}
