"""Settling a delivery on the broker once the bridge is done with it: when (its
:class:`Ticket`: handled, and each spore its handler produced confirmed by the broker or
settled here) and how (ack it, give it back, or dead-letter it there, then ack it).

A delivery that came on a connection since lost can no longer be settled: the broker
gave it back to its queue when the connection went, and delivers it again, marked
redelivered (``Requeued``). That is the outage's doing, which the link logs once: it is
counted here, and logged at debug only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sporeflow.config import BrokerError
from sporeflow.pipeline.broker.backend import Backend, Inbound
from sporeflow.pipeline.broker.link import Requeued

__all__ = ["Settler", "Ticket"]


@dataclass(eq=False, slots=True)
class Ticket:
    """One delivery from the broker: acked once handled and its offspring confirmed."""

    message: Inbound
    agent: str
    pending: int = 0  # spores it produced, not yet confirmed or settled
    finished: bool = False
    settling: bool = False
    failure: tuple[str, str, int] | None = None  # (reason, error, attempts): dead-letter it


class Settler:
    """Settles deliveries of ``backend``, counting into the bridge's ``counts``; ``spawn``
    runs what must be awaited."""

    def __init__(self, backend: Backend, counts: dict[str, int], logger: logging.Logger,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.backend = backend
        self.counts = counts
        self.logger = logger
        self.spawn = spawn

    def when_done(self, ticket: Ticket) -> None:
        """Settle ``ticket``'s delivery once it is finished and owes nothing more: acked,
        or dead-lettered (its ``failure``), once."""
        if ticket.finished and ticket.pending <= 0 and not ticket.settling:
            ticket.settling = True
            if ticket.failure is None:
                self.ack_soon(ticket.message)
            else:
                self.spawn(self.dead_letter(ticket.message, ticket.agent, *ticket.failure))

    def ack_soon(self, message: Inbound) -> None:
        """Ack ``message``: at once where its backend batches acks (no task for it), else
        in a task."""
        try:
            if not message.ack_nowait():
                self.spawn(self.ack(message))
                return
        except BrokerError as exc:
            self.counts["ack_failures"] += 1
            self._report("could not ack a delivery (the broker will redeliver it): %s", exc)
            return
        self.counts["acked"] += 1

    async def ack(self, message: Inbound) -> None:
        try:
            await message.ack()
            self.counts["acked"] += 1
        except BrokerError as exc:
            self.counts["ack_failures"] += 1
            self._report("could not ack a delivery (the broker will redeliver it): %s", exc)

    async def give_back(self, message: Inbound) -> None:
        try:
            await message.nack(requeue=True)
        except BrokerError:
            pass  # gone with its connection: the broker gave it back already

    async def dead_letter(self, message: Inbound, agent: str | None, reason: str, error: str,
                          attempts: int = 0) -> None:
        """Put ``message`` in the broker's dead-letter queue, then ack it. A message of the
        reply queue (``agent`` None) was taken without an ack: it is put there only."""
        try:
            await self.backend.dead_letter(message, reason=reason, error=error, agent=agent,
                                           attempts=attempts)
            self.counts["dead_lettered"] += 1
        except BrokerError as exc:
            self._report("could not dead-letter a delivery on the broker (it is recorded "
                         "here): %s", exc)
        if agent is not None:
            await self.ack(message)

    def _report(self, text: str, exc: BrokerError) -> None:
        (self.logger.debug if isinstance(exc, Requeued) else self.logger.warning)(text, exc)
