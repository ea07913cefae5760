"""Where spores enter: outside senders (``send``, ``broadcast``, ``request``, ``submit``)
and running handlers (``ctx.send``, ``ctx.request``, ...).

Both go into the intake and through the whole chain. A sender that must hear of a
refusal at once (an outside caller, a handler's ``ctx.send``) gets the chain's own
checks run early by :meth:`Ingress.screen` (``check_spore`` and ``permission_error``,
the functions the stages run); the spore is then marked checked so the validate
stage does not measure it twice. Nothing else is checked here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Container, Coroutine
from datetime import datetime, timedelta
from typing import Any, Protocol

from sporeflow.config import (
    DeliveryError,
    Limits,
    NotAPeer,
    OrganismFull,
    OrganismStateError,
    RequestTimeout,
    SporeError,
)
from sporeflow.config.errors import JournalError
from sporeflow.config.model import DEAD_LETTER_CHANNEL, OUTSIDE_SENDERS, SYSTEM_SENDER
from sporeflow.config.reasons import Reason, reason_of
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.recent import OneMore, RecentNames
from sporeflow.pipeline.core.requests import RequestBook, new_request_id
from sporeflow.pipeline.core.wiring import WiringCell
from sporeflow.steps import (
    DEFAULT_CHANNEL,
    ExpiresIn,
    Spore,
    SporeType,
    check_spore,
    expiry_after,
    new_spore,
    no_agent_error,
    permission_error,
    schema_refusal,
    set_checked,
    timeout_seconds,
    unroutable,
)

__all__ = ["OUTSIDE_SENDERS", "Ingress"]

_REQUEST = SporeType.REQUEST

Stamp = Callable[[Spore], Spore]


class Durable(Protocol):
    """Where outside spores are kept across a crash (the journal)."""

    def record(self, spores: tuple[Spore, ...]) -> Awaitable[None]:
        """Queue ``spores``; resolves once they are on disk."""

    def add(self, spores: tuple[Spore, ...]) -> bool:
        """Queue ``spores`` for the next group commit; True when its writer has fallen
        behind (a sender should then wait for a commit)."""


class Ingress:
    def __init__(self, *, intake: Intake, ledger: Ledger, requests: RequestBook,
                 wiring: WiringCell, limits: Limits,
                 now: Callable[[], datetime],
                 outside: RecentNames, organism: str) -> None:
        self.organism = organism  # its name, for messages
        self.intake = intake
        self.ledger = ledger
        self.requests = requests
        self._cell = wiring  # the current wiring, read per spore
        self.limits = limits
        # Why outside spores are refused now (the organism is not running), or None.
        self.refusal: OrganismStateError | None = None
        self.now = now
        self.outside = outside
        # Set by the organism when tracing or a journal is on; None otherwise.
        self.stamp_outside: Stamp | None = None
        self.stamp_sent: Stamp | None = None
        self.persist: Durable | None = None
        # Set over a broker: while it is unreachable, waits for its confirm of an outside
        # spore until the deadline (loop time; None: its own) and raises BrokerError then.
        self.confirm: Callable[[Spore, float | None], Awaitable[None]] | None = None
        # Ids of the boot spores sent: their handlers are sources, stopped first at a stop.
        self.sources: set[str] = set()
        # The event loop the chain runs on (set by the run as it starts the chain): a send
        # from another would be admitted and never handled.
        self.loop: asyncio.AbstractEventLoop | None = None

    def on_its_loop(self, call: str) -> None:
        """Refuse ``call`` off the organism's event loop: from a sync handler's thread
        (no loop: what it returns could not be awaited, nothing would happen) or from
        another loop (admitted, and never handled)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            raise OrganismStateError(
                f"{call} was called from a sync handler's thread, off the event loop; "
                f"nothing was sent: a sync handler returns its spores (a dict, a Spore or a "
                f"list); to send, request or gather from a handler, make it `async def`"
            ) from None
        if self.loop is not None and running is not self.loop:
            raise OrganismStateError(
                f"organism {self.organism!r} runs on another event loop than this call (was "
                f"it started under another asyncio.run?); nothing was sent: start it and "
                f"send to it on one loop, e.g. inside one `async with organism.running():`")

    # -- the early check -------------------------------------------------------------

    def screen(self, spore: Spore, outside: Container[str], *, built: bool = False) -> None:
        """Raise what the chain would refuse ``spore`` for, by the chain's own rules
        (``built``: made by ``new_spore`` from a sender's arguments, see ``check_spore``)."""
        check_spore(spore, self.limits, built=built)
        if spore.channel == DEAD_LETTER_CHANNEL and (spore.to_agent is None
                                                     or spore.from_agent == SYSTEM_SENDER):
            # The organism's own notices go there, never through here; their voice
            # (``system``) is also an outside caller's that gives no name: no forgery,
            # broadcast or addressed to a listener (an agent's own sends there pass).
            raise NotAPeer(f"{spore.from_agent!r} may not post on {DEAD_LETTER_CHANNEL!r}: "
                           f"it carries the organism's own notices of its dead letters")
        table = self._cell.current.table
        if table.guarded:
            refusal = permission_error(table, spore, outside=outside)
            if refusal is not None:
                raise refusal

    # -- from outside ------------------------------------------------------------------

    def outside_spore(self, knowledge: dict[str, Any], *, to: str | None,
                      channel: str | None, sender: str, spore_type: SporeType,
                      priority: int, expires_in: ExpiresIn | None,
                      extra: dict[str, Any]) -> Spore:
        """Build and screen the spore an outside caller asked for; raise at once if it is
        wrong. Hand it to :meth:`enter`."""
        if self.refusal is not None:
            raise self.refusal
        if type(knowledge) is not dict:
            plain = "; pass dict(it)" if isinstance(knowledge, dict) else ""
            raise SporeError(f"knowledge must be a dict (a JSON object), got "
                             f"{type(knowledge).__name__}: {knowledge!r:.60}{plain}")
        if to is None and channel is None and spore_type is not SporeType.BROADCAST:
            raise _unaddressed("organism.send")  # no agent, no channel: only 'main' by chance
        # Made in the caller's task: the organism's clock, whatever task that is.
        now = self.now()
        expires_at = expiry_after(now, expires_in) if expires_in is not None else None
        channel = channel or DEFAULT_CHANNEL
        built = not extra  # else fields of the caller's own (metadata, ...): all checked
        if built and spore_type is not _REQUEST:
            spore = new_spore(knowledge=knowledge, spore_type=spore_type, from_agent=sender,
                              to_agent=to, channel=channel, priority=priority,
                              expires_at=expires_at, created_at=now)
        else:
            if spore_type is SporeType.REQUEST and "id" not in extra:
                extra = {**extra, "id": new_request_id()}  # unguessable: see core.requests
            spore = Spore(knowledge=knowledge, spore_type=spore_type, from_agent=sender,
                          to_agent=to, channel=channel, priority=priority,
                          expires_at=expires_at, **{"created_at": now, **extra})
        # The chain's own checks, run now so that the caller hears of a refusal at once:
        # the fields' types first (a recipient that is no name cannot be looked up).
        self.screen(spore, self._senders_with(sender), built=built)
        self._check_recipient(spore, (), named=False)
        self._remember(sender)
        return spore

    def submit(self, spore: Spore, *, admit_within: float | None = None,
               whole: bool = False, confirm: bool = True) -> Coroutine[Any, Any, Spore]:
        """Admit a ready-made spore from outside; wait while the organism is full (at
        most ``admit_within`` seconds, then raise :class:`OrganismFull`). ``whole``: also
        raise now what route or the recipient's schema would refuse (by their own rules),
        for a caller that can be told (the HTTP ingress); else those are dead letters.
        ``confirm``: as :meth:`enter`."""
        if self.refusal is not None:
            raise self.refusal
        self.screen(spore, self._senders_with(spore.from_agent))
        if whole:
            self._deliverable(spore)
        self._remember(spore.from_agent)
        return self.enter(spore, admit_within=admit_within, confirm=confirm, refused=whole)

    def _deliverable(self, spore: Spore) -> None:
        wiring = self._cell.current
        # As for send: what comes from outside goes to an agent, never straight back out
        # (an outside sender's name is no recipient: it would only fill the outbox).
        refusal = unroutable(wiring.table, spore)
        if refusal is not None:
            raise refusal
        target = spore.to_agent
        check = wiring.schemas.get(target) if target is not None else None
        if check is not None:  # what the schema gate would dead-letter, told at the call
            assert target is not None
            violation = schema_refusal(check, spore, target)
            if violation is not None:
                raise violation

    def _check_recipient(self, spore: Spore, outside: Container[str], *,
                         named: bool = True) -> None:
        """Raise at the call, for a handler's send, broadcast and request and an outside
        sender's alike, what route would refuse the spore for when it names an agent that
        does not exist (nor an ``outside`` sender) or a channel not declared and unheard
        (a typo): route's own rule (``unroutable``), heard at once rather than as a dead
        letter only. A declared channel nobody listens to now is left to route: agents
        may subscribe to it before the spore gets there. ``named``: the refusal of an
        unknown agent names the spore (a handler's, which is dead-lettered; an outside
        caller has no use for an id it never saw)."""
        table = self._cell.current.table
        refusal = unroutable(table, spore, outside=outside)
        if refusal is None:
            return
        to = spore.to_agent
        if to is not None:
            raise (refusal if named or refusal.reason != Reason.UNKNOWN_AGENT
                   else no_agent_error(table, to, None))
        if refusal.reason == Reason.UNKNOWN_CHANNEL:
            raise refusal

    def _senders_with(self, sender: str) -> Container[str]:
        """The outside senders, ``sender`` among them: what a spore from outside is
        checked against (a response to it may pass)."""
        outside = self.outside
        return outside if sender in outside else OneMore(outside, sender)

    def _remember(self, sender: str) -> None:
        """``sender`` sent from outside: what comes back to it is returned outside, and
        a name used now is the last one forgotten."""
        outside = self.outside
        if sender in outside:
            if outside.full:
                outside.add(sender)
        elif sender not in self._cell.current.table.agents:
            outside.add(sender)

    async def enter(self, spore: Spore, *, confirm: bool = True,
                    admit_within: float | None = None, refused: bool = True) -> Spore:
        """Queue a screened spore from outside: wait while the organism is full (at most
        ``admit_within`` seconds, then raise :class:`OrganismFull`, nothing admitted), then,
        if ``confirm``, with a journal until it is on disk, and over a broker it lost until
        the broker has it. Without ``confirm`` the journal writes it with the next group
        commit (the organism's ``confirmed()`` waits for that). ``refused``: a spore whose
        recipient a reload removed since it was screened is refused here, as at the call
        (else the chain dead-letters it, as any unknown recipient of a ``submit``)."""
        if self.loop is not None and asyncio.get_running_loop() is not self.loop:
            self.on_its_loop("send")  # raises, saying why (the test first: per spore)
        if self.stamp_outside is not None:  # the caller's span becomes the spore's origin
            spore = self.stamp_outside(spore)
        intake = self.intake
        set_checked(spore, True)  # the validate stage need not check it again
        if not intake.try_admit(spore):
            try:
                recheck = self._still_addressed if refused else None
                if admit_within is None:
                    await intake.admit(spore, recheck)
                else:  # only the wait for room is bounded: once admitted, it is sent whole
                    await self._admit_within(spore, admit_within, recheck)
            except BaseException:
                set_checked(spore, False)  # never admitted: sent again, it is checked again
                raise
        if self.ledger.watched:  # told before any await, so before it can be handled
            self.ledger.admitted((spore,))
        if confirm:
            if self.persist is not None:  # the sender hears back once it is on disk
                try:
                    await self.persist.record((spore,))
                except JournalError as exc:  # the caller never learns the id otherwise
                    raise type(exc)(  # JournalGone stays one
                        f"{exc}. Spore {spore.id} was admitted before the failure and may "
                        f"still be handled, in this run or when the journal is replayed: "
                        f"look for that id before sending it again") from exc.__cause__
            if self.confirm is not None:
                await self.confirm(spore, None)
        elif self.persist is not None:  # pipelined: on disk with the next group commit
            if self.persist.add((spore,)):  # unless the journal falls behind: then wait
                await self.persist.record(())
        return spore

    def _still_addressed(self, spore: Spore) -> None:
        """Raise, for a spore not admitted at once, when a reload removed its recipient
        meanwhile: it was screened before, and an outside send to an agent a reload
        removed is refused at the call (nothing admitted), as it is without a wait."""
        to = spore.to_agent
        table = self._cell.current.table
        if to is not None and to in table.removed:
            raise no_agent_error(table, to, None)

    async def _admit_within(self, spore: Spore, seconds: float,
                            recheck: Callable[[Spore], None] | None) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self.intake.admit(spore, recheck)
        except TimeoutError:
            target = (repr(spore.to_agent) if spore.to_agent is not None
                      else f"channel {spore.channel!r}")
            raise OrganismFull(f"organism {self.organism!r} had no room for a spore to "
                               f"{target} within {seconds}s; send it again later") from None

    async def request(self, spore: Spore, timeout: float | timedelta | str, *,
                      parent: Spore | None = None, agent: str | None = None,
                      admit_within: float | None = None) -> Spore:
        """Send request ``spore`` (from outside, or from a handler handling ``parent``)
        and await its response (``admit_within``: as :meth:`enter`)."""
        timeout = timeout_seconds(timeout)  # a bad one raises here, nothing opened
        future = self.requests.open(spore)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            # From outside, over a broker (never with a journal: refused at start).
            if parent is None and self.confirm is not None:
                async with asyncio.timeout_at(deadline):
                    spore = await self.enter(spore, confirm=False, admit_within=admit_within)
                # Apart from the timeout: BrokerError at the deadline, if a broker it lost
                # never confirmed the request.
                await self.confirm(spore, deadline)
                async with asyncio.timeout_at(deadline):
                    return await future
            # One timeout for all (each costs a timer handle: this is the hot path).
            async with asyncio.timeout_at(deadline):
                if parent is not None and agent is not None:
                    self.emit(spore, parent, agent, built=True)
                else:
                    spore = await self.enter(spore, admit_within=admit_within)
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                # Settled before our clock struck (in the turn of the loop in which it
                # did): its response, or the responder's failure, is the answer.
                return future.result()
            hint = (f"; {spore.to_agent!r} handled it, and no response came back (a "
                    f"request is answered by what its handler returns, or by ctx.reply: "
                    f"did it return None?)"
                    if self.requests.unanswered(spore.id) else "")
            raise RequestTimeout(
                f"no response from {spore.to_agent!r} to request {spore.id} within "
                f"{timeout}s{hint}") from None
        finally:
            self.requests.close(spore.id)
            if future.done() and not future.cancelled():
                future.exception()  # a refusal raised here already: asyncio must not report it

    # -- from handlers -----------------------------------------------------------------

    def emit(self, spore: Spore, parent: Spore, agent: str, *, built: bool = False) -> None:
        """Feed what a running handler sends; refusals are dead letters and raise.
        ``built``: made by ``new_spore`` from the handler's arguments."""
        if self.intake.closed and parent.id in self.sources:
            raise OrganismStateError(
                f"organism {self.organism!r} is stopping: {agent!r}, handling its boot spore, "
                f"may start no new work (stop at the next send, or use an async generator)")
        try:
            self.screen(spore, self.outside, built=built)  # first: see outside_spore
            _check_addressed(spore, "ctx.send (or request)")
            if spore.spore_type is not SporeType.RESPONSE:  # the request book routes those
                self._check_recipient(spore, self.outside)
        except (SporeError, DeliveryError) as exc:
            self._refuse(spore, exc, agent)
            raise
        if self.stamp_sent is not None:  # sent from inside the handler's span
            spore = self.stamp_sent(spore)
        set_checked(spore, True)  # the validate stage need not check it again
        self.ledger.feed((spore,), agent, parent)

    def output(self, spores: list[Spore], parent: Spore, agent: str) -> None:
        """Feed what a running handler yields (a stream's items); the chain checks them
        as it checks returned replies."""
        if self.stamp_sent is not None:  # yielded inside the handler's span
            spores = [self.stamp_sent(spore) for spore in spores]
        self.ledger.feed(spores, agent, parent)

    # -- a state snapshot's spores (agents.queued) --------------------------------------

    def waiting(self) -> list[Spore]:
        """What waits in the intake for the chain, left in place."""
        return self.intake.waiting()

    def restore(self, spores: list[Spore]) -> bool:
        """Feed spores a state snapshot kept through the whole chain, the journal (if any)
        recording them first, as it records what outside senders send; False, feeding
        nothing, while the organism stops or is stopped."""
        if self.intake.closed:
            return False
        if self.persist is not None:  # a journal that fails stops the organism itself
            self.persist.add(tuple(spores))
        self.intake.feed(spores)
        return True

    def refuse(self, spore: Spore, error: Exception) -> None:
        """Dead-letter ``spore``, which an outside source (``sources:``) could not send and
        has no caller to tell, as a handler's refused send is; its sender is named."""
        self._refuse(spore, error, spore.from_agent)

    def _refuse(self, spore: Spore, error: Exception, agent: str) -> None:
        self.ledger.refuse_sent(spore, reason_of(error), error, agent)


def _check_addressed(spore: Spore, call: str) -> None:
    """A handler's send names its agent: one without (``ctx.send(None, ...)``) is refused
    at the call rather than broadcast on its channel, which ``broadcast`` is for."""
    if spore.to_agent is None and spore.spore_type is not SporeType.BROADCAST:
        raise _unaddressed(call)


def _unaddressed(call: str) -> SporeError:
    return SporeError(f"{call} needs the name of the agent to send to, got None; to send to "
                      f"every subscriber of a channel, use broadcast(knowledge, channel=...)")
