"""What a source sees of the organism (:class:`SourcePort`), and how it sends (:class:`Feed`).

A source is an outside sender: its spores enter through the organism's public API
(``submit``, ``request``), pass every stage, and wait for admission like any other.
It sends one spore at a time and reads its next input only once the last was admitted:
that is its backpressure. What the organism refuses of a source's spores is a dead letter
(``refuse``), since a source has no caller to tell.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sporeflow.config import DeliveryError, OrganismSpec, OrganismStateError, SporeError
from sporeflow.config.secrets import SecretFilter
from sporeflow.config.sources import SourceSpec
from sporeflow.pipeline.core.wiring import WiringSnapshot
from sporeflow.steps import DEFAULT_CHANNEL, Spore, SporeType, new_spore

__all__ = ["Feed", "Source", "SourcePort", "SourceStats", "Stopped", "runs_here",
           "target_of"]


class SourcePort(Protocol):
    """The organism's public API, as far as its sources use it (an ``Organism`` is one)."""

    now: Callable[[], datetime]

    @property
    def masker(self) -> SecretFilter:
        """Hides the organism's secrets in what a source shows (answers, stats); a
        secret a source reads at its start (a token) is added to it."""

    @property
    def state(self) -> str: ...

    def submit(self, spore: Spore, *, admit_within: float | None = None,
               whole: bool = False) -> Coroutine[Any, Any, Spore]: ...

    async def request(self, to_agent: str, knowledge: dict[str, Any], *, timeout: float = ...,
                      sender: str = ..., priority: int = ...,
                      admit_within: float | None = None) -> Spore: ...

    def refuse(self, spore: Spore, error: Exception) -> None: ...

    def wiring(self) -> WiringSnapshot: ...

    @property
    def hosted(self) -> frozenset[str] | None:
        """The agents this process runs if a broker runs others elsewhere, else None."""


class Stopped(Exception):  # noqa: N818  (a signal, not an error)
    """The source is stopping: end the read loop, nothing is half sent."""


@dataclass
class SourceStats:
    """One source's counts, as ``organism.stats()["sources"]`` shows them."""

    kind: str
    target: str | None
    state: str = "new"  # running, done, stopped, failed, not hosted here
    sent: int = 0
    refused: int = 0  # dead-lettered (or, over HTTP, answered 4xx)
    error: str | None = None  # why it failed
    address: str | None = None  # where an http source listens
    counts: Counter[str] = field(default_factory=Counter)  # the kind's own

    def as_dict(self) -> dict[str, Any]:
        shown = {"kind": self.kind, "target": self.target, "state": self.state,
                 "sent": self.sent, "refused": self.refused, "error": self.error}
        if self.address is not None:
            shown["address"] = self.address
        return {**shown, **dict(sorted(self.counts.items()))}


def runs_here(spec: SourceSpec, organism: OrganismSpec, hosted: frozenset[str] | None) -> bool:
    """Whether this process runs the source: with agents hosted in several processes, only
    one hosting its target (its ``to`` agent, or a subscriber of its channel) does, else
    each process would send the source's spores once more. An external target (hosted by
    no process of ours) keeps it in every process, as before partial hosting."""
    if hosted is None:
        return True
    if spec.to is not None:
        return spec.to in hosted or spec.to not in organism.agents
    return any(spec.channel in organism.agents[name].subscribe for name in hosted)


def target_of(spec: SourceSpec) -> str | None:
    """How a source's target is shown: ``agent`` or ``#channel``."""
    return spec.to if spec.to is not None else (f"#{spec.channel}" if spec.channel else None)


class Feed:
    """Sends a source's spores, one at a time; a stop lands only between two sends."""

    def __init__(self, port: SourcePort, spec: SourceSpec, stats: SourceStats) -> None:
        self.port = port
        self.spec = spec
        self.stats = stats
        self.sending = False
        self.stopping = False

    def spore(self, knowledge: dict[str, Any]) -> Spore:
        """The spore the source sends with ``knowledge``, from the source, to its target."""
        to, channel = self.spec.to, self.spec.channel
        return new_spore(knowledge=knowledge, from_agent=self.spec.name, to_agent=to,
                         channel=channel or DEFAULT_CHANNEL, created_at=self.port.now(),
                         spore_type=SporeType.KNOWLEDGE if to else SporeType.BROADCAST)

    async def send(self, knowledge: dict[str, Any]) -> bool:
        """Send ``knowledge``, waiting for admission; False if the organism refused it (it
        is a dead letter then). Raises :class:`Stopped` once the source is to stop."""
        if self.stopping:
            raise Stopped
        spore = self.spore(knowledge)
        self.sending = True
        try:
            await self.port.submit(spore)
        except OrganismStateError:
            raise Stopped from None  # stopping: not admitted, and the input stays where it is
        except (SporeError, DeliveryError) as exc:
            self.refuse(spore, exc)
            return False
        finally:
            self.sending = False
        self.stats.sent += 1
        if self.stopping:
            raise Stopped
        return True

    def refuse(self, spore: Spore, error: Exception) -> None:
        """Dead-letter ``spore``, which cannot be sent: refused, or input that holds none."""
        self.stats.refused += 1
        try:
            self.port.refuse(spore, error)
        except OrganismStateError:
            raise Stopped from None


class Source:
    """A running source: ``open`` (before its task; what may fail at once, like binding a
    port), ``run`` (its task: read, send, until done), ``halt`` (end it, between sends)."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed

    @property
    def stats(self) -> SourceStats:
        return self.feed.stats

    async def open(self) -> None:
        """Acquire what the source needs before it runs; raise if it cannot."""

    async def run(self) -> None:
        raise NotImplementedError

    def halt(self, task: asyncio.Task[None]) -> None:
        """Stop reading: now if the source is between two sends, else once its send
        ends (admitted, or refused by the organism, which stops admitting first)."""
        self.feed.stopping = True
        if not self.feed.sending:
            task.cancel()
