"""Typed events of a running organism, and the bus that hands them to subscribers.

    organism.events.subscribe(print)                  # a callback, called in line
    async with organism.events.stream() as events:    # an async iterator, buffered
        async for event in events: ...

The organism checks ``events.active`` (one attribute) before it builds an event,
so nothing is spent on events while nobody listens; and ``events.spores_active``
before it builds one per spore, so a subscriber to its own events only (``spores=False``:
its state, its agents', reloads) costs nothing per spore. A subscriber cannot hurt the
pipeline: a callback that raises is logged and skipped, and a slow consumer of a
stream loses its oldest events (counted in ``dropped``) rather than holding the
chain up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

from sporeflow.steps import Spore

__all__ = [
    "AgentStateChanged",
    "Event",
    "EventBus",
    "EventStream",
    "OrganismReloaded",
    "OrganismStateChanged",
    "SporeAdmitted",
    "SporeDeadLettered",
    "SporeEvent",
    "SporeExpired",
    "SporeFailed",
    "SporeHandled",
    "ThreadBudgetReached",
]

_logger = logging.getLogger("sporeflow.events")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something that happened in an organism, at ``at`` (its clock, UTC)."""

    kind: ClassVar[str] = "event"
    at: datetime = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``event`` (the kind), ``at`` and the event's own fields."""
        data: dict[str, Any] = {"event": self.kind, "at": self.at.isoformat()}
        for item in fields(self):
            if item.name != "at":
                data[item.name] = getattr(self, item.name)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SporeEvent(Event):
    """An event about one spore; ``agent`` is the agent involved, when there is one."""

    spore: Spore
    agent: str | None = None

    @property
    def spore_id(self) -> str:
        return self.spore.id

    @property
    def thread_id(self) -> str:
        return self.spore.thread

    def to_dict(self) -> dict[str, Any]:
        data = Event.to_dict(self)
        data.update(spore_id=self.spore.id, thread_id=self.spore.thread,
                    spore=self.spore.to_dict())
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SporeAdmitted(SporeEvent):
    """A spore entered the organism: sent from outside, or sent or returned by a handler."""

    kind: ClassVar[str] = "admitted"


@dataclass(frozen=True, slots=True, kw_only=True)
class SporeHandled(SporeEvent):
    """``agent``'s handler finished a spore in ``latency`` seconds, producing ``replies``."""

    kind: ClassVar[str] = "handled"
    agent: str
    latency: float
    replies: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = SporeEvent.to_dict(self)
        data["latency_ms"] = round(data.pop("latency") * 1000, 4)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SporeFailed(SporeEvent):
    """``agent``'s handler failed a spore for the last time (retries are not events)."""

    kind: ClassVar[str] = "failed"
    agent: str
    reason: str
    error: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SporeExpired(SporeEvent):
    """A spore passed its ``expires_at`` before a handler (``agent``, when known) ran."""

    kind: ClassVar[str] = "expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class SporeDeadLettered(SporeEvent):
    """A spore became a dead letter (exactly one such event per dead letter)."""

    kind: ClassVar[str] = "dead-lettered"
    reason: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganismStateChanged(Event):
    """The organism went from state ``old`` to ``new`` (running, stopping, stopped, failed)."""

    kind: ClassVar[str] = "organism-state"
    organism: str
    old: str
    new: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStateChanged(Event):
    """An agent went from state ``old`` to ``new`` (e.g. running, stopping, stopped)."""

    kind: ClassVar[str] = "agent-state"
    agent: str
    old: str
    new: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganismReloaded(Event):
    """A reload was applied or refused; ``report`` says what it added, removed, changed."""

    kind: ClassVar[str] = "reloaded"
    organism: str
    report: Mapping[str, Any]

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(self.report.get("added", ()))

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(self.report.get("removed", ()))

    @property
    def changed(self) -> tuple[str, ...]:
        return tuple(self.report.get("changed", ()))

    @property
    def refused(self) -> bool:
        return bool(self.report.get("refused", False))

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(str(error) for error in self.report.get("errors", ()))

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "at": self.at.isoformat(), "organism": self.organism,
                "added": list(self.added),
                "removed": list(self.removed), "changed": list(self.changed),
                "refused": self.refused, "errors": list(self.errors)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadBudgetReached(Event):
    """Conversation ``thread_id`` reached ``percent`` of ``limits.<limit>`` (one of
    ``limits.budget_warnings``): ``used`` of ``maximum``. Once per thread, limit and
    percentage."""

    kind: ClassVar[str] = "thread-budget"
    thread_id: str
    limit: str  # max_spores_per_thread or max_cost_per_thread
    percent: float
    used: float
    maximum: float


Callback = Callable[[Event], None]


class EventBus:
    """Hands each event to every subscriber, in subscription order.

    ``active`` is true while anyone subscribes, ``spores_active`` while anyone wants
    the events about single spores; producers check them first so that an organism
    nobody watches builds no event at all.
    """

    def __init__(self) -> None:
        self.active = False
        self.spores_active = False
        self.failures = 0
        # Told when ``spores_active`` changes: the organism attaches its event hook (what
        # builds an event per spore) only then.
        self.on_active: Callable[[bool], None] | None = None
        # A tuple, replaced on (un)subscribe: emit iterates it without copying, and a
        # callback that unsubscribes mid-emit does not disturb the loop.
        self._callbacks: tuple[Callback, ...] = ()
        self._spore_watchers = 0

    def subscribe(self, callback: Callback, *, spores: bool = True) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes.

        The callback runs in line, on the event loop: keep it quick (or use
        :meth:`stream`). An exception it raises is logged and counted in ``failures``.
        ``spores=False``: only the organism's own events, never a :class:`SporeEvent`;
        with no other subscriber, the organism then builds no event per spore.
        """
        if not spores:
            callback = _without_spore_events(callback)
        self._callbacks = (*self._callbacks, callback)
        self._spore_watchers += 1 if spores else 0
        self._set_active()

        def unsubscribe() -> None:
            callbacks = list(self._callbacks)
            if callback in callbacks:
                callbacks.remove(callback)
                self._callbacks = tuple(callbacks)
                self._spore_watchers -= 1 if spores else 0
                self._set_active()

        return unsubscribe

    def _set_active(self) -> None:
        self.active = bool(self._callbacks)
        wanted = self._spore_watchers > 0
        changed, self.spores_active = wanted != self.spores_active, wanted
        if changed and self.on_active is not None:
            self.on_active(wanted)

    def stream(self, maxsize: int = 10_000, *,
               accept: Callable[[Event], bool] | None = None) -> EventStream:
        """An async iterator of events, buffering at most ``maxsize`` (oldest dropped).

        Use it as ``async with bus.stream() as events: async for event in events``.
        ``accept``, when given, picks the events to keep (before they take room).
        """
        return EventStream(self, maxsize, accept=accept)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; a failing subscriber is logged, never raised."""
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # a subscriber is the caller's code: it never stops the chain
                self.failures += 1
                _logger.exception("an event subscriber failed on a %r event", event.kind,
                                  extra={"event": event.kind})


def _without_spore_events(callback: Callback) -> Callback:
    def organism_events(event: Event) -> None:
        if not isinstance(event, SporeEvent):
            callback(event)

    return organism_events


class EventStream:
    """A bounded buffer of events fed by an :class:`EventBus`, read with ``async for``.

    When the reader falls behind, the oldest events are dropped and counted in
    ``dropped``; the organism never waits for the reader. ``close()`` ends the
    iteration once the buffered events are read.
    """

    def __init__(self, bus: EventBus, maxsize: int = 10_000, *,
                 accept: Callable[[Event], bool] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"an event stream needs room for at least one event, "
                             f"got maxsize={maxsize!r}")
        self.maxsize = maxsize
        self.dropped = 0
        self._bus = bus
        self._accept = accept
        self._buffer: deque[Event] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._closed = False
        self._unsubscribe: Callable[[], None] | None = None

    def open(self) -> EventStream:
        """Start receiving events (``async with`` does this)."""
        if self._unsubscribe is None and not self._closed:
            self._unsubscribe = self._bus.subscribe(self._push)
        return self

    def close(self) -> None:
        """Stop receiving; iteration ends after the events already buffered."""
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._ready.set()

    def _push(self, event: Event) -> None:
        if self._accept is not None and not self._accept(event):
            return
        if len(self._buffer) == self.maxsize:
            self.dropped += 1  # the deque drops the oldest itself
        self._buffer.append(event)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._buffer)

    async def __aenter__(self) -> EventStream:
        return self.open()

    async def __aexit__(self, *_: object) -> None:
        self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()
