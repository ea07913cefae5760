"""Which spores were being handled when the process died, and poison: a spore whose
handler keeps killing the process is dead-lettered instead of replayed forever.

The rule (RabbitMQ's delivery-limit, per agent: ``agents.X.max_crashes``, default 3):

- Before a handler starts on a spore, the line ``+agent<TAB>id`` is appended to
  ``JOURNAL-inflight``; once the handler returns or raises, ``-agent<TAB>id`` is (for a
  handler whose result is an async iterable, once the spore is settled): a broadcast
  runs one spore in several agents, and one finishing must not clear another still
  running (a ``-id`` of an older file clears them all). The file is mapped
  into memory (``mmap``, shared): a line is a copy into the operating system's page
  cache, no system call, so a process killed at any point, stuck in a handler
  included, leaves every line it appended, and the last one at worst cut short. No
  fsync: power cuts are not what poison is about. The file is allocated ahead
  (``FILE_SIZE`` bytes, NUL after the last line), so a full disk is an ``OSError``
  when it is made, never a fault on a write; past it, the file is made anew with
  what still runs. An orderly stop deletes the file.
- A start that finds the file knows the last run died. In one transaction, before any
  replay, it adds one crash to each spore whose handler was running then (a ``+``
  without its ``-``). A spore with ``max_crashes`` crashes or more (the limit of the
  agent that was running it) among the unfinished ones is moved to the dead letters
  with reason ``poison`` and not replayed; the others that crashed are replayed after
  the rest of their priority. An innocent spore that was running at ``max_crashes``
  deaths is dead-lettered too, as RabbitMQ counts every delivery a dead consumer
  held: tests that kill the process again and again at the same point of its work
  need a higher ``max_crashes``.
- A spore may be running before it is in the journal (a reply is written in the next
  group commit, and its handler may start first). Its crash is counted by its id, which
  a reply keeps when its parent is handled again (see ``store``; a boot spore keeps
  its id too); such a *suspect* is written to the journal before its handler runs
  again, so that a later start can dead-letter it. A suspect that has reached its
  limit already is not run again: it is dead-lettered where its handler would start
  (its lane counts it handled, with nothing returned). Spores sent with ``ctx.send``
  get new ids when their sender runs again: a death they cause is counted on their
  sender only if that was still running.
- The counts live in the journal's ``crashes`` table; a count ends when its spore is
  finished, and a poison letter moved back by ``sporeflow dlq replay`` starts afresh.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.privatefiles import open_private
from sporeflow.pipeline.journal.sqlite import (
    CRASHES_SQL,
    DEAD_SQL,
    letter_row,
    stored_spore,
    to_json,
)

__all__ = ["CrashCount", "InFlightMarks", "count_crashes", "limits_of", "poison_error"]

HEADER = "sporeflow-inflight 1 "
FILE_SIZE = 1024 * 1024  # made anew with what still runs once full


class InFlightMarks:
    """The ``JOURNAL-inflight`` file of one journal: see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = ""  # this run's, in the file's first line
        # "agent<TAB>spore id" -> (spore id, agent): marked and not settled
        self.running: dict[str, tuple[str, str]] = {}
        self._map: mmap.mmap | None = None
        self._end = 0  # where the next line goes
        self._size = 0  # of the file

    @property
    def active(self) -> bool:
        return self._map is not None

    def previous(self) -> tuple[str, dict[str, str]] | None:
        """What a run that died left: its token and ``{spore id: agent}`` of the spores
        being handled then; None when the last run stopped in order (or never ran)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        # What was appended ends at the first NUL: a line cut short by the death, even
        # one copied out of order, ends there too and is left out below.
        lines = data.partition(b"\0")[0].decode("utf-8", errors="replace").split("\n")
        token = lines[0].removeprefix(HEADER) if lines[0].startswith(HEADER) else ""
        running: dict[str, tuple[str, str]] = {}
        for line in lines[1:-1]:  # the last is empty, or cut short by the death
            kind, mark = line[:1], line[1:]
            if kind == "+":
                agent, _, spore_id = mark.partition("\t")
                if spore_id:
                    running[mark] = (spore_id, agent)
            elif kind == "-":
                if "\t" in mark:
                    running.pop(mark, None)
                else:  # an older file's "-id": every agent's run of it
                    for key in [k for k, (spore_id, _) in running.items() if spore_id == mark]:
                        del running[key]
        return token, dict(running.values())

    def start(self) -> None:
        """Begin this run's file (replacing the last run's)."""
        self.token = secrets.token_hex(8)
        self.running.clear()
        self._rewrite()

    def mark(self, agent: str, spore_id: str) -> None:
        """A handler of ``agent`` starts on ``spore_id`` (raises OSError if unwritable)."""
        if self._map is None or not spore_id.isprintable() or "\t" in spore_id:
            return  # an id with a line break could forge marks: it is not marked
        mark = f"{agent}\t{spore_id}"
        self._append(f"+{mark}\n".encode())
        self.running[mark] = (spore_id, agent)

    def settled(self, spore_id: str, agent: str) -> None:
        """``agent``'s run of ``spore_id`` is settled (raises OSError if unwritable)."""
        mark = f"{agent}\t{spore_id}"
        if self.running.pop(mark, None) is not None and self._map is not None:
            self._append(f"-{mark}\n".encode())

    def _append(self, data: bytes) -> None:
        end = self._end + len(data)
        if end > self._size:  # full: anew, with what still runs and room for this line
            self._rewrite(room=len(data))
            end = self._end + len(data)
        mapped = self._map
        if mapped is None:
            return
        try:
            mapped[self._end:end] = data
        except ValueError:  # closed meanwhile by the writer thread: the run is ending
            return
        self._end = end

    def _rewrite(self, room: int = 0) -> None:
        """Write the file anew: the header and what runs now, with ``room`` bytes free at
        least; replace the old at once."""
        fresh = Path(f"{self.path}.new")
        data = (f"{HEADER}{self.token}\n" + "".join(
            f"+{mark}\n" for mark in self.running)).encode()
        size = max(FILE_SIZE, 2 * (len(data) + room))  # room for lines after what runs now
        fd = open_private(fresh, os.O_RDWR | os.O_TRUNC)
        try:
            os.posix_fallocate(fd, 0, size)  # the blocks now: no fault on a full disk later
            mapped = mmap.mmap(fd, size)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(fresh)
            raise
        finally:
            os.close(fd)  # the map holds the file
        try:
            mapped[:len(data)] = data
            os.replace(fresh, self.path)
        except BaseException:
            mapped.close()
            raise
        old, self._map, self._end, self._size = self._map, mapped, len(data), size
        if old is not None:
            old.close()

    def close(self, *, remove: bool) -> None:
        """Stop marking; ``remove``: the run ended in order, forget its marks."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.running.clear()


@dataclass(frozen=True, slots=True)
class CrashCount:
    """What counting a death changed: the spores now poison (moved to the dead letters),
    and the suspects (counted, not in the journal yet) with their count and agent."""

    poisoned: list[DeadLetter]
    suspects: dict[str, tuple[int, str | None]]


def count_crashes(conn: sqlite3.Connection, path: Path, died: tuple[str, dict[str, str]] | None,
                  limit: Callable[[str | None], int]) -> CrashCount:
    """Inside an open transaction: count the death ``died`` left (see the module
    docstring), dead-letter the spores that reached ``limit(agent)``, and return them
    with the suspects. ``died`` is None when the last run stopped in order."""
    conn.execute(CRASHES_SQL)
    marked: dict[str, str] = {}
    if died is not None:
        token, running = died
        counted = conn.execute("SELECT value FROM meta WHERE key = 'inflight'").fetchone()
        if token and counted is not None and counted[0] == token:
            running = {}  # this death was counted already (the file outlived its count)
        marked = running
        if marked:
            conn.execute(
                "INSERT INTO crashes (id, count, agent) SELECT value ->> 0, 1, value ->> 1 "
                "FROM json_each(?) WHERE true "
                "ON CONFLICT (id) DO UPDATE SET count = count + 1, agent = excluded.agent",
                (to_json(list(marked.items())),))
        if token:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('inflight', ?)",
                         (token,))
    # A count ends with its spore; a suspect's lasts until the next start.
    conn.execute("DELETE FROM crashes WHERE id NOT IN (SELECT id FROM pending) "
                 "AND id NOT IN (SELECT value FROM json_each(?))", (to_json(list(marked)),))
    poisoned: list[DeadLetter] = []
    rows = conn.execute("SELECT c.id, c.count, c.agent, p.spore FROM crashes c "
                        "JOIN pending p ON p.id = c.id ORDER BY p.seq").fetchall()
    for key, count, agent, text in rows:
        if count >= limit(agent):
            poisoned.append(DeadLetter(stored_spore(text, key), Reason.POISON,
                                       poison_error(count, agent), agent, count))
    if poisoned:
        ids = to_json([letter.spore.id for letter in poisoned])
        conn.execute(DEAD_SQL, (to_json([letter_row(letter) for letter in poisoned]),))
        conn.execute("DELETE FROM pending WHERE id IN (SELECT value FROM json_each(?))", (ids,))
        conn.execute("DELETE FROM crashes WHERE id IN (SELECT value FROM json_each(?))", (ids,))
    suspects = {row[0]: (row[1], row[2]) for row in conn.execute(
        "SELECT id, count, agent FROM crashes WHERE id NOT IN (SELECT id FROM pending)")}
    return CrashCount(poisoned, suspects)


def poison_error(count: int, agent: str | None) -> str:
    who = f"agent {agent!r}" if agent else "its handler"
    return (f"PoisonError: the process died {count} times while {who} handled this spore; "
            f"it is not replayed again (agents.{agent or 'X'}.max_crashes)")


def limits_of(agents: Mapping[str, object], default: int) -> Callable[[str | None], int]:
    """``limit(agent)``: the agent's ``max_crashes``, or ``default`` for an agent the
    organism no longer has."""

    def limit(agent: str | None) -> int:
        spec = agents.get(agent) if agent is not None else None
        value = getattr(spec, "max_crashes", None)
        return value if isinstance(value, int) else default

    return limit
