"""Spores owed to agents a reload removed: accepted for them before it, not yet routed.

A removed agent finishes what it holds and what was already accepted for it. What the
intake still holds for it when the reload swaps the wiring (an outside send that
returned, a handler's send, a reply, those paged out included) is known here by its id
(a user's stage may pass on a copy), with the agent's retiring lane. Each still passes
the whole chain: route's unknown-agent branch asks :meth:`Owed.owes`, and
``hand_to_lanes`` takes the lane from :meth:`Owed.take`. Either is asked only of a spore
addressed to no agent, so an organism with nothing owed pays nothing per spore. A spore
owed that a stage refuses, or that is settled otherwise, is let go here (a ledger hook,
attached only while something is owed), so that :meth:`Owed.settled`, which a retiring
lane waits on before its agent stops, always returns.

A broadcast is not owed: it goes to its channel's subscribers when route takes it, as
after ``unsubscribe``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.ledger import Ledger, LedgerHook
from sporeflow.steps import AgentLane, Spore

__all__ = ["Owed"]


class Owed(LedgerHook):
    """What one run owes its retiring lanes (see the module docstring)."""

    def __init__(self, intake: Intake, ledger: Ledger) -> None:
        self._intake = intake
        self._ledger = ledger
        # The spore's id -> its retiring lane: by id, not by object, since a user's stage
        # before route may pass on a copy (``dataclasses.replace``) of what it was given.
        self._spores: dict[str, AgentLane] = {}
        self._count: dict[AgentLane, int] = {}  # spores owed, by lane
        self._paged: set[AgentLane] = set()  # lanes some of whose spores are paged out
        self._waiters: dict[AgentLane, asyncio.Event] = {}
        self._attached = False

    def hold(self, lanes: Mapping[str, AgentLane]) -> None:
        """Owe each retiring lane of ``lanes`` (by agent name) what the intake holds for
        its agent now: in memory at once, paged out as it is read back."""
        if not lanes:
            return

        def read_back(spores: list[Spore], last: bool) -> None:
            for spore in spores:
                lane = lanes[spore.to_agent]  # type: ignore[index]  # one of lanes'
                if lane in self._paged:  # not forgotten since
                    self._owe(spore, lane)
            if last:
                self._paged.difference_update(lanes.values())
                self._check(lanes.values())

        held, paged = self._intake.held_for(lanes.keys(), read_back)
        for spore in held:
            self._owe(spore, lanes[spore.to_agent])  # type: ignore[index]
        if paged:
            self._paged.update(lanes.values())
            self._attach()

    def forget(self, names: Iterable[str]) -> None:
        """Agents ``names`` are in the wiring again: what is owed to their old lanes goes
        to them (route finds them), and those lanes wait for it no more."""
        names = set(names)
        if not names or not (self._spores or self._paged):
            return
        for key, lane in list(self._spores.items()):
            if lane.name in names:
                self._let_go(key)
        lanes = {lane for lane in self._paged if lane.name in names}
        self._paged -= lanes
        self._check(lanes)

    async def settled(self, lane: AgentLane) -> None:
        """Return once nothing is owed to ``lane``: delivered, or settled otherwise."""
        while self._count.get(lane) or lane in self._paged:
            waiter = self._waiters.setdefault(lane, asyncio.Event())
            await waiter.wait()

    # -- asked by the chain, for a spore addressed to no agent -------------------------

    def owes(self, spore: Spore) -> bool:
        """Whether ``spore`` is owed to a retiring lane."""
        return type(spore.id) is str and spore.id in self._spores

    def take(self, spore: Spore, name: str) -> AgentLane | None:
        """The retiring lane of agent ``name`` that ``spore`` is owed to (no longer owed
        once taken), or None."""
        key = spore.id
        lane = self._spores.get(key) if type(key) is str else None
        if lane is None or lane.name != name:
            return None
        self._let_go(key)
        return lane

    # -- the ledger's hook: a spore owed, settled without reaching its lane ------------

    def released(self, spore: Spore) -> None:
        key = spore.id
        if type(key) is str and key in self._spores:
            self._let_go(key)

    # -- inside ------------------------------------------------------------------------

    def _owe(self, spore: Spore, lane: AgentLane) -> None:
        key = spore.id
        if type(key) is str and key not in self._spores:  # else validate refuses it
            self._spores[key] = lane
            self._count[lane] = self._count.get(lane, 0) + 1
            self._attach()

    def _let_go(self, key: str) -> None:
        lane = self._spores.pop(key)
        left = self._count[lane] - 1
        if left:
            self._count[lane] = left
        else:
            del self._count[lane]
            self._check((lane,))

    def _check(self, lanes: Iterable[AgentLane]) -> None:
        """Wake whoever waits on a lane of ``lanes`` owed nothing more; detach the hook
        once nothing is owed at all."""
        for lane in lanes:
            if not self._count.get(lane) and lane not in self._paged:
                waiter = self._waiters.pop(lane, None)
                if waiter is not None:
                    waiter.set()
        if self._attached and not self._spores and not self._paged:
            self._attached = False
            self._ledger.remove_hook(self)

    def _attach(self) -> None:
        if not self._attached:
            self._attached = True
            self._ledger.add_hook(self)
