"""Typed events from the ledger: attached while someone subscribes to the event bus."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.deadletters import URL_PASSWORDS, DeadLetter, Masker, error_text
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.observe.events import (
    EventBus,
    SporeAdmitted,
    SporeDeadLettered,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)
from sporeflow.steps import Spore

__all__ = ["EventHook"]


class EventHook(LedgerHook):
    def __init__(self, bus: EventBus, now: Callable[[], datetime],
                 masker: Masker = URL_PASSWORDS) -> None:
        self.bus = bus
        self.now = now
        self.masker = masker  # the organism's: an event's error is printed by `tail`

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        at = self.now()
        for spore in spores:
            self.bus.emit(SporeAdmitted(spore=spore, agent=agent, at=at))

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        at = self.now()
        self.bus.emit(SporeHandled(spore=spore, agent=agent, latency=latency,
                                   replies=len(replies), at=at))
        for reply in replies:
            self.bus.emit(SporeAdmitted(spore=reply, agent=agent, at=at))

    def failed(self, spore: Spore, agent: str, reason: str, error: BaseException,
               attempts: int) -> None:
        if reason == Reason.EXPIRED:  # it expired waiting in the agent's mailbox
            self.bus.emit(SporeExpired(spore=spore, agent=agent, at=self.now()))
        else:
            self.bus.emit(SporeFailed(spore=spore, agent=agent, reason=reason,
                                      error=error_text(error, self.masker),
                                      attempt=attempts, at=self.now()))

    def dead_lettered(self, letter: DeadLetter) -> None:
        if letter.reason == Reason.EXPIRED and letter.agent is None:  # the expire stage
            self.bus.emit(SporeExpired(spore=letter.spore, at=self.now()))
        self.bus.emit(SporeDeadLettered(spore=letter.spore, agent=letter.agent,
                                        reason=letter.reason, error=letter.error,
                                        at=self.now()))
