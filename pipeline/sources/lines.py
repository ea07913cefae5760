"""A ``lines`` source: each line of a file (or of standard input) is a spore.

The knowledge is ``{"line": TEXT, "number": N}`` (N counts from 1, blank lines
included), or with ``json: true`` the line's JSON object itself (blank lines skipped).
A line that is no JSON object, or longer than ``limits.max_spore_bytes``, is a dead
letter naming ``FILE:N``, and reading goes on. With ``follow: true`` the source waits at
the end of the file for lines appended (a part of a line waits for its newline; a file
truncated, or another put in its place (rotated), is read again from its start);
standard input ends at its end.

Each start reads a file from ``start_at``: its beginning, or its end (the default when
following: a log read again at each restart would be handled twice). Either way N is the
line's number in the file: from the end, the lines before are counted first
(``ChunkReader.lines_before``); a file truncated counts from 1 again. Standard input is
always read from its start.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

from sporeflow.config import LimitExceeded, SporeError
from sporeflow.config.sources import LinesSource
from sporeflow.pipeline.sources.linereader import ChunkReader
from sporeflow.pipeline.sources.port import Feed, Source

__all__ = ["Lines"]

_SHOWN = 200  # characters of a refused line kept with its dead letter


class Lines(Source):
    def __init__(self, feed: Feed, spec: LinesSource, max_bytes: int) -> None:
        super().__init__(feed)
        self.spec = spec
        self.max_bytes = max_bytes
        self.where = str(spec.path) if spec.path is not None else "<stdin>"
        self._reader: ChunkReader | None = None
        self._mid_line = False  # started at the end, inside a line still being written

    async def open(self) -> None:
        if self.spec.path is None:
            if sys.stdin is None:  # a process started without one (pythonw, some services)
                raise OSError("this process has no standard input to read lines from")
            stream, owned = sys.stdin.buffer, False
        elif _is_pipe(path := self.spec.path):  # its open waits for a writer: the reader's
            stream, owned = None, True  # thread opens it, not the start
        else:
            # The reader closes it; opened off the loop, as any file may be slow to open.
            stream, self._mid_line = await asyncio.to_thread(
                _open_at, path, end=self.spec.start_at == "end")
            owned = True
        pipe = self.spec.path if stream is None else None
        self._reader = ChunkReader(stream, self.max_bytes + 1, name=self.feed.spec.name,
                                   owned=owned, path=self.spec.path if self.spec.follow else None,
                                   pipe=pipe)

    async def run(self) -> None:
        assert self._reader is not None, "opened first"
        reader, follow = self._reader, self.spec.follow and self.spec.path is not None
        pending, too_long = b"", False
        try:
            number = await reader.lines_before()
            while True:
                chunk, rewound = await reader.read()
                if rewound:  # the file was truncated or rotated: its lines count from 1 again
                    await self._last(number, pending, too_long)
                    number, pending, too_long, self._mid_line = 0, b"", False, False
                if not chunk:
                    if not follow:
                        await self._last(number, pending, too_long)
                        return
                    await asyncio.sleep(self.spec.poll)  # as tail -f: look again later
                    continue
                if not chunk.endswith(b"\n"):  # a part of a line: the rest is to come
                    pending += chunk
                    if len(pending) > self.max_bytes:
                        pending, too_long = pending[:_SHOWN], True
                    continue
                number += 1
                if self._mid_line:  # the rest of a line begun before the start: not ours
                    self._mid_line, pending, too_long = False, b"", False
                    continue
                line, pending = pending + chunk, b""
                long_line, too_long = too_long or len(line) > self.max_bytes + 1, False
                await self._line(number, line, too_long=long_line)
        finally:
            reader.close()

    async def _last(self, number: int, pending: bytes, too_long: bool) -> None:
        """The file's last line, which no newline ended (at its end, or as it was
        truncated or rotated): a line all the same, unless begun before the start."""
        if (pending or too_long) and not self._mid_line:
            await self._line(number + 1, pending, too_long=too_long)

    async def _line(self, number: int, raw: bytes, *, too_long: bool) -> None:
        self.stats.counts["lines"] += 1
        text = raw.decode("utf-8", "replace").rstrip("\n").removesuffix("\r")
        where = f"{self.where}:{number}"
        if too_long:
            self._bad(number, text, LimitExceeded(
                f"{where}: the line is longer than limits.max_spore_bytes "
                f"({self.max_bytes} bytes); split it, or raise the limit"))
            return
        if not self.spec.json:
            await self.feed.send({"line": text, "number": number})
            return
        if not text.strip():
            return
        try:
            knowledge: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self._bad(number, text, SporeError(f"{where}: the line is not JSON ({exc}); "
                                               f"write one JSON object per line"))
            return
        if not isinstance(knowledge, dict):
            self._bad(number, text, SporeError(
                f"{where}: the line is a JSON {type(knowledge).__name__}, not an object; "
                f"write one JSON object per line"))
            return
        await self.feed.send(knowledge)

    def _bad(self, number: int, text: str, error: SporeError) -> None:
        """The line holds no spore: a dead letter with the line as found (its start)."""
        self.stats.counts["bad_lines"] += 1
        self.feed.refuse(self.feed.spore({"line": text[:_SHOWN], "number": number}), error)


def _is_pipe(path: Path) -> bool:
    """Whether ``path`` is a named pipe (a missing one raises: the source fails at start)."""
    return stat.S_ISFIFO(os.stat(path).st_mode)


def _open_at(path: Path, *, end: bool) -> tuple[BinaryIO, bool]:
    """``path`` opened at its beginning or its end; True if that end is inside a line."""
    stream = open(path, "rb")  # the reader closes it
    if not end:
        return stream, False
    try:
        size = stream.seek(0, os.SEEK_END)
        if size == 0:
            return stream, False
        stream.seek(size - 1)
        mid_line = stream.read(1) != b"\n"
        return stream, mid_line
    except BaseException:
        stream.close()
        raise
