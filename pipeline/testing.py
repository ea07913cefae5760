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

Time is virtual: :class:`VirtualClock` is the organism's wall clock (``now``) and,
while the organism runs, the event loop's: both stand still until
:meth:`TestOrganism.advance`, which fires each timer due on the way at its own time, so
expiry, retry backoff and handler timeouts see the same time and never real time. An
hour of backoff is ``await t.advance(3600)``, not an hour. (The loop's ``time`` and
``call_at`` are replaced on the running loop, asyncio's own, and put back at the end;
``idle`` and ``request`` give up after real seconds, as the loop's clock stands still.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from sporeflow.config import (
    RequestTimeout,
    StageSpec,
    did_you_mean,
    load_organism,
    organism_from_dict,
)
from sporeflow.config.errors import UsageError
from sporeflow.config.model import BUILTIN_CHANNELS
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.organism import Organism
from sporeflow.pipeline.virtual_clock import ADVANCE_REAL_S, VirtualClock, within_real
from sporeflow.steps import Spore

__all__ = ["TestOrganism", "VirtualClock"]

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
        if spec.external:  # the memory backend's refusal would say to set a broker URL
            raise UsageError(
                f"TestOrganism runs in memory, where the external agents "
                f"{', '.join(sorted(spec.external))} (reached through a broker) cannot be: "
                f"test the organism's own agents with a dict that leaves them out, or run "
                f"it over RabbitMQ (Organism.from_file(..., backend='amqp://...'))")
        self.clock = VirtualClock(start, off_loop=lambda: self.organism.threads_running())
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
        self.clock.thaw()  # the drain's timeout is real time
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
        """Ask ``to_agent`` and return its response spore. ``timeout`` is virtual (as
        the organism's timers are) and, as a backstop, real time too."""
        asked = self.organism.request(to_agent, knowledge, timeout=timeout, sender=sender)
        with self.clock.helper():
            try:
                return await within_real(asked, timeout,
                                         lambda: self._unanswered(to_agent, timeout))
            except TimeoutError as exc:  # the error organism.request raises for it
                if isinstance(exc, RequestTimeout):
                    raise
                raise RequestTimeout(str(exc)) from None

    def _unanswered(self, to_agent: str, timeout: float) -> str:
        said = (f"TestOrganism.request({to_agent!r}): no response within {timeout:g}s of "
                f"real time")
        agent = self.organism.stats()["agents"].get(to_agent, {})
        if agent.get("handled") and not agent.get("queued") and not agent.get("in_flight"):
            # Found by a new user: the clock's hint sent them after the wrong thing.
            return (f"{said}; {to_agent!r} handled it and holds nothing now, and no response "
                    f"came back: a request is answered by what its handler returns (a "
                    f"dict), or by ctx.reply: did it return None?")
        return (f"{said}, and the virtual clock did not reach its timeout; move it with "
                f"`await t.advance(seconds)`")

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued or in flight; ``timeout`` (seconds of real time,
        as the virtual clock stands still) is a backstop against a test that would hang:
        past it, TimeoutError says what is still held."""
        with self.clock.helper():
            await within_real(self.organism.idle(), timeout,
                              lambda: self._still_held(timeout))

    def _still_held(self, timeout: float) -> str:
        stats = self.organism.stats()
        busy = [f"{name}: {agent['queued']} queued, {agent['in_flight']} running"
                for name, agent in stats["agents"].items()
                if agent["queued"] or agent["in_flight"]]
        where = "; ".join(busy) or "none queued or running: waiting for a retry or a timer"
        return (f"TestOrganism.idle(): {stats['totals']['held']} spore(s) still held after "
                f"{timeout:g}s of real time ({where}). Retries' backoff, timeouts and expiry "
                f"wait on the virtual clock: move it with `await t.advance(seconds)` first")

    async def advance(self, seconds: float | timedelta | str, *,
                      timeout: float = ADVANCE_REAL_S) -> None:
        """Move the virtual clock forward (seconds, a timedelta or ``"5s"``), each timer
        on the way firing at its own time (see :class:`VirtualClock`); ``timeout`` is a
        backstop in real seconds."""
        await self.clock.advance(seconds, timeout=timeout)

    def now(self) -> datetime:
        """The virtual clock's time."""
        return self.clock.now()

    # -- what happened ------------------------------------------------------------------

    def handled(self, agent: str) -> list[Spore]:
        """The spores ``agent``'s handler finished, in order."""
        return list(self._capture.finished.get(self._agent(agent), ()))

    def outputs(self, agent: str) -> list[Spore]:
        """What ``agent`` produced (returned, yielded or sent), in order."""
        return list(self._capture.produced.get(self._agent(agent), ()))

    def _agent(self, name: str) -> str:
        """``name``, an agent of the organism; a misspelt one would only ever give []
        (found by a new user): a UsageError (a ValueError too) naming the closest."""
        agents = self.organism.agents
        if name not in agents:
            raise UsageError(f"no agent {name!r} in organism {self.organism.spec.name!r}"
                             f"{did_you_mean(name, agents)}")
        return name

    def knowledge(self, agent: str) -> list[dict[str, Any]]:
        """The knowledge of :meth:`outputs`: what a test most often compares."""
        return [spore.knowledge for spore in self.outputs(agent)]

    def broadcasts(self, channel: str) -> list[Spore]:
        """Every spore broadcast on ``channel``, from agents and from the test."""
        channels = {*self.organism.spec.channels, *BUILTIN_CHANNELS,
                    *self.organism.wiring().table.channels}
        if channel not in channels:
            raise UsageError(f"no channel {channel!r} in organism {self.organism.spec.name!r}"
                             f"{did_you_mean(channel, channels)}")
        return list(self._capture.on_channel.get(channel, ()))

    @property
    def returned(self) -> list[Spore]:
        """Spores addressed to the outside world (to the test as a sender), in order."""
        return list(self.organism.outbox)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, with its reason and error."""
        return list(self.organism.dead_letters)
