"""The journal on the ledger: what enters is written, what settles is marked done."""

from __future__ import annotations

from collections.abc import Sequence

from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.requests import RequestBook
from sporeflow.pipeline.journal.store import Journal
from sporeflow.steps import Spore

__all__ = ["JournalHook"]


class JournalHook(LedgerHook):
    def __init__(self, journal: Journal, requests: RequestBook) -> None:
        self.journal = journal
        self.requests = requests

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
        self.journal.done(spore, replies)

    def fanned_out(self, spore: Spore, targets: int) -> None:
        self.journal.count_fanout(spore.id, targets)  # done after the last delivery

    def ended(self, spore: Spore) -> None:
        self.journal.settle(spore)

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.journal.dead(letter)

    def keeps(self, spore: Spore) -> bool:
        return True  # what a stop interrupts stays pending, replayed at the next start
