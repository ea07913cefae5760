"""The journal on the ledger: what enters is written, what settles is marked done, and
each settlement's step is kept for ``sporeflow trace`` (see ``journal.lineage``).

A request someone in this process awaits (a handler's ``ctx.request``, an outside
caller's ``organism.request``) is never written: its asker does not outlive the
process (a replayed handler asks again; an outside caller hears of the stop), and
its response would reach nobody at the next start. A stop that interrupts one
dead-letters it ``shutdown``, as without a journal: it is not kept (``keeps``). The
hook is also where outside spores reach the journal (the ingress's ``Durable``), so
that this rule is the one of every way in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
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
        # The awaited requests not written, until they settle: none is kept at a stop.
        self._unwritten: set[str] = set()

    def _written(self, spores: Sequence[Spore]) -> list[Spore]:
        """``spores`` but the requests awaited here (see the module's docstring)."""
        kept = []
        for spore in spores:
            if self.requests.awaits(spore.id):
                self._unwritten.add(spore.id)
            else:
                kept.append(spore)
        return kept

    # -- the ingress's Durable: what outside senders send ---------------------------------

    def record(self, spores: tuple[Spore, ...]) -> Awaitable[None]:
        kept = self._written(spores)
        if kept or not spores:  # () asks for the next commit: a pipelined sender waits
            return self.journal.record(kept)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def add(self, spores: tuple[Spore, ...]) -> bool:
        return self.journal.add(self._written(spores))

    # -- the ledger's hook ----------------------------------------------------------------

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        if agent is None:
            return  # from outside: the ingress wrote them through record or add
        kept = self._written(spores)
        if kept:
            self.journal.add(kept)

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        # Done, and its replies recorded, in one transaction; replies get derived ids.
        self._unwritten.discard(spore.id)
        self.journal.trace(handled_step(spore, agent, latency, self.now()))
        self.journal.done(spore, replies, agent)

    def fanned_out(self, spore: Spore, targets: int) -> None:
        self.journal.count_fanout(spore.id, targets)  # done after the last delivery

    def ended(self, spore: Spore) -> None:
        self._unwritten.discard(spore.id)
        self.journal.trace(ended_step(spore, self.now()))
        self.journal.settle(spore)

    def dead_lettered(self, letter: DeadLetter) -> None:
        self._unwritten.discard(letter.spore.id)
        self.journal.trace(letter_step(letter))
        self.journal.dead(letter)

    def keeps(self, spore: Spore) -> bool:
        # What a stop interrupts stays pending, replayed at the next start; an awaited
        # request was never written: it is dead-lettered 'shutdown'.
        return spore.id not in self._unwritten
