"""Per-conversation budgets: a thread that makes too many spores, or costs too much, stops.

``limits.max_spores_per_thread`` bounds how many spores one conversation (one
``thread_id``) may put through the chain; ``limits.max_cost_per_thread``
bounds the cost its handlers declare with ``ctx.spend(n)``. Once a thread is
over either, each further spore of it is dead-lettered with reason
``budget``, its error naming the limit and the value reached.

Tallies are kept for the most recently active ``capacity`` threads only (an
LRU), so memory stays bounded however many conversations come and go; a
thread evicted that way starts afresh if it ever comes back. Without either
limit the organism does not put the stage in its chain at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator

from aiostream import pipable_operator, streamcontext

from sporeflow.config import LimitExceeded, Limits
from sporeflow.config.reasons import Reason
from sporeflow.steps import Batch, Reject, Spore

__all__ = ["ThreadBudget", "enforce_budget"]

_THREADS_TRACKED = 10_000


class _Tally:
    __slots__ = ("cost", "over", "spores")

    def __init__(self) -> None:
        self.spores = 0
        self.cost = 0.0
        self.over: str | None = None  # why the thread was stopped, once it is


class ThreadBudget:
    """Spore counts and costs of the most recently active conversations."""

    def __init__(self, *, max_spores: int | None = None, max_cost: float | None = None,
                 capacity: int = _THREADS_TRACKED) -> None:
        self.max_spores = max_spores
        self.max_cost = max_cost
        self.capacity = capacity
        self.stopped = 0  # threads stopped so far
        self._threads: OrderedDict[str, _Tally] = OrderedDict()

    @classmethod
    def from_limits(cls, limits: Limits) -> ThreadBudget:
        return cls(max_spores=limits.max_spores_per_thread,
                   max_cost=limits.max_cost_per_thread)

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
        tally = self._tally(thread)
        tally.cost += amount
        if self.max_cost is not None and tally.over is None and tally.cost > self.max_cost:
            tally.over = (f"limits.max_cost_per_thread is {self.max_cost:g} and its cost "
                          f"reached {tally.cost:g}")
            self.stopped += 1
        return tally.cost

    def cost(self, thread: str) -> float:
        """``thread``'s cost so far (0 for a thread not tracked)."""
        tally = self._threads.get(thread)
        return tally.cost if tally is not None else 0.0

    def refusal(self, spore: Spore) -> LimitExceeded | None:
        """Count ``spore`` for its thread; return why it is refused, or None."""
        thread = spore.thread
        tally = self._tally(thread)
        tally.spores += 1
        if tally.over is None and self.max_spores is not None and (
                tally.spores > self.max_spores):
            tally.over = (f"limits.max_spores_per_thread is {self.max_spores} and it made "
                          f"{tally.spores} spores")
            self.stopped += 1
        if tally.over is None:
            return None
        return LimitExceeded(f"conversation {thread} is stopped, over its budget: "
                             f"{tally.over}; spore {spore.id} from {spore.from_agent!r} is "
                             f"refused")


@pipable_operator
async def enforce_budget(source: AsyncIterable[Batch], *, budget: ThreadBudget,
                         on_reject: Reject) -> AsyncIterator[Batch]:
    """Count each spore for its thread; reject (reason ``budget``) those of stopped threads."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            kept: Batch = []
            for spore in batch:
                refusal = budget.refusal(spore)
                if refusal is None:
                    kept.append(spore)
                else:
                    on_reject(spore, Reason.BUDGET, refusal)
            if kept:
                yield kept
