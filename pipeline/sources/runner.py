"""The organism's declared sources, run together: :class:`Sources`.

The organism starts them once its run is open and its agents started, and stops them
first at a stop, right after it stops admitting outside spores and before the drain:
a source between two sends ends at once; one waiting for admission is refused by the
closed organism (nothing is admitted half); one whose spore was admitted finishes that
send. A source that fails, at its start or later, is logged and shown in ``stats()``
(``state: failed`` with the error); the organism and the other sources go on.

Before anything starts, :meth:`Sources.prepare` reads what the sources need from the
environment (an http source's token): a variable unset fails the organism's start,
naming it and the source, and what was read is masked as the organism's secrets.
:meth:`Sources.ended` waits for the sources that end by themselves (``run --until-idle``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from sporeflow.config import ConfigError, OrganismSpec, Problem
from sporeflow.config.secrets import mask_in_logs, read_secret_env, secrets_of
from sporeflow.config.sources import (
    FolderSource,
    HttpSource,
    LinesSource,
    SourceSpec,
    TimerSource,
)
from sporeflow.pipeline.sources.folder import Folder
from sporeflow.pipeline.sources.lines import Lines
from sporeflow.pipeline.sources.port import (
    Feed,
    Source,
    SourcePort,
    SourceStats,
    Stopped,
    runs_here,
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
        self._ending: set[asyncio.Task[None]] = set()  # the tasks of sources that end
        self._prepared: tuple[OrganismSpec, Mapping[str, SourceSpec]] | None = None

    def prepare(self, spec: OrganismSpec) -> None:
        """Read the secrets the sources of ``spec`` need (the http tokens) and mask them;
        raise :class:`ConfigError` naming the variable and the source if one is unset."""
        ready: dict[str, SourceSpec] = {}
        for name, declared in spec.sources.items():
            if isinstance(declared, HttpSource) and declared.token_env is not None:
                try:
                    token = read_secret_env(declared.token_env)
                except LookupError as exc:  # "... is not set" or "... is empty"
                    message = (f"{str(exc).split(';')[0]}: set it to the bearer token the "
                               f"http source {name!r} asks its callers for; it cannot "
                               f"start without it")
                    at = declared.token_env_at or Problem(
                        str(spec.source or spec.name), 0, 0, f"sources.{name}.token_env", "")
                    raise ConfigError([dataclasses.replace(at, message=message)]) from None
                declared = dataclasses.replace(declared, token=token)
                secrets = secrets_of(declared)  # the token and its variable's text
                self._port.masker.add(*secrets)
                mask_in_logs(self._logger, *secrets)
            ready[name] = declared
        self._prepared = (spec, ready)

    async def start(self, spec: OrganismSpec) -> None:
        """Open and run every source of ``spec`` (:meth:`prepare` first, unless it was);
        one that cannot open is failed, alone."""
        if self._prepared is None or self._prepared[0] is not spec:
            self.prepare(spec)
        assert self._prepared is not None
        ready, self._prepared = self._prepared[1], None
        self._stats = {}
        for name, declared in ready.items():
            stats = self._stats[name] = SourceStats(declared.kind, target_of(declared))
            if not runs_here(declared, spec, self._port.hosted):
                stats.state = "not hosted here"  # another process runs it
                continue
            source = self._make(declared, Feed(self._port, declared, stats), spec)
            try:
                await source.open()
            except Exception as exc:
                self._failed(name, stats, exc)
                continue
            task = asyncio.create_task(self._run(name, source), name=f"sporeflow source {name}")
            self._running[name] = (source, task)
            if declared.ends:
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)

    async def ended(self) -> None:
        """Return once every running source that ends by itself has ended (done, failed
        or stopped): a ``lines`` source at the end of its file or of standard input, a
        timer with a ``count``. Sources that never end (http, folder, follow, a timer
        without count) are not waited for; this waits for nothing before a start."""
        while self._ending:  # a restart meanwhile adds its own
            await asyncio.wait(set(self._ending))

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
        # The traceback at DEBUG only: the line names the error (found by a new user).
        self._logger.error("source %r (%s) failed: %s; the organism goes on without it",
                           name, stats.kind, stats.error,
                           exc_info=error if self._logger.isEnabledFor(logging.DEBUG) else None)

    def _make(self, declared: SourceSpec, feed: Feed, spec: OrganismSpec) -> Source:
        if isinstance(declared, HttpSource):
            # aiohttp only for an organism that serves HTTP: some 15 MiB and 0.15 s of
            # start-up that every other organism, and the CLI, would pay for nothing.
            from sporeflow.pipeline.sources.http_ingress import HttpIngress

            return HttpIngress(feed, declared, organism=spec.name,
                               max_bytes=spec.limits.max_spore_bytes, logger=self._logger)
        if isinstance(declared, TimerSource):
            return Timer(feed, declared)
        if isinstance(declared, LinesSource):
            return Lines(feed, declared, spec.limits.max_spore_bytes)
        assert isinstance(declared, FolderSource)
        return Folder(feed, declared, self._logger)
