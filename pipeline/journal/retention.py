"""How many dead letters a journal keeps, and for how long: :class:`DeadLetterRetention`.

Dead letters come from input (anyone may send a spore that is refused), so the table
they fill is bounded like any state: at most ``limits.max_journal_dead_letters``, none
older than ``limits.max_journal_dead_letter_age``. A sweep drops the oldest first. It
runs on the journal's writer thread: at open, after a commit that took the count past
the cap (down to nine tenths of it, so that sweeps are not one per letter), and, with
an age limit, at the first commit after a tenth of that age (at most an hour) passed.
Each sweep that drops letters counts them (``stats()["journal"]["dead_letters_dropped"]``)
and logs one warning saying how many and why: none is lost without a word.
``sporeflow dlq`` lists, replays and purges the letters kept.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sporeflow.config import Limits
from sporeflow.config.units import written_duration
from sporeflow.pipeline.journal.sqlite import logger, transaction

__all__ = ["DeadLetterRetention"]

_AGE_SWEEP_EVERY = 3600.0  # seconds, at most, between two sweeps by age
# Everything but the newest ``?`` letters; seq grows with every letter written.
_OVER_COUNT_SQL = ("DELETE FROM dead_letters WHERE seq <= (SELECT seq FROM dead_letters "
                   "ORDER BY seq DESC LIMIT 1 OFFSET ?)")
_TOO_OLD_SQL = "DELETE FROM dead_letters WHERE julianday(at) < julianday(?)"


class DeadLetterRetention:
    """The bounds of one journal's dead letters, and the sweeps that keep them."""

    def __init__(self, path: Path, limits: Limits, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.path = path
        self.max_count = limits.max_journal_dead_letters
        self.max_age = limits.max_journal_dead_letter_age or None
        self.dropped = 0  # by this journal object, since it was made
        self._clock = clock
        self._wall = wall
        self._next_age_sweep = 0.0  # the first sweep (at open) looks at ages

    def due(self, rows: int) -> bool:
        """True when a journal holding ``rows`` dead letters should sweep now."""
        return rows > self.max_count or (
            self.max_age is not None and self._clock() >= self._next_age_sweep)

    def sweep(self, conn: sqlite3.Connection) -> int:
        """Drop the dead letters past the bounds, oldest first; return how many are left."""
        too_old = over = 0
        with transaction(conn, self.path):
            if self.max_age is not None:
                cutoff = self._wall() - timedelta(seconds=self.max_age)
                too_old = conn.execute(_TOO_OLD_SQL, (cutoff.isoformat(),)).rowcount
                self._next_age_sweep = self._clock() + min(self.max_age / 10,
                                                           _AGE_SWEEP_EVERY)
            rows = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            if rows > self.max_count:
                keep = self.max_count - self.max_count // 10
                over = conn.execute(_OVER_COUNT_SQL, (keep,)).rowcount
                rows -= over
        if too_old or over:
            self.dropped += too_old + over
            logger.warning(
                "%s: dropped %d dead letters, the oldest first (%d older than "
                "limits.max_journal_dead_letter_age=%s, %d over "
                "limits.max_journal_dead_letters=%d); %d kept, %d dropped since open",
                self.path, too_old + over, too_old, _seconds(self.max_age), over,
                self.max_count, rows, self.dropped)
        return int(rows)


def _seconds(age: float | None) -> str:
    return "none" if age is None else written_duration(age)
