"""Watch an organism's file and handler modules; reload the organism after each burst of edits.

    file_changes (watchfiles) ─▶ watch_changes: keep the organism's files ─▶ organism.reload

:func:`watch_changes` takes the change events as an argument, so tests feed it
their own; :func:`file_changes` is the real source, on watchfiles (the ``watch``
extra). Bursts coalesce twice: watchfiles groups the writes of one save (a batch
ends after ``step_ms`` without changes, or after ``debounce_ms``), and whatever
changes while a reload runs makes one more reload, not one per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterable, AsyncIterator, Callable, Set
from pathlib import Path
from typing import Any, Protocol

from sporeflow.config import OrganismSpec
from sporeflow.config.extras import missing_extra
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.pipeline.reload.sources import handler_files

__all__ = [
    "Changes",
    "ReloadTriggers",
    "file_changes",
    "require_watchfiles",
    "watch_changes",
    "watched_files",
]


class Reloadable(Protocol):
    """What the watcher needs: the organism's spec, its reload and its logger."""

    spec: OrganismSpec
    logger: logging.Logger

    async def reload(self, path: str | Path | None = None) -> ReloadReport: ...


# What watchfiles yields: a set of (watchfiles.Change, path) pairs.
Changes = Set[tuple[Any, str]]


def watched_files(organism: Reloadable) -> frozenset[Path]:
    """The files whose edits reload ``organism``: its organism file and the source files
    of its handler modules that live under the organism's folder."""
    spec = organism.spec
    files = set(handler_files(spec).values())
    if spec.source is not None:
        files.add(spec.source.resolve())
    return frozenset(files)


async def watch_changes(
    organism: Reloadable,
    changes: AsyncIterable[Changes],
    *,
    on_report: Callable[[ReloadReport], None] | None = None,
) -> int:
    """Reload ``organism`` after each burst of ``changes`` to its files, until ``changes``
    ends; return how many reloads ran.

    Changes to other files are ignored. Changes that arrive while a reload runs are
    folded into one more reload. Each report goes to ``on_report``.
    """
    due = asyncio.Event()

    async def take() -> None:
        async for batch in changes:
            if _touches(batch, watched_files(organism)):  # a reload may name other files
                due.set()

    taking = asyncio.ensure_future(take())
    reloads = 0
    try:
        while True:
            waiting = asyncio.ensure_future(due.wait())
            try:
                await asyncio.wait([waiting, taking], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if due.is_set():
                due.clear()
                report = await organism.reload()
                reloads += 1
                if on_report is not None:
                    on_report(report)
            elif taking.done():
                taking.result()  # the source failed: say so
                return reloads
    finally:
        taking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await taking


def _touches(batch: Changes, files: frozenset[Path]) -> bool:
    return any(Path(path).resolve() in files for _, path in batch)


def require_watchfiles() -> Callable[..., AsyncIterator[Changes]]:
    """watchfiles' ``awatch``, or a :class:`SporeflowError` saying how to install it."""
    try:
        from watchfiles import awatch
    except ImportError:
        raise missing_extra("watching files", "watchfiles", "watch") from None
    return awatch


async def file_changes(
    organism: Reloadable,
    *,
    debounce_ms: int = 1600,
    step_ms: int = 50,
    on_ready: Callable[[frozenset[Path]], None] | None = None,
    ready_ms: int = 500,
) -> AsyncIterator[Changes]:
    """Yield batches of changes to :func:`watched_files`, with watchfiles.

    The folders of the files are watched, not the files, so that editors that save
    by replacing a file are seen; a reload that names a module in another folder
    starts the watch again on the new folders. ``on_ready`` is called with the files
    once the watch is in place (within ``ready_ms``).
    """
    awatch = require_watchfiles()

    def ours(_change: Any, path: str) -> bool:
        return Path(path) in watched_files(organism)  # the files of the spec now running

    while True:
        files = watched_files(organism)
        folders = {file.parent for file in files}
        # yield_on_timeout: an empty batch after ready_ms tells that the watch is in place.
        batches = awatch(*sorted(map(str, folders)), watch_filter=ours, recursive=False,
                         debounce=debounce_ms, step=step_ms, rust_timeout=ready_ms,
                         yield_on_timeout=True)
        async with contextlib.aclosing(batches):  # type: ignore[type-var]
            async for batch in batches:
                if on_ready is not None:
                    on_ready(files)
                    on_ready = None
                if batch:
                    yield batch
                if {file.parent for file in watched_files(organism)} != folders:
                    break  # a reload named a module in another folder: watch that one too


class ReloadTriggers:
    """What reloads an organism run from the command line: SIGHUP (unless ``hangup`` is
    false: on a terminal it means the terminal went away) and, with ``watch``, edits to
    its files. Each report goes to ``echo`` as lines of text.

    ``async with ReloadTriggers(organism, watch=True, echo=print):`` around the run.
    """

    def __init__(self, organism: Reloadable, *, watch: bool,
                 echo: Callable[[str], None], hangup: bool = True) -> None:
        self.organism = organism
        self.watch = watch
        self.hangup = hangup
        self.echo = echo
        self._tasks: set[asyncio.Task[Any]] = set()
        self._signal: int | None = None
        self._started = False
        self._hung_up = False  # a SIGHUP came before start(): reload once started

    def listen(self) -> None:
        """Take SIGHUP from now on (its default would end the process), reloading once
        :meth:`start` is called; call it on the running loop, before the organism starts."""
        hangup = getattr(signal, "SIGHUP", None) if self.hangup else None  # not on Windows
        if hangup is not None and self._signal is None:
            asyncio.get_running_loop().add_signal_handler(hangup, self._on_hangup)
            self._signal = hangup

    @property
    def pending(self) -> bool:
        """A SIGHUP came before :meth:`start`: the organism reloads once it runs."""
        return self._hung_up

    def start(self) -> None:
        """Reload on SIGHUP (one that came early now) and, with ``watch``, on edits; call
        it on the running loop, once the organism runs."""
        if self.watch:
            require_watchfiles()
        self.listen()
        self._started = True
        if self._hung_up:
            self._on_hangup()
        if self.watch:
            source = file_changes(self.organism, on_ready=self._on_ready)
            self._spawn(watch_changes(self.organism, source, on_report=self.report))

    async def aclose(self) -> None:
        """Stop reloading: remove the signal handler, end the watch and running reloads."""
        if self._signal is not None:
            asyncio.get_running_loop().remove_signal_handler(self._signal)
            self._signal = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ReloadTriggers:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def report(self, report: ReloadReport) -> None:
        """Echo an applied ``report`` in one line (the reloader logs it at INFO, below the
        default level). A refused one is the reloader's ERROR record already, with its
        problems: echoed only where that record is not shown, never twice."""
        if report.ok or not self.organism.logger.isEnabledFor(logging.ERROR):
            self.echo(f"reload: {report.summary()}")

    def _on_hangup(self) -> None:
        if not self._started:
            self._hung_up = True
            return
        self._hung_up = False
        self._spawn(self._reload())

    async def _reload(self) -> None:
        self.report(await self.organism.reload())

    def _on_ready(self, files: frozenset[Path]) -> None:
        self.echo(f"watching {len(files)} file(s) for changes: "
                  f"{', '.join(sorted(file.name for file in files))}")

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Reloading is a convenience: the organism runs on without it.
            self.echo(f"reloading stopped: {type(task.exception()).__name__}: "
                      f"{task.exception()}")
