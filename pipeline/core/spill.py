"""Spores paged out to disk while too many are held in memory (see ``Intake.feed``).

Handler output never waits (a handler waiting on the queue it feeds could deadlock
the organism), so when the organism holds ``limits.max_in_memory`` spores, further
output is written here, first in first out, and read back as memory frees up, much
as RabbitMQ pages queues out under memory pressure.

The file is an anonymous temporary file (unlinked at once, mode 0600), private to
this process: records are length-prefixed pickles of spores, which are checked
again by the chain when they are read back, like any fed spore. A spore that cannot
be pickled (knowledge holding a live object) is kept in memory instead; the chain
refuses it soon after.
"""

from __future__ import annotations

import pickle
import struct
import tempfile
from collections.abc import Iterable
from typing import IO

from sporeflow.steps import Spore

__all__ = ["SpillFile"]

_LENGTH = struct.Struct("<I")


class SpillFile:
    """A FIFO of spores on disk; nothing is created until the first spore is spilled."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._read_at = 0
        self._write_at = 0
        self.count = 0
        self.spilled_total = 0  # spores ever paged out, for stats

    def __len__(self) -> int:
        return self.count

    def push(self, spores: Iterable[Spore]) -> list[Spore]:
        """Page ``spores`` out; return those that could not be (kept in memory)."""
        records: list[bytes] = []
        kept: list[Spore] = []
        for spore in spores:
            try:
                record = pickle.dumps(spore, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # a live object in its knowledge: the chain refuses it
                kept.append(spore)
                continue
            records.append(_LENGTH.pack(len(record)))
            records.append(record)
        if records:
            file = self._open()
            file.seek(self._write_at)
            data = b"".join(records)
            file.write(data)
            self._write_at += len(data)
            added = len(records) // 2
            self.count += added
            self.spilled_total += added
        return kept

    def pop(self, limit: int) -> list[Spore]:
        """Read back up to ``limit`` spores, oldest first."""
        if not self.count or limit <= 0:
            return []
        file = self._open()
        file.flush()
        file.seek(self._read_at)
        spores: list[Spore] = []
        read = file.read
        while len(spores) < limit and self.count:
            (size,) = _LENGTH.unpack(read(_LENGTH.size))
            spores.append(pickle.loads(read(size)))
            self.count -= 1
        self._read_at = file.tell()
        if not self.count:  # empty: start the file over
            file.seek(0)
            file.truncate()
            self._read_at = self._write_at = 0
        return spores

    def clear(self) -> list[Spore]:
        """Take every spore out (a stop dead-letters them)."""
        return self.pop(self.count)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._read_at = self._write_at = self.count = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="sporeflow-spill-")
        return self._file
