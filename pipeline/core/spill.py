"""Spores paged out to disk while too many are held in memory (see ``Intake.feed``).

Handler output never waits (a handler waiting on the queue it feeds could deadlock
the organism), so when the organism holds ``limits.max_in_memory`` spores, further
output is written here, first in first out, and read back as memory frees up, much
as RabbitMQ pages queues out under memory pressure.

The file is an anonymous temporary file (unlinked at once, mode 0600), private to
this process. A record is one push: the pickled list of the spores' fields as tuples
(``spore_values``: no per-spore dict, rebuilt without checks, since the values are
the spores' own) and their holders' marks (``mark_of``: a spore read back is another
object, known by its mark); the chain checks them again when they are read back,
like any fed spore. A spore that cannot be pickled (knowledge holding a live object)
is kept in memory instead; the chain refuses it soon after. One that pickles but does
not unpickle (an exception whose ``__init__`` takes two arguments) is found only when
its record is read back: that record is read again with a stand-in for every class no
spore of ours holds (``_Standin``), so its other spores come back as written and that
one is refused as not JSON, naming the class, as it is in memory. The common path pays
nothing for it.

When the file cannot be written (its disk full, ``TMPDIR`` gone or read-only), what
would have been paged out is kept in memory too: memory goes past the limit, but no
spore is lost and no handler fails for it. That is told once, as an ERROR naming the
cause, and once more when writing works again.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import pickle
import struct
import tempfile
from collections import deque
from io import BytesIO
from typing import IO, Any

from sporeflow.steps import Spore, SporeType, mark_of, spore_from_values, spore_values

__all__ = ["SpillFile"]

_LENGTH = struct.Struct("<I")
_RECORD = 1024  # spores a record holds at most
_logger = logging.getLogger(__name__)


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _spores_of(record: bytes) -> list[Spore]:
    try:
        values, marks = pickle.loads(record)
    except Exception:  # noqa: BLE001 - whatever an object's own unpickling raises
        try:  # its enums (JSON to the chain) kept, each other class a stand-in
            values, marks = _Lenient(BytesIO(record), keep=_JSON_LIKE).load()
        except Exception:  # noqa: BLE001 - one of those failed too: every class stands in
            values, marks = _Lenient(BytesIO(record), keep=()).load()
    return list(map(spore_from_values, values, marks))


# What a spore's own fields pickle by reference (a ZoneInfo through getattr): every
# other class is a stand-in when a record must be read leniently.
_OURS = frozenset({(SporeType.__module__, SporeType.__qualname__), ("builtins", "getattr")})
_OUR_MODULES = frozenset({"datetime", "zoneinfo"})
# Classes whose values the chain takes as JSON (an IntEnum, a str subclass): a record read
# leniently keeps them first; if one of them is what failed, they stand in too.
_JSON_LIKE: tuple[type, ...] = (enum.Enum, int, float, str, list, dict, tuple)


class _AnyAttribute(type):
    def __getattr__(cls, name: str) -> Any:
        return cls  # getattr(stand-in, "_unpickle") and the like: the stand-in again


class _Standin(metaclass=_AnyAttribute):
    """What a record read leniently holds in place of an object of another class: no
    JSON, so the chain refuses its spore, naming the class it stands for."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Standin:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _Lenient(pickle.Unpickler):
    def __init__(self, file: BytesIO, *, keep: tuple[type, ...]) -> None:
        super().__init__(file)
        self.keep = keep  # foreign classes kept as they are, not stood in for

    def find_class(self, module: str, name: str) -> Any:
        if module in _OUR_MODULES or (module, name) in _OURS:
            return super().find_class(module, name)
        with contextlib.suppress(Exception):  # an enum or a kind of JSON value is JSON
            found = super().find_class(module, name)  # to the chain: kept as written
            if self.keep and isinstance(found, type) and issubclass(found, self.keep):
                return found
        return _AnyAttribute(name.rpartition(".")[2], (_Standin,), {"__module__": module})


class SpillFile:
    """A FIFO of spores on disk; nothing is created until the first spore is spilled."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._read_at = 0
        self._write_at = 0
        self._ready: deque[Spore] = deque()  # read back from the file, not yet taken
        self.count = 0  # spores paged out and not yet taken, in the file or read back
        self.spilled_total = 0  # spores ever paged out, for stats
        self.unwritable: OSError | None = None  # why the last write failed, until one works
        self.kept_in_memory = 0  # spores kept in memory since then

    def __len__(self) -> int:
        return self.count

    def push(self, spores: list[Spore]) -> list[Spore]:
        """Page ``spores`` out; return those that could not be (kept in memory). A long
        list goes in records of ``_RECORD`` spores: one pickle of it all would hold its
        bytes whole beside it (a handler's 200,000 replies: 114 MiB more at the peak)."""
        kept: list[Spore] = []
        for start in range(0, len(spores), _RECORD):
            kept.extend(self._push_record(spores[start:start + _RECORD]))
        return kept

    def _push_record(self, spores: list[Spore]) -> list[Spore]:
        values = [spore_values(spore) for spore in spores]
        marks = [mark_of(spore) for spore in spores]
        kept: list[Spore] = []
        try:
            record = pickle.dumps((values, marks), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # some live object in there: keep those spores in memory
            picklable = [_picklable(value) for value in values]
            kept = [spore for spore, ok in zip(spores, picklable, strict=True) if not ok]
            values = [value for value, ok in zip(values, picklable, strict=True) if ok]
            marks = [mark for mark, ok in zip(marks, picklable, strict=True) if ok]
            if not values:
                return kept
            record = pickle.dumps((values, marks), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            file = self._open()
            file.seek(self._write_at)
            file.write(_LENGTH.pack(len(record)))
            file.write(record)
            file.flush()
        except OSError as exc:  # a record cut short is overwritten by the next one
            self._cannot_write(exc, len(spores))
            return spores
        if self.unwritable is not None:
            _logger.warning("paging spores out works again: %d kept in memory meanwhile "
                            "are read as usual", self.kept_in_memory)
            self.unwritable = None
        self._write_at = file.tell()
        self.count += len(values)
        self.spilled_total += len(values)
        return kept

    def _cannot_write(self, error: OSError, count: int) -> None:
        if self.unwritable is None:
            self.kept_in_memory = 0
            _logger.error(
                "cannot page spores out to a temporary file in %s (%s): they are kept in "
                "memory, past limits.max_in_memory, until writing works again; free space "
                "there or set TMPDIR to a folder with room", tempfile.gettempdir(),
                error.strerror or error)
        self.unwritable = error
        self.kept_in_memory += count

    def pop(self, limit: int) -> list[Spore]:
        """Read back up to ``limit`` spores, oldest first."""
        ready = self._ready
        if len(ready) < limit and self._read_at < self._write_at:
            file = self._open()
            file.seek(self._read_at)
            while len(ready) < limit and self._read_at < self._write_at:
                (size,) = _LENGTH.unpack(file.read(_LENGTH.size))
                ready.extend(_spores_of(file.read(size)))
                self._read_at += _LENGTH.size + size
            if self._read_at == self._write_at:  # all read: start the file over
                file.seek(0)
                file.truncate()
                self._read_at = self._write_at = 0
        taken = [ready.popleft() for _ in range(min(limit, len(ready)))]
        self.count -= len(taken)
        return taken

    def peek(self) -> list[Spore]:
        """Every spore paged out, oldest first, left where it is (for a snapshot)."""
        spores = list(self._ready)
        if self._read_at < self._write_at:
            file = self._open()
            file.seek(self._read_at)
            while file.tell() < self._write_at:
                (size,) = _LENGTH.unpack(file.read(_LENGTH.size))
                spores.extend(_spores_of(file.read(size)))
        return spores

    def clear(self) -> list[Spore]:
        """Take every spore out (a stop dead-letters them)."""
        return self.pop(self.count)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._read_at = self._write_at = self.count = 0
        self._ready.clear()

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="sporeflow-spill-")
        return self._file
