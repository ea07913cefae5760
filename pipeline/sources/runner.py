"""The organism's declared sources, run together: :class:`Sources`.

The organism starts them once its run is open and its agents started, and stops them
first at a stop, right after it stops admitting outside spores and before the drain:
a source between two sends ends at once; one waiting for admission is refused by the
closed organism (nothing is admitted half); one whose spore was admitted finishes that
send. A source that fails, at its start or later, is logged and shown in ``stats()``
(``state: failed`` with the error); the organism and the other sources go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sporeflow.config import OrganismSpec
from sporeflow.config.sources import (
    FolderSource,
    HttpSource,
    LinesSource,
    SourceSpec,
    TimerSource,
)
from sporeflow.pipeline.sources.folder import Folder
from sporeflow.pipeline.sources.http_ingress import HttpIngress
from sporeflow.pipeline.sources.lines import Lines
from sporeflow.pipeline.sources.port import (
    Feed,
    Source,
    SourcePort,
    SourceStats,
    Stopped,
    target_of,
)
from sporeflow.pipeline.sources.timer import Timer

__all__ = ["Sources"]

_STOP_WAIT = 5.0  # seconds a stop waits for its sources (the HTTP one's grace is less)


class Sources:
    """Start, stop and count the sources an :class:`OrganismSpec` declares."""

    def __init__(self, port: SourcePort, logger: logging.Logger) -> None:
        self._port = port
        self._logger = logger
        self._running: dict[str, tuple[Source, asyncio.Task[None]]] = {}
        self._stats: dict[str, SourceStats] = {}

    async def start(self, spec: OrganismSpec) -> None:
        """Open and run every source of ``spec``; one that cannot open is failed, alone."""
        self._stats = {}
        for name, declared in spec.sources.items():
            stats = self._stats[name] = SourceStats(declared.kind, target_of(declared))
            source = self._make(declared, Feed(self._port, declared, stats), spec)
            try:
                await source.open()
            except Exception as exc:
                self._failed(name, stats, exc)
                continue
            task = asyncio.create_task(self._run(name, source), name=f"sporeflow source {name}")
            self._running[name] = (source, task)

    async def stop(self) -> None:
        """Stop every source (see the module docstring); return once all ended."""
        running, self._running = self._running, {}
        for source, task in running.values():
            source.halt(task)
        tasks = {task: name for name, (_, task) in running.items()}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=_STOP_WAIT)
        for task in late:  # a send that hangs (a journal, a broker): stop waiting for it
            self._logger.warning("source %r did not stop within %ss; cancelled",
                                 tasks[task], _STOP_WAIT)
            task.cancel()
        if late:
            await asyncio.wait(late)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Each source's counts and state, by name."""
        return {name: stats.as_dict() for name, stats in self._stats.items()}

    def addresses(self) -> Mapping[str, str]:
        """Where each running http source listens (``http://host:port``), by name."""
        return {name: stats.address for name, stats in self._stats.items()
                if stats.address is not None and name in self._running}

    async def _run(self, name: str, source: Source) -> None:
        stats = source.stats
        stats.state = "running"
        try:
            await source.run()
        except Stopped:
            stats.state = "stopped"
        except asyncio.CancelledError:
            stats.state = "stopped"
            raise
        except Exception as exc:
            self._failed(name, stats, exc)
        else:
            stats.state = "stopped" if source.feed.stopping else "done"

    def _failed(self, name: str, stats: SourceStats, error: Exception) -> None:
        stats.state = "failed"
        stats.error = self._port.masker.mask(f"{type(error).__name__}: {error}")
        self._logger.error("source %r (%s) failed: %s; the organism goes on without it",
                           name, stats.kind, stats.error, exc_info=error)

    def _make(self, declared: SourceSpec, feed: Feed, spec: OrganismSpec) -> Source:
        if isinstance(declared, HttpSource):
            return HttpIngress(feed, declared, organism=spec.name,
                               max_bytes=spec.limits.max_spore_bytes, logger=self._logger)
        if isinstance(declared, TimerSource):
            return Timer(feed, declared)
        if isinstance(declared, LinesSource):
            return Lines(feed, declared, spec.limits.max_spore_bytes)
        assert isinstance(declared, FolderSource)
        return Folder(feed, declared)
