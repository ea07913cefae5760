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
from collections.abc import Awaitable, Callable, Container
from datetime import datetime, timedelta
from typing import Any

from sporeflow.config import (
    DeliveryError,
    Limits,
    OrganismStateError,
    RequestTimeout,
    SporeError,
)
from sporeflow.config.reasons import Reason, did_you_mean, reason_of
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.logfields import describe_error, spore_fields
from sporeflow.pipeline.core.requests import RequestBook, new_request_id
from sporeflow.pipeline.core.wiring import WiringSnapshot
from sporeflow.steps import Spore, SporeType, check_spore, new_spore, permission_error

__all__ = ["OUTSIDE_SENDERS", "Ingress"]

OUTSIDE_SENDERS = frozenset({"system", "cli"})

Stamp = Callable[[Spore], Spore]


def _same(spore: Spore) -> Spore:
    return spore


class Ingress:
    def __init__(self, *, intake: Intake, ledger: Ledger, requests: RequestBook,
                 wiring: Callable[[], WiringSnapshot], limits: Limits,
                 admitting: Callable[[], OrganismStateError | None],
                 now: Callable[[], datetime], checked: set[int],
                 outside: set[str], organism: str) -> None:
        self.organism = organism  # its name, for messages
        self.intake = intake
        self.ledger = ledger
        self.requests = requests
        self._wiring = wiring
        self.limits = limits
        self._admitting = admitting  # None while the organism admits, else why not
        self.now = now
        self.checked = checked  # shared with the validate stage
        self.outside = outside
        # Set by the organism when tracing or a journal is on; identity / None otherwise.
        self.stamp_outside: Stamp = _same
        self.stamp_sent: Stamp = _same
        self.persist: Callable[[tuple[Spore, ...]], Awaitable[None]] | None = None

    # -- the early check -------------------------------------------------------------

    def screen(self, spore: Spore, outside: Container[str]) -> None:
        """Raise what the chain would refuse ``spore`` for, by the chain's own rules."""
        check_spore(spore, self.limits)
        table = self._wiring().table
        if table.peers or table.publishers:
            refusal = permission_error(table, spore, outside=outside)
            if refusal is not None:
                raise refusal

    # -- from outside ------------------------------------------------------------------

    def outside_spore(self, knowledge: dict[str, Any], *, to: str | None,
                      channel: str | None, sender: str, spore_type: SporeType,
                      priority: int, expires_in: float | None,
                      extra: dict[str, Any]) -> Spore:
        """Build the spore an outside caller asked for; raise at once if it is wrong."""
        refusal = self._admitting()
        if refusal is not None:
            raise refusal
        if type(knowledge) is not dict:
            raise SporeError(f"knowledge must be a dict (a JSON object), got "
                             f"{type(knowledge).__name__}: {knowledge!r:.60}")
        agents = self._wiring().table.agents
        if to is not None and to not in agents:
            raise DeliveryError(f"no agent {to!r} in organism {self.organism!r}"
                                f"{did_you_mean(to, agents)}",
                                reason=Reason.UNKNOWN_AGENT)
        expires_at = (self.now() + timedelta(seconds=expires_in)
                      if expires_in is not None else None)
        if spore_type is SporeType.REQUEST and "id" not in extra:
            extra = {**extra, "id": new_request_id()}
        if extra:  # fields of the caller's own (id, metadata, ...)
            return Spore(knowledge=knowledge, spore_type=spore_type, from_agent=sender,
                         to_agent=to, channel=channel or "main", priority=priority,
                         expires_at=expires_at, **extra)
        return new_spore(knowledge=knowledge, spore_type=spore_type, from_agent=sender,
                         to_agent=to, channel=channel or "main", priority=priority,
                         expires_at=expires_at)

    async def submit(self, spore: Spore) -> Spore:
        """Admit a spore from outside; wait while the organism is full."""
        refusal = self._admitting()
        if refusal is not None:
            raise refusal
        sender = spore.from_agent
        self.screen(spore, self.outside if sender in self.outside else
                    self.outside | {sender})
        if sender not in self.outside and sender not in self._wiring().table.agents:
            self.outside.add(sender)  # what comes back to it is returned outside
        spore = self.stamp_outside(spore)
        intake = self.intake
        self.checked.add(id(spore))
        if not intake.try_admit(spore):
            try:
                await intake.admit(spore)
            except BaseException:
                self.checked.discard(id(spore))  # never admitted: its id may be reused
                raise
        if self.ledger.watched:  # told before any await, so before it can be handled
            self.ledger.admitted((spore,))
        if self.persist is not None:  # the sender hears back once it is on disk
            await self.persist((spore,))
        return spore

    async def request(self, spore: Spore, timeout: float, *,
                      parent: Spore | None = None, agent: str | None = None) -> Spore:
        """Send request ``spore`` (from outside, or from a handler handling ``parent``)
        and await its response."""
        future = self.requests.open(spore)
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                if parent is not None and agent is not None:
                    self.emit(spore, parent, agent)
                else:
                    await self.submit(spore)
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                raise  # the failure came from the responder, not from our clock
            timed_out = True
            raise RequestTimeout(
                f"no response from {spore.to_agent!r} to request {spore.id} within "
                f"{timeout}s") from None
        finally:
            self.requests.close(spore.id, timed_out=timed_out)

    # -- from handlers -----------------------------------------------------------------

    def emit(self, spore: Spore, parent: Spore, agent: str) -> None:
        """Feed what a running handler sends; refusals are dead letters and raise."""
        try:
            self.screen(spore, self.outside)
        except (SporeError, DeliveryError) as exc:
            self._refuse(spore, exc, agent)
            raise
        spore = self.stamp_sent(spore)
        self.checked.add(id(spore))  # the validate stage need not check it again
        self.ledger.feed((spore,), agent, parent)

    def _refuse(self, spore: Spore, error: Exception, agent: str) -> None:
        reason = reason_of(error)
        self.ledger.logger.warning(
            "refused: %s -> %s: %s", spore.from_agent, spore.to_agent or f"#{spore.channel}",
            describe_error(error), extra=spore_fields(spore, agent=agent, event="refused",
                                                      reason=reason))
        self.ledger.refused(spore, reason, error, agent=agent)
