"""Reading a file or standard input a chunk at a time, on a thread of its own.

A read of standard input (a pipe, a terminal) can block for ever, and a thread of the
loop's default executor would then hold ``asyncio.run`` at its exit; this reader's
thread is a daemon, reads only when asked (one outstanding read: the backpressure of
the source reaches the file), and ends at the first ask after :meth:`ChunkReader.close`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from typing import BinaryIO

__all__ = ["ChunkReader"]

_Ask = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bytes]"]


class ChunkReader:
    """``await read()`` gives the next line of ``stream`` (at most ``limit`` bytes of it;
    b"" at its end, for now if it is a file still growing)."""

    def __init__(self, stream: BinaryIO, limit: int, *, name: str, owned: bool) -> None:
        self._stream = stream
        self._limit = limit
        self._owned = owned  # closed when the reader closes (a file; never stdin)
        # Each ask: where to hand the next line; None: close.
        self._asks: queue.SimpleQueue[_Ask | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"sporeflow lines {name}",
                                        daemon=True)
        self._thread.start()

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._asks.put((loop, future))
        return await future

    def close(self) -> None:
        self._asks.put(None)

    def _serve(self) -> None:
        try:
            while True:
                ask = self._asks.get()
                if ask is None:
                    return
                loop, future = ask
                try:
                    data: bytes | BaseException = self._next()
                except Exception as exc:  # handed to the source, which fails with it
                    data = exc
                try:
                    loop.call_soon_threadsafe(_settle, future, data)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
        finally:
            if self._owned:
                self._stream.close()

    def _next(self) -> bytes:
        line = self._stream.readline(self._limit)
        if not line and self._owned and self._stream.seekable():
            # At the end of a file: if it was truncated (rewritten), start over.
            if os.fstat(self._stream.fileno()).st_size < self._stream.tell():
                self._stream.seek(0)
                line = self._stream.readline(self._limit)
        return line


def _settle(future: asyncio.Future[bytes], data: bytes | BaseException) -> None:
    if future.done():  # the read was cancelled (the source stopped)
        return
    if isinstance(data, BaseException):
        future.set_exception(data)
    else:
        future.set_result(data)
