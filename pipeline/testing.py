"""Test your own organisms: an in-memory organism, a virtual clock, captured outputs.

In the spirit of FastStream's ``TestBroker``::

    from sporeflow.testing import TestOrganism

    async def test_greeter_greets() -> None:
        async with TestOrganism("organism.yaml") as t:
            await t.send("greeter", {"name": "Ada"})
            await t.idle()
            assert t.knowledge("greeter") == [{"text": "hello, Ada"}]
            assert t.dead_letters == []

The organism runs in this process on the memory backend, without its journal, whatever
its file says. Nothing happens that the test does not send: no boot spores and no
declared sources unless ``boot=True`` (so an http source's token need not be set).

Time is virtual: :class:`VirtualClock` is the organism's wall clock (``now``), frozen
until :meth:`TestOrganism.advance`, and, while the organism runs, the event loop's clock
moves with it, so expiry, retry backoff and handler timeouts see the same time. An
hour of backoff is ``await t.advance(3600)``, not an hour. (The loop's ``time`` is
replaced on the running loop, asyncio's own, and put back at the end.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from sporeflow.config import (
    OrganismStateError,
    StageSpec,
    load_organism,
    organism_from_dict,
)
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.organism import Organism
from sporeflow.steps import Spore

__all__ = ["TestOrganism", "VirtualClock"]


class VirtualClock:
    """Wall-clock time that moves only by :meth:`advance`, and the event loop's clock
    moved by as much while :meth:`attached` to it.

    ``start`` (default: the real time when it is made) is what :meth:`now` reads first.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError(f"start must be timezone-aware, got {start!r}; "
                             f"use datetime(..., tzinfo=UTC)")
        self._start = start or datetime.now(UTC)
        self.offset = 0.0  # seconds advanced in all
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> datetime:
        """The virtual wall-clock time (timezone-aware UTC): an organism's ``now``."""
        return self._start + timedelta(seconds=self.offset)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move ``loop``'s clock with this one: its timers fire when :meth:`advance`
        passes them. Before the organism starts, which reads the loop's clock."""
        if self._loop is not None or "time" in vars(loop):
            raise OrganismStateError("the event loop runs on a virtual clock already; "
                                     "one TestOrganism at a time per loop")
        real = loop.time
        try:
            loop.time = lambda: real() + self.offset  # type: ignore[method-assign]
        except AttributeError:  # a loop in C (uvloop): its clock cannot be moved
            raise OrganismStateError(
                f"the virtual clock needs asyncio's own event loop, not "
                f"{type(loop).__name__}; run the test on asyncio's") from None
        self._loop = loop

    def detach(self) -> None:
        """Give the loop its own clock back (what was advanced stays advanced here)."""
        if self._loop is not None:
            del self._loop.time
            self._loop = None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``; what came due (expiry, a retry's backoff, a
        timeout) happens as the loop runs next: follow with ``await t.idle()``."""
        if seconds < 0:
            raise ValueError(f"time only moves forward; got advance({seconds!r})")
        self.offset += seconds
        await asyncio.sleep(0)


class _Capture(LedgerHook):
    """What each agent handled and produced, and what went out on each channel."""

    def __init__(self) -> None:
        self.finished: dict[str, list[Spore]] = {}
        self.produced: dict[str, list[Spore]] = {}
        self.on_channel: dict[str, list[Spore]] = {}

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        if agent is not None:  # sent by a handler (ctx.send, ctx.broadcast...)
            self.produced.setdefault(agent, []).extend(spores)
        self._broadcast(spores)

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        self.finished.setdefault(agent, []).append(spore)
        self.produced.setdefault(agent, []).extend(replies)
        self._broadcast(replies)

    def _broadcast(self, spores: Sequence[Spore]) -> None:
        for spore in spores:
            if spore.to_agent is None:
                self.on_channel.setdefault(spore.channel, []).append(spore)


class TestOrganism:
    """An organism under test: ``async with TestOrganism(file_or_dict) as t:``.

    ``source`` is an organism file's path, or a dict shaped like one (handlers may be
    callables; ``base_dir`` is where its handler modules and schemas are found).
    ``start`` is the virtual clock's first reading; ``stages`` are extra chain stages.
    """

    __test__ = False  # a helper, not a test class for pytest to collect

    def __init__(self, source: str | Path | Mapping[str, Any], *,
                 base_dir: str | Path = ".", start: datetime | None = None,
                 boot: bool = False, stages: Sequence[StageSpec] = ()) -> None:
        spec = (organism_from_dict(source, base_dir=base_dir) if isinstance(source, Mapping)
                else load_organism(source))
        self.clock = VirtualClock(start)
        self.organism = Organism(dataclasses.replace(spec, journal=None), now=self.clock.now,
                                 backend="memory", stages=stages)
        self._boot = boot
        self._capture = _Capture()
        self.organism.add_hook(self._capture)

    async def __aenter__(self) -> TestOrganism:
        self.clock.attach(asyncio.get_running_loop())
        try:
            await self.organism.start(boot=self._boot)
        except BaseException:
            self.clock.detach()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        try:
            await self.organism.stop(drain_timeout=5.0)
        finally:
            self.clock.detach()

    # -- acting -------------------------------------------------------------------------

    async def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "test",
                   **options: Any) -> Spore:
        """Send ``knowledge`` to ``to_agent`` (options as :meth:`Organism.send`)."""
        return await self.organism.send(to_agent, knowledge, sender=sender, **options)

    async def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                        sender: str = "test", **options: Any) -> Spore:
        """Broadcast ``knowledge`` on ``channel``."""
        return await self.organism.broadcast(knowledge, channel=channel, sender=sender,
                                             **options)

    async def request(self, to_agent: str, knowledge: dict[str, Any], *,
                      timeout: float = 10.0, sender: str = "test") -> Spore:
        """Ask ``to_agent`` and return its response spore."""
        return await self.organism.request(to_agent, knowledge, timeout=timeout,
                                           sender=sender)

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued or in flight; ``timeout`` (seconds of real time) is
        a backstop against a test that would hang: past it, TimeoutError says what is
        still held."""
        try:
            await asyncio.wait_for(self.organism.idle(), timeout)
        except TimeoutError:
            raise TimeoutError(self._still_held(timeout)) from None

    def _still_held(self, timeout: float) -> str:
        stats = self.organism.stats()
        busy = [f"{name}: {agent['queued']} queued, {agent['in_flight']} running"
                for name, agent in stats["agents"].items()
                if agent["queued"] or agent["in_flight"]]
        where = "; ".join(busy) or "none queued or running: waiting for a retry or a timer"
        return (f"TestOrganism.idle(): {stats['totals']['held']} spore(s) still held after "
                f"{timeout:g}s of real time ({where}). Retries' backoff, timeouts and expiry "
                f"wait on the virtual clock: move it with `await t.advance(seconds)` first")

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (see :class:`VirtualClock`)."""
        await self.clock.advance(seconds)

    def now(self) -> datetime:
        """The virtual clock's time."""
        return self.clock.now()

    # -- what happened ------------------------------------------------------------------

    def handled(self, agent: str) -> list[Spore]:
        """The spores ``agent``'s handler finished, in order."""
        return list(self._capture.finished.get(agent, ()))

    def outputs(self, agent: str) -> list[Spore]:
        """What ``agent`` produced (returned, yielded or sent), in order."""
        return list(self._capture.produced.get(agent, ()))

    def knowledge(self, agent: str) -> list[dict[str, Any]]:
        """The knowledge of :meth:`outputs`: what a test most often compares."""
        return [spore.knowledge for spore in self.outputs(agent)]

    def broadcasts(self, channel: str) -> list[Spore]:
        """Every spore broadcast on ``channel``, from agents and from the test."""
        return list(self._capture.on_channel.get(channel, ()))

    @property
    def returned(self) -> list[Spore]:
        """Spores addressed to the outside world (to the test as a sender), in order."""
        return list(self.organism.outbox)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, with its reason and error."""
        return list(self.organism.dead_letters)
