"""The journal's handler calls, marked as running while their handler runs, and the
suspects, run again or dead-lettered ``poison``: the run-time half of
:mod:`sporeflow.pipeline.journal.inflight` (which holds the rule, the marks' file and
the counting of a death at start)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sporeflow.config.model import DEFAULT_MAX_CRASHES
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.journal.inflight import (
    CrashCount,
    InFlightMarks,
    limits_of,
    poison_error,
)
from sporeflow.pipeline.journal.sqlite import JournalError, logger
from sporeflow.steps import Spore

__all__ = ["HandlerMarking", "InvocationWrapper", "Invoke", "Shape", "SuspectSink"]

Invoke = Callable[[Spore, int], Any]
Shape = Callable[[Any, Spore], Any]


class InvocationWrapper(Protocol):
    """What the agent builder takes to wrap each handler call (``agents.builder``)."""

    def wrap(self, agent: str, invoke: Invoke, shape: Shape) -> tuple[Invoke, Shape]: ...


class SuspectSink(Protocol):
    """What the marking needs of its journal: a suspect past its limit is dead-lettered
    there, one below it is written there before it runs again."""

    def dead(self, letter: DeadLetter) -> None: ...

    async def flush(self) -> None: ...


class HandlerMarking:
    """The marks of one journal's handler calls (see ``journal.inflight``).

    At open, the journal counts the last run's death with :meth:`died` and
    :attr:`limit`, hands the count to :meth:`counted` and calls :meth:`start`; then
    :meth:`settled` as spores finish, and :meth:`close` at the end.
    """

    def __init__(self, path: Path, journal: SuspectSink,
                 fail: Callable[[BaseException], None]) -> None:
        self.path = path  # the journal's file
        self.poisoned: list[DeadLetter] = []  # dead-lettered 'poison' during this run
        self.limit: Callable[[str | None], int] = limits_of({}, DEFAULT_MAX_CRASHES)
        self._journal = journal
        self._fail = fail  # the journal's fail stop: the marks are the journal's
        self._marks = InFlightMarks(Path(f"{path}-inflight"))
        self._suspects: dict[str, tuple[int, str | None]] = {}

    # -- at open and close ---------------------------------------------------------------

    def reset(self, agents: Mapping[str, object]) -> None:
        """A new run: nothing poisoned yet; ``agents`` (their ``max_crashes``; 3 for an
        agent it lacks) set the limits."""
        self.poisoned = []
        self.limit = limits_of(agents, DEFAULT_MAX_CRASHES)

    def died(self) -> tuple[str, dict[str, str]] | None:
        """What a run that died left (``InFlightMarks.previous``; on the writer thread)."""
        try:
            return self._marks.previous()
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot read {self._marks.path}: "
                               f"{exc.strerror}") from None

    def counted(self, counted: CrashCount) -> None:
        """The death is counted: keep what became poison, and the suspects."""
        self.poisoned, self._suspects = counted.poisoned, counted.suspects

    def start(self) -> None:
        """This run's marks; the last run's are counted (on the writer thread)."""
        try:
            self._marks.start()
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot write {self._marks.path}: "
                               f"{exc.strerror}") from None

    def close(self, *, remove: bool) -> None:
        """Stop marking; ``remove``: an orderly end, nothing was running."""
        self._marks.close(remove=remove)

    # -- while the organism runs ---------------------------------------------------------

    def settled(self, spore_id: str, agent: str | None) -> None:
        """``agent``'s run of ``spore_id`` stops counting as running (None: a spore no
        handler ran, refused or resolved: nothing of it was marked)."""
        if agent is None or not self._marks.running:
            return
        try:
            self._marks.settled(spore_id, agent)
        except OSError as exc:  # the marks are the journal's: it fails stop
            self._marks.close(remove=False)
            self._fail(exc)

    def wrapping(self, inner: InvocationWrapper | None = None) -> InvocationWrapper:
        """A wrapper of handler calls (for the agent builder) that marks each spore as
        running before its handler starts, around ``inner`` (tracing), if any."""
        return _Marking(self, inner)

    def marked(self, agent: str, invoke: Invoke) -> Invoke:
        """``invoke`` of ``agent``, marking each spore before its handler starts."""

        def invoke_marked(spore: Spore, attempt: int) -> Any:
            if self._suspects and spore.id in self._suspects:
                return self._run_suspect(agent, invoke, spore, attempt)
            self._mark(agent, spore.id)
            return self._until_returned(invoke(spore, attempt), spore.id, agent)

        return invoke_marked

    def _mark(self, agent: str, spore_id: str) -> None:
        """``agent``'s handler starts on ``spore_id`` now."""
        marks = self._marks
        if marks.active:
            try:
                marks.mark(agent, spore_id)
            except OSError as exc:  # the marks are the journal's: it fails stop
                marks.close(remove=False)
                self._fail(exc)

    async def _until_returned(self, call: Any, spore_id: str, agent: str) -> Any:
        """Await a handler's call: the spore stops counting as running once the handler
        returns or raises, unless what it returned still runs the handler's code (an
        async iterable: then once the spore is settled)."""
        streams = False
        try:
            result = await call
            streams = hasattr(result, "__aiter__")
            return result
        finally:
            if not streams:
                self.settled(spore_id, agent)

    async def _run_suspect(self, agent: str, invoke: Invoke, spore: Spore,
                           attempt: int) -> Any:
        """A spore that crashed the process before it was in the journal: past its limit,
        dead-letter it without running it; else write it to the journal, then run it."""
        count, _ = self._suspects.pop(spore.id)
        if count >= self.limit(agent):
            letter = DeadLetter(spore, Reason.POISON, poison_error(count, agent), agent, count)
            logger.warning("%s: spore %s dead-lettered %r: %s", self.path, spore.id,
                           Reason.POISON.value, letter.error)
            self.poisoned.append(letter)
            self._journal.dead(letter)
            return None  # not run: nothing comes of it
        with contextlib.suppress(JournalError):  # failed: the run is stopping anyway
            await self._journal.flush()
        # Marked only now that its handler starts: a death during the flush is not its.
        self._mark(agent, spore.id)
        return await self._until_returned(invoke(spore, attempt), spore.id, agent)


class _Marking:
    """:meth:`HandlerMarking.wrapping`: marks around ``inner``'s wrapping (tracing's span)."""

    def __init__(self, marking: HandlerMarking, inner: InvocationWrapper | None) -> None:
        self._marking = marking
        self._inner = inner

    def wrap(self, agent: str, invoke: Invoke, shape: Shape) -> tuple[Invoke, Shape]:
        if self._inner is not None:
            invoke, shape = self._inner.wrap(agent, invoke, shape)
        return self._marking.marked(agent, invoke), shape
