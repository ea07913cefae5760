"""Per-conversation budgets: a thread that makes too many spores, or costs too much, stops.

``limits.max_spores_per_thread`` bounds how many spores one conversation (one
``thread_id``) may put through the chain; ``limits.max_cost_per_thread``
bounds its cost: what its handlers spend with ``ctx.spend(n)``, and what the
agents its spores go to declare (``agents.X.cost``). Once a thread is over
either, each further spore of it is dead-lettered with reason ``budget``, its
error naming the limit and the value reached.

A declared cost is charged as the spore passes this stage, before any handler
runs: a spore whose cost would take its thread past ``max_cost_per_thread`` is
refused then (reason ``budget``) and the thread goes on within its budget. A
broadcast costs what the agents it reaches declare, together.

As a thread's spores or cost pass each of ``limits.budget_warnings`` (percent of
its limit: 75, 90, 95 by default), ``on_warning`` is told once (a
:class:`BudgetWarning`; the organism makes it a typed event and a log line).

Over a broker a spore for one of the organism's agents passes the chain twice: where it
is sent, then where its agent takes it from the broker (any process's, as untrusted
input). It is counted and charged once, on that second pass, each delivery of a
broadcast its own agent's cost (:func:`charged_here`).

Tallies are kept for the most recently active ``capacity`` threads only (an
LRU), so memory stays bounded however many conversations come and go; a
thread evicted that way starts afresh if it ever comes back. Without either
limit the organism does not put the stage in its chain at all.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiostream import pipable_operator, streamcontext

from sporeflow.config import LimitExceeded, Limits
from sporeflow.config.model import DEAD_LETTER_CHANNEL, SYSTEM_SENDER
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.core.wiring import WiringSnapshot
from sporeflow.steps import Batch, Reject, Spore, SporeType

__all__ = ["BudgetWarning", "Charge", "ThreadBudget", "charged_here", "enforce_budget",
           "expected_cost"]

_THREADS_TRACKED = 10_000
MAX_SPORES = "max_spores_per_thread"
MAX_COST = "max_cost_per_thread"


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """Conversation ``thread`` reached ``percent`` of ``limits.<limit>``: ``used`` of
    ``maximum``."""

    thread: str
    limit: str
    percent: float
    used: float
    maximum: float


@dataclass(frozen=True, slots=True)
class Charge:
    """What a spore costs its thread before it runs, and which declaration says so."""

    amount: float
    why: str


class _Tally:
    __slots__ = ("cost", "cost_warned", "over", "spores", "spores_warned")

    def __init__(self) -> None:
        self.spores = 0
        self.cost = 0.0
        self.over: str | None = None  # why the thread was stopped, once it is
        # How many of the (ascending) warning thresholds each limit has passed.
        self.spores_warned = 0
        self.cost_warned = 0


class ThreadBudget:
    """Spore counts and costs of the most recently active conversations."""

    def __init__(self, *, max_spores: int | None = None, max_cost: float | None = None,
                 capacity: int = _THREADS_TRACKED, warnings: Sequence[float] = (),
                 on_warning: Callable[[BudgetWarning], None] | None = None) -> None:
        self.max_spores = max_spores
        self.max_cost = max_cost
        self.capacity = capacity
        self.warnings = tuple(sorted(warnings))
        self.on_warning = on_warning
        self.stopped = 0  # threads stopped so far
        self._threads: OrderedDict[str, _Tally] = OrderedDict()

    @classmethod
    def from_limits(cls, limits: Limits, on_warning: Callable[[BudgetWarning], None] | None
                    = None) -> ThreadBudget:
        return cls(max_spores=limits.max_spores_per_thread,
                   max_cost=limits.max_cost_per_thread, warnings=limits.budget_warnings,
                   on_warning=on_warning)

    @property
    def enforcing(self) -> bool:
        """Whether any limit is set (else the chain has no budget stage)."""
        return self.max_spores is not None or self.max_cost is not None

    def __len__(self) -> int:
        return len(self._threads)

    def _tally(self, thread: str) -> _Tally:
        threads = self._threads
        tally = threads.get(thread)
        if tally is None:
            tally = threads[thread] = _Tally()
            if len(threads) > self.capacity:
                threads.popitem(last=False)  # the least recently active conversation
        else:
            threads.move_to_end(thread)
        return tally

    def spend(self, thread: str, amount: float) -> float:
        """Add ``amount`` to ``thread``'s cost; return its total so far."""
        if amount < 0:
            raise ValueError(f"ctx.spend({amount!r}): a cost cannot be negative")
        if not math.isfinite(amount):  # a NaN tally is never past the limit again
            raise ValueError(f"ctx.spend({amount!r}): a cost is a finite number; check how "
                             f"it was computed (a division by zero, a missing price)")
        tally = self._tally(thread)
        tally.cost += amount
        if self.max_cost is not None:
            tally.cost_warned = self._warn(thread, MAX_COST, tally.cost, self.max_cost,
                                           tally.cost_warned)
            if tally.over is None and tally.cost > self.max_cost:
                tally.over = (f"limits.max_cost_per_thread is {self.max_cost:g} and its cost "
                              f"reached {tally.cost:g}")
                self.stopped += 1
        return tally.cost

    def _warn(self, thread: str, limit: str, used: float, maximum: float, passed: int) -> int:
        """Tell of each threshold ``used`` has now reached; return how many it has."""
        warnings = self.warnings
        while passed < len(warnings) and used * 100 >= warnings[passed] * maximum:
            if self.on_warning is not None:
                self.on_warning(BudgetWarning(thread, limit, warnings[passed], used, maximum))
            passed += 1
        return passed

    def cost(self, thread: str) -> float:
        """``thread``'s cost so far (0 for a thread not tracked)."""
        tally = self._threads.get(thread)
        return tally.cost if tally is not None else 0.0

    def refusal(self, spore: Spore, charge: Charge | None = None) -> LimitExceeded | None:
        """Count ``spore`` for its thread and charge it ``charge``; return why it is
        refused (its thread is stopped, or the charge would take it past its cost limit),
        or None. A refused spore is not charged."""
        thread = spore.thread
        tally = self._tally(thread)
        tally.spores += 1
        if self.max_spores is not None:
            tally.spores_warned = self._warn(thread, MAX_SPORES, tally.spores,
                                             self.max_spores, tally.spores_warned)
            if tally.over is None and tally.spores > self.max_spores:
                tally.over = (f"limits.max_spores_per_thread is {self.max_spores} and it made "
                              f"{tally.spores} spores")
                self.stopped += 1
        if tally.over is not None:
            return LimitExceeded(f"conversation {thread} is stopped, over its budget: "
                                 f"{tally.over}; spore {spore.id} from {spore.from_agent!r} "
                                 f"is refused")
        if charge is None:
            return None
        if self.max_cost is not None and tally.cost + charge.amount > self.max_cost:
            return LimitExceeded(
                f"spore {spore.id} from {spore.from_agent!r} would take conversation {thread} "
                f"past its budget: {charge.why}, its cost is {tally.cost:g} so far and "
                f"limits.max_cost_per_thread is {self.max_cost:g}; it is refused before it "
                f"runs")
        tally.cost += charge.amount
        if self.max_cost is not None:
            tally.cost_warned = self._warn(thread, MAX_COST, tally.cost, self.max_cost,
                                           tally.cost_warned)
        return None


def declared_costs(wiring: WiringSnapshot) -> dict[str, float]:
    """The agents of ``wiring`` that declare a cost (``agents.X.cost``), and what it is;
    those a reload removed too, while they still settle what was accepted for them."""
    specs = [*wiring.retiring.items(), *((name, a.spec) for name, a in wiring.agents.items())]
    return {name: spec.cost for name, spec in specs if spec.cost is not None}


def charged_here(spore: Spore, wiring: WiringSnapshot | None, queue: str | None, *,
                 brokered: bool) -> bool:
    """Whether the budget stage counts and charges ``spore`` on this pass.

    The organism's notice of a dead letter (on the ``dead-letter`` channel) is no work of
    the conversation it names: never counted, so that a thread stopped by its budget is
    heard of, and a listener there changes no thread's budget. Over a broker
    (``brokered``; ``queue``: the agent whose queue it came from, None when it did not) a
    spore for an agent of the organism is published and comes back through the chain
    where that agent takes it from the broker: it is counted there, once, and not where
    it was sent. The rest (responses, spores to outside senders and to external agents)
    are counted here."""
    if (spore.channel == DEAD_LETTER_CHANNEL and spore.from_agent == SYSTEM_SENDER
            and spore.to_agent is None and spore.spore_type is SporeType.NOTIFICATION):
        return False
    if (not brokered or wiring is None or queue is not None
            or spore.spore_type is SporeType.RESPONSE):
        return True
    ours = wiring.spec.agents
    target = spore.to_agent
    if target is not None:
        return target not in ours
    return not any(name in ours and name != spore.from_agent
                   for name in wiring.table.subscribers.get(spore.channel, ()))


def expected_cost(spore: Spore, costs: Mapping[str, float],
                  subscribers: Mapping[str, Sequence[str]],
                  queue: str | None = None) -> Charge | None:
    """What ``spore`` will cost its thread by the agents' declared ``costs``: the cost of
    its recipient, or of every agent its broadcast reaches (taken from agent ``queue``'s
    queue on a broker: that agent's alone); None when nothing is declared (a response
    goes to whoever awaits it, no handler)."""
    if spore.spore_type is SporeType.RESPONSE:
        return None
    target = queue if queue is not None else spore.to_agent
    if target is not None:
        cost = costs.get(target)
        return None if cost is None else Charge(cost, f"agents.{target}.cost is {cost:g}")
    payers = [name for name in subscribers.get(spore.channel, ())
              if name in costs and name != spore.from_agent]
    if not payers:
        return None
    total = sum(costs[name] for name in payers)
    return Charge(total, f"the agents it reaches on channel {spore.channel!r} cost "
                         f"{total:g} in all ({', '.join(payers)})")


@pipable_operator
async def enforce_budget(source: AsyncIterable[Batch], *, budget: ThreadBudget,
                         on_reject: Reject, wiring: Callable[[], WiringSnapshot] | None = None,
                         arrived: Callable[[Spore], str | None] | None = None,
                         ) -> AsyncIterator[Batch]:
    """Count each spore for its thread and charge it what its recipients declare; reject
    (reason ``budget``) those of stopped threads and those that would stop theirs.
    ``arrived``: over a broker, the agent whose queue a spore came from (see
    :func:`charged_here`)."""
    seen: WiringSnapshot | None = None
    costs: dict[str, float] = {}
    async with streamcontext(source) as batches:
        async for batch in batches:
            if wiring is not None and (current := wiring()) is not seen:
                seen, costs = current, declared_costs(current)  # once per wiring
            subscribers = seen.table.subscribers if seen is not None else {}
            kept: Batch = []
            for spore in batch:
                queue = arrived(spore) if arrived is not None else None
                if not charged_here(spore, seen, queue, brokered=arrived is not None):
                    kept.append(spore)
                    continue
                charge = expected_cost(spore, costs, subscribers, queue) if costs else None
                refusal = budget.refusal(spore, charge)
                if refusal is None:
                    kept.append(spore)
                else:
                    on_reject(spore, Reason.BUDGET, refusal)
            if kept:
                yield kept
