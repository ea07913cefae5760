"""The journal on the ledger: what enters is written, what settles is marked done, and
each settlement's step is kept for ``sporeflow trace`` (see ``journal.lineage``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.lineage import ended_step, handled_step, letter_step
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.journal.store import Journal
from sporeflow.steps import Spore

__all__ = ["JournalHook"]


class JournalHook(LedgerHook):
    def __init__(self, journal: Journal, requests: RequestBook,
                 now: Callable[[], datetime]) -> None:
        self.journal = journal
        self.requests = requests
        self.now = now

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        if agent is None:
            return  # from outside: the sender awaits Journal.record itself
        # A request a handler awaits is not kept: a replayed handler asks again.
        kept = [spore for spore in spores if not self.requests.awaits(spore.id)]
        if kept:
            self.journal.add(kept)

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        # Done, and its replies recorded, in one transaction; replies get derived ids.
        self.journal.trace(handled_step(spore, agent, latency, self.now()))
        self.journal.done(spore, replies, agent)

    def fanned_out(self, spore: Spore, targets: int) -> None:
        self.journal.count_fanout(spore.id, targets)  # done after the last delivery

    def ended(self, spore: Spore) -> None:
        self.journal.trace(ended_step(spore, self.now()))
        self.journal.settle(spore)

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.journal.trace(letter_step(letter))
        self.journal.dead(letter)

    def keeps(self, spore: Spore) -> bool:
        return True  # what a stop interrupts stays pending, replayed at the next start
