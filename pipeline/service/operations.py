"""What can be done to a running organism from outside its process, in one place: the
control endpoint (``service.control``), the web dashboard and ``sporeflow send --start``
all call these, and these call only the organism's public API (``submit``, ``send``,
``request``, ``reload``, ``stats``, its event bus and dead letters): no rule is written
here a second time.

    dead_letters(organism, choice)         the letters kept in the process, numbered
    dead_letter(organism, number)          one of them, or None
    replay_dead_letters(organism, choice)  submit them again (the one path); -> how many
    send_spore(organism, ...)              send (or request) and wait for the spore's fate
    readiness(organism)                    started, and with a broker connected
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sporeflow.config import (
    HandlerError,
    OrganismStateError,
    RequestTimeout,
    SporeError,
    SporeflowError,
)
from sporeflow.config.reasons import Reason, reason_of
from sporeflow.pipeline.core.deadletters import (
    DeadLetter,
    DeadLetterStore,
    LetterChoice,
    Masker,
    StoredDeadLetter,
)
from sporeflow.pipeline.core.http_serving import refusal_status as status_of_reason
from sporeflow.pipeline.core.replaying import ReplayBook
from sporeflow.pipeline.observe.events import (
    Event,
    EventBus,
    SporeDeadLettered,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.steps import Spore

__all__ = [
    "Controlled",
    "Replayed",
    "SendOutcome",
    "dead_letter",
    "dead_letters",
    "letter_dict",
    "purge",
    "readiness",
    "refusal_status",
    "reload",
    "replay",
    "replay_dead_letters",
    "send_spore",
]


class Controlled(Protocol):
    """What these operations use of an organism (an ``Organism`` is one)."""

    @property
    def dead_letters(self) -> DeadLetterStore: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def masker(self) -> Masker: ...

    @property
    def logger(self) -> logging.Logger: ...

    @property
    def state(self) -> str: ...

    @property
    def brokered(self) -> bool: ...

    @property
    def hosted(self) -> frozenset[str] | None: ...

    def submit(self, spore: Spore) -> Coroutine[Any, Any, Spore]: ...

    async def confirmed(self, spore: Spore | None = None) -> None: ...

    def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = ...,
             channel: str | None = ..., **extra: Any) -> Coroutine[Any, Any, Spore]: ...

    def broadcast(self, knowledge: dict[str, Any], *, channel: str = ...,
                  sender: str = ..., **extra: Any) -> Coroutine[Any, Any, Spore]: ...

    async def request(self, to_agent: str, knowledge: dict[str, Any], *,
                      timeout: float = ..., sender: str = ..., priority: int = ...,
                      ) -> Spore: ...

    async def reload(self) -> ReloadReport: ...

    def stats(self) -> dict[str, Any]: ...


# -- dead letters ------------------------------------------------------------------------


def dead_letters(organism: Controlled,
                 choice: LetterChoice | None = None) -> list[StoredDeadLetter]:
    """The dead letters the running organism keeps, oldest first, those ``choice``
    matches (None or empty: all), with the numbers they are named by."""
    return organism.dead_letters.numbered(choice)


def dead_letter(organism: Controlled, number: int) -> StoredDeadLetter | None:
    """Dead letter ``number``, while the organism still keeps it."""
    found = organism.dead_letters.numbered(LetterChoice(ids=(str(number),)))
    return next((stored for stored in found if stored.number == number), None)


def letter_dict(stored: StoredDeadLetter) -> dict[str, Any]:
    """The JSON form of a numbered dead letter (as ``dlq list --json`` prints one)."""
    return {"number": stored.number, **stored.letter.to_dict()}


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay did: the numbers of the letters submitted again, and why others were
    refused (they stay dead letters, under their numbers)."""

    numbers: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.numbers)


def purge(organism: Controlled, choice: LetterChoice) -> list[int]:
    """Delete the dead letters ``choice`` matches for good; their numbers."""
    chosen = organism.dead_letters.numbered(choice)
    return [stored.number for stored in
            organism.dead_letters.take(stored.number for stored in chosen)]


async def replay(organism: Controlled, choice: LetterChoice) -> Replayed:
    """Submit the dead letters ``choice`` matches again, through ``organism.submit`` (every
    stage checks them again), and take them out of the organism's dead letters.

    A broadcast goes back only to the agent that failed on it, an expired spore loses its
    expiry (``StoredDeadLetter.replayable``). They are taken out before the first is
    submitted, so two replays never submit one letter twice; each is submitted on its own
    (``ReplayBook``, the rule of every replay): one the organism refuses is put back, and
    the others are submitted all the same.
    """
    chosen = organism.dead_letters.numbered(choice)
    taken = organism.dead_letters.take(stored.number for stored in chosen)
    book = ReplayBook(masker=organism.masker)
    try:
        for stored, spore in book.judged(taken):
            with book.delivering(stored):
                await organism.submit(spore)
    finally:  # also when cut short: a letter taken and not submitted is never lost
        submitted = {stored.number for stored in book.replayed}
        left = [stored for stored in taken if stored.number not in submitted]
        if left:
            organism.dead_letters.restore(left)
    for refusal in book.refused:
        # The caller is told, and so is the organism's log: the letter stays.
        organism.logger.warning("replay refused, kept as a dead letter: %s", refusal)
    return Replayed(tuple(stored.number for stored in book.replayed),
                    tuple(str(refusal) for refusal in book.refused))


async def replay_dead_letters(organism: Controlled, choice: LetterChoice) -> int:
    """:func:`replay`, returning how many letters were submitted again."""
    return (await replay(organism, choice)).count


# -- sending -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What became of a spore sent from outside.

    ``status``: ``handled`` (by ``agent``), ``answered`` (a request's ``response``),
    ``sent`` (admitted; its recipient runs in another process), ``pending`` (not
    handled within the time waited), ``dead-lettered`` or ``refused`` (with ``reason`` and
    ``error``), ``timeout`` (a request unanswered), ``not running``.
    """

    status: str
    spore_id: str | None = None
    agent: str | None = None
    reason: str | None = None
    error: str | None = None
    response: Spore | None = None
    traceback: str | None = None  # a handler's failure: its traceback, masked

    @property
    def ok(self) -> bool:
        return self.status in ("handled", "answered", "sent", "pending")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, "id": self.spore_id}
        for name in ("agent", "reason", "error", "traceback"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.response is not None:
            data["response"] = self.response.to_dict()
        return data


_ENDS = (SporeHandled, SporeFailed, SporeDeadLettered, SporeExpired)


class _Fates:
    """The ends of spores (handled, dead-lettered, expired), watched from before a send so
    that a quick one is not missed; once the spore's id is known, only its own are kept.
    Bounded, as an event stream is."""

    def __init__(self, bus: EventBus, maxsize: int = 10_000) -> None:
        self._seen: deque[Event] = deque(maxlen=maxsize)
        self._id: str | None = None
        self._changed = asyncio.Event()
        self._unsubscribe = bus.subscribe(self._note)

    def _note(self, event: Event) -> None:
        # A failure is followed by its dead letter, which carries the reason: wait for it.
        if isinstance(event, _ENDS) and not isinstance(event, SporeFailed) and (
                self._id is None or event.spore.id == self._id):
            self._seen.append(event)
            self._changed.set()

    def close(self) -> None:
        self._unsubscribe()

    def seen(self, spore_id: str) -> Event | None:
        """The first end of spore ``spore_id`` seen so far, if any (waits for none)."""
        return next((event for event in self._seen
                     if isinstance(event, _ENDS) and event.spore.id == spore_id), None)

    async def first(self, spore_id: str) -> Event:
        """The first end of spore ``spore_id``, waiting for it."""
        self._id = spore_id
        while True:
            self._changed.clear()
            found = self.seen(spore_id)
            if found is not None:
                return found
            self._seen.clear()  # none of them was its: from now on only its own come
            await self._changed.wait()


# What a send's body (the control endpoint's, `sporeflow send`'s) may add to the spore,
# as organism.send's keywords; a request takes its priority (its expiry is its timeout).
SEND_OPTIONS = ("metadata", "priority", "expires_in")


def send_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords for organism.send that ``body`` gives (those not null)."""
    return {key: body[key] for key in SEND_OPTIONS if body.get(key) is not None}


async def send_spore(organism: Controlled, knowledge: dict[str, Any], *,
                     to: str | None = None, channel: str | None = None,
                     sender: str = "cli", request: bool = False, timeout: float = 30.0,
                     extra: dict[str, Any] | None = None) -> SendOutcome:
    """Send ``knowledge`` to agent ``to`` (or broadcast it on ``channel``), as any outside
    sender does, and wait up to ``timeout`` seconds for what became of it: handled, or
    dead-lettered with its reason. A ``request`` waits for its response instead.

    A refusal at the door (unknown agent, not a peer, a malformed spore) is ``refused``
    with the reason a dead letter would carry; over a broker whose recipient runs in
    another process, the spore is ``sent`` once the broker has it.
    """
    fates = None if request else _Fates(organism.events)
    try:
        if to is None and channel is None:
            raise SporeError("say where the spore goes: an agent (to) or a channel")
        if request and to is None:  # refused, as a send is: a 422, never a 500
            raise SporeError("a request goes to one agent: give `to`")
        if request and extra and "expires_in" in extra:  # never ignored unsaid
            raise SporeError("a request expires with its timeout: give the timeout "
                             "(--timeout), not expires_in (--expires-in)")
        if request:
            assert to is not None
            asked = {"priority": extra["priority"]} if extra and "priority" in extra else {}
            response = await organism.request(to, knowledge, timeout=timeout, sender=sender,
                                              **asked)
            return SendOutcome("answered", response.reply_to, agent=response.from_agent,
                               response=response)
        spore = await (organism.send(to, knowledge, sender=sender, channel=channel,
                                     **(extra or {})) if to is not None
                       else organism.broadcast(knowledge, channel=channel or "main",
                                               sender=sender, **(extra or {})))
        assert fates is not None
        if not _sees_fate(organism, to):
            return await _left(organism, spore, fates, timeout)
        try:
            async with asyncio.timeout(timeout):
                end = await fates.first(spore.id)
        except TimeoutError:
            return SendOutcome("pending", spore.id)
        return _outcome(organism, spore.id, end)
    except RequestTimeout as exc:
        return SendOutcome("timeout", error=organism.masker.mask(str(exc)), agent=to)
    except OrganismStateError as exc:
        return SendOutcome("not running", error=organism.masker.mask(str(exc)))
    except HandlerError as exc:  # the responder failed: what its dead letter says
        letter = _letter(organism, exc.spore_id)
        return SendOutcome("dead-lettered", exc.spore_id, agent=exc.agent,
                           reason=letter.reason if letter else str(Reason.HANDLER_FAILED),
                           error=letter.error if letter else organism.masker.mask(str(exc)),
                           traceback=letter.traceback if letter else None)
    except SporeflowError as exc:  # DeliveryError, SporeError...: the reason is theirs
        return SendOutcome("refused", reason=str(reason_of(exc)),
                           error=organism.masker.mask(f"{type(exc).__name__}: {exc}"))
    finally:
        if fates is not None:
            fates.close()


async def _left(organism: Controlled, spore: Spore, fates: _Fates,
                timeout: float) -> SendOutcome:
    """Over a broker to an agent another process runs: ``sent`` once the spore left this
    process for the broker, else what refused it here (the chain's rules run in the
    sending process too: a schema, an expiry), as a dead letter of this process's."""
    try:
        async with asyncio.timeout(timeout):
            await organism.confirmed(spore)  # this one: what others lost stays theirs
    except TimeoutError:
        return SendOutcome("pending", spore.id)
    end = fates.seen(spore.id)
    return SendOutcome("sent", spore.id) if end is None else _outcome(organism, spore.id, end)


def _outcome(organism: Controlled, spore_id: str, end: Event) -> SendOutcome:
    """What became of spore ``spore_id``, by the event that ended it here."""
    if isinstance(end, SporeDeadLettered):
        return SendOutcome("dead-lettered", spore_id, agent=end.agent,
                           reason=str(end.reason), error=end.error,
                           traceback=_traceback(organism, spore_id))
    if isinstance(end, SporeExpired):
        return SendOutcome("dead-lettered", spore_id, agent=end.agent,
                           reason=str(Reason.EXPIRED), error="it expired")
    assert isinstance(end, SporeHandled)
    return SendOutcome("handled", spore_id, agent=end.agent)


def _sees_fate(organism: Controlled, to: str | None) -> bool:
    """Whether what becomes of a spore sent happens in this process: it runs the
    recipient (every agent, for a broadcast), with a broker or without. Over a broker
    that runs it elsewhere, the spore is ``sent``: its end is another process's."""
    hosted = organism.hosted
    return hosted is None or (to is not None and to in hosted)


def _letter(organism: Controlled, spore_id: str) -> DeadLetter | None:
    """The latest dead letter of spore ``spore_id`` the organism keeps."""
    found = organism.dead_letters.numbered(LetterChoice(ids=(spore_id,)))
    return found[-1].letter if found else None


def _traceback(organism: Controlled, spore_id: str) -> str | None:
    letter = _letter(organism, spore_id)
    return letter.traceback if letter is not None else None


def refusal_status(outcome: SendOutcome) -> int:
    """The HTTP status that tells ``outcome``: 200 done, 202 not yet known, 4xx refused."""
    if outcome.status in ("handled", "answered"):
        return 200
    if outcome.status in ("sent", "pending"):
        return 202
    if outcome.status == "not running":
        return 503
    if outcome.status == "timeout":
        return 504
    return status_of_reason(outcome.reason or "")


# -- the rest ----------------------------------------------------------------------------


def readiness(organism: Controlled) -> tuple[bool, str]:
    """Whether the organism takes spores: started (running) and, over a broker,
    connected to it; and what it is doing otherwise."""
    state = organism.state
    if state != "running":
        return False, f"organism is {state}"
    if not organism.brokered:  # stats() builds every agent's figures: only for the broker's
        return True, "running"
    broker = organism.stats().get("broker")
    if broker is not None:
        link = broker.get("connection", {}).get("state", "connected")
        if link != "connected":
            return False, f"broker is {link}"
    return True, "running"


async def reload(organism: Controlled) -> ReloadReport:
    """Re-read the organism file and apply it (``organism.reload``)."""
    return await organism.reload()
