"""Reading a file or standard input a chunk at a time, on a thread of its own.

A read of standard input (a pipe, a terminal) can block for ever, and a thread of the
loop's default executor would then hold ``asyncio.run`` at its exit; this reader's
thread is a daemon, reads only when asked (one outstanding read: the backpressure of
the source reaches the file), and ends at the first ask after :meth:`ChunkReader.close`.
A named pipe is opened on that thread too (its open waits for a writer); a close while
it waits ends the wait by opening the pipe as a writer with nothing to write.

It also counts the lines of a file before the place it starts at (:meth:`lines_before`),
so that a line read from the end of a file is named by its line in the file: the part
before is read through once, on this thread, a MiB at a time, so a huge file delays only
this source (lines appended meanwhile wait, none is lost), and a close stops the count.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["ChunkReader"]

_Ask = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
_COUNTED = 1 << 20  # bytes read at a time to count lines
_UNBLOCK_TRIES, _UNBLOCK_PAUSE = 1000, 0.01  # a closed reader's pipe: 10 s at the most


class ChunkReader:
    """``await read()`` gives the next line of ``stream`` (at most ``limit`` bytes of it;
    b"" at its end, for now if it is a file still growing) and whether the file was
    truncated and read again from its start before that line."""

    def __init__(self, stream: BinaryIO | None, limit: int, *, name: str, owned: bool,
                 path: Path | None = None, pipe: Path | None = None) -> None:
        # A named ``pipe`` (no ``stream``) is opened on this reader's thread, first thing:
        # its open waits for a writer, which must hold neither the start nor a stop.
        self._stream = stream
        self._pipe = pipe
        self._path = path  # followed: a file put in its place (rotated) is read next
        self._limit = limit
        self._owned = owned  # closed when the reader closes (a file; never stdin)
        # Each ask: where to hand what its work gives; None: close.
        self._asks: queue.SimpleQueue[_Ask | None] = queue.SimpleQueue()
        self._closing = threading.Event()  # seen by a count under way
        self._thread = threading.Thread(target=self._serve, name=f"sporeflow lines {name}",
                                        daemon=True)
        self._thread.start()

    async def read(self) -> tuple[bytes, bool]:
        line: tuple[bytes, bool] = await self._ask(self._next)
        return line

    async def lines_before(self) -> int:
        """How many lines of the file are before the place it is read from."""
        count: int = await self._ask(self._count_before)
        return count

    async def _ask(self, work: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._asks.put((loop, future, work))
        return await future

    def close(self) -> None:
        self._closing.set()
        self._asks.put(None)
        if self._pipe is not None and self._stream is None:  # perhaps waiting for a writer
            threading.Thread(target=self._unblock, args=(self._pipe,), daemon=True,
                             name=f"{self._thread.name} closing").start()

    def _unblock(self, pipe: Path) -> None:
        """End the wait of this reader's thread for a writer of ``pipe``: be one, with
        nothing to say, until that thread has ended (it may not be waiting yet)."""
        for _ in range(_UNBLOCK_TRIES):
            try:
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet (ENXIO), or the pipe is gone
                pass
            self._thread.join(_UNBLOCK_PAUSE)
            if not self._thread.is_alive():
                return

    def _serve(self) -> None:
        try:
            if self._pipe is not None:
                try:
                    self._stream = open(self._pipe, "rb")  # noqa: SIM115 (closed below)
                except Exception as exc:  # told to the first ask: the source fails with it
                    self._fail_asks(exc)
                    return
            while True:
                ask = self._asks.get()
                if ask is None:
                    return
                loop, future, work = ask
                try:
                    data: Any = work()
                except Exception as exc:  # handed to the source, which fails with it
                    data = exc
                try:
                    loop.call_soon_threadsafe(_settle, future, data)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
        finally:
            if self._owned and self._stream is not None:
                self._stream.close()

    def _fail_asks(self, error: Exception) -> None:
        while (ask := self._asks.get()) is not None:
            loop, future, _ = ask
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    @property
    def _file(self) -> BinaryIO:
        assert self._stream is not None, "opened first, on this thread"
        return self._stream

    def _next(self) -> tuple[bytes, bool]:
        line = self._file.readline(self._limit)
        if not line and self._owned and self._file.seekable():
            # At the end of a file: if it was truncated (rewritten), start over; if
            # another file took its path (rotated: renamed, or deleted, and made again),
            # go on with that one from its start, as `tail -F` does.
            held = os.fstat(self._file.fileno())
            if self._replaced(held):
                assert self._path is not None
                replacement = open(self._path, "rb")  # noqa: SIM115  (closed as the old one)
                self._file.close()
                self._stream = replacement
                return self._file.readline(self._limit), True
            if held.st_size < self._file.tell():
                self._file.seek(0)
                return self._file.readline(self._limit), True
        return line, False

    def _replaced(self, held: os.stat_result) -> bool:
        """Whether the followed path now names another file than the one read (a path
        with no file yet, between a rotation's rename and its new file: not yet)."""
        if self._path is None:
            return False
        try:
            now = os.stat(self._path)
        except OSError:
            return False
        return (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev)

    def _count_before(self) -> int:
        if not (self._owned and self._file.seekable()):
            return 0
        fd, end, count, at = self._file.fileno(), self._file.tell(), 0, 0
        while at < end and not self._closing.is_set():
            chunk = os.pread(fd, min(_COUNTED, end - at), at)  # leaves the place as it is
            if not chunk:  # truncated meanwhile: the reader starts over anyway
                break
            count, at = count + chunk.count(b"\n"), at + len(chunk)
        return count


def _settle(future: asyncio.Future[Any], data: Any) -> None:
    if future.done():  # the read was cancelled (the source stopped)
        return
    if isinstance(data, BaseException):
        future.set_exception(data)
    else:
        future.set_result(data)
