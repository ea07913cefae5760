"""A ``folder`` source: each new file in a folder whose name matches ``pattern`` is a spore.

The folder is listed every ``poll`` seconds (``os.scandir``, on a worker thread): this
works the same on every file system, network and container mounts included, where
change notifications may never come, and needs no extra package. A new file is sent
once its size and modification time held still from one listing to the next, so a file
still being written is not announced half done; files there at start are sent at once
with ``existing: true`` and never otherwise. The knowledge is ``{"path", "name",
"size"}``. Only the names now in the folder are remembered: a file removed and made
again is new again.

A symbolic link is never sent (it may name any file, outside the folder too: whoever may
drop files in the folder would have the handler read it); it is said once, in the log.
A folder gone while the organism runs (renamed by a clean-up, a mount lost) is said
once and listed again every ``poll`` until it is back; what was sent is remembered
meanwhile. Only a folder missing at start fails the source.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os

from sporeflow.config.sources import FolderSource
from sporeflow.pipeline.sources.port import Feed, Source

__all__ = ["Folder"]

Listing = dict[str, tuple[int, int]]  # name -> (size, modification time in ns)


class Folder(Source):
    def __init__(self, feed: Feed, spec: FolderSource, logger: logging.Logger) -> None:
        super().__init__(feed)
        self.spec = spec
        self._logger = logger
        self._first: Listing = {}
        self._links: set[str] = set()  # the links in the folder now, said once each
        self._gone = False  # whether the folder was missing at the last listing

    async def open(self) -> None:
        self._first = await self._listing()  # a missing folder fails here

    async def run(self) -> None:
        spec = self.spec
        listing, self._first = self._first, {}
        sent: set[str] = set()  # the names sent (or there at start), still in the folder
        if spec.existing:
            for name in _in_order(listing):
                await self._send(name, listing[name])
                sent.add(name)
        else:
            sent.update(listing)
        waiting: Listing = {}  # new names, with what they were at the last listing
        while True:
            await asyncio.sleep(spec.poll)
            try:
                listing = await self._listing()
            except (FileNotFoundError, NotADirectoryError) as exc:
                self._say_gone(exc)
                continue  # what was sent stays remembered, for when it is back
            sent &= listing.keys()
            settled = [name for name, seen in listing.items()
                       if name not in sent and waiting.get(name) == seen]
            waiting = {name: seen for name, seen in listing.items() if name not in sent}
            for name in _in_order({name: listing[name] for name in settled}):
                await self._send(name, listing[name])
                sent.add(name)
                waiting.pop(name, None)

    async def _listing(self) -> Listing:
        try:
            listing, links = await asyncio.to_thread(self._list)
        finally:
            self.stats.counts["listings"] += 1
        if self._gone:
            self._gone = False
            self._logger.warning("source %r: folder %s is back; listing it again",
                                 self.spec.name, self.spec.path)
        for name in sorted(links - self._links):
            self._logger.warning(
                "source %r: %s in %s is a symbolic link: not sent (a link may name any "
                "file, outside the folder too); move or copy the file itself in",
                self.spec.name, name, self.spec.path)
        self._links = links
        return listing

    def _say_gone(self, error: OSError) -> None:
        if not self._gone:
            self._gone = True
            self._logger.warning("source %r: folder %s is gone (%s); listing it again every "
                                 "%ss until it is back", self.spec.name, self.spec.path,
                                 error.strerror, self.spec.poll)

    def _list(self) -> tuple[Listing, set[str]]:
        found: Listing = {}
        links: set[str] = set()
        with os.scandir(self.spec.path) as entries:
            for entry in entries:
                if not fnmatch.fnmatchcase(entry.name, self.spec.pattern):
                    continue
                try:
                    if entry.is_symlink():
                        links.add(entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        found[entry.name] = (info.st_size, info.st_mtime_ns)
                except OSError:  # gone since it was listed
                    continue
        return found, links

    async def _send(self, name: str, seen: tuple[int, int]) -> None:
        self.stats.counts["files"] += 1
        # spec.path is absolute: the loader joined it to the organism file's folder.
        await self.feed.send({"path": str(self.spec.path / name), "name": name,
                              "size": seen[0]})


def _in_order(listing: Listing) -> list[str]:
    """Oldest first (by modification time, then name): the order files came in."""
    return sorted(listing, key=lambda name: (listing[name][1], name))
