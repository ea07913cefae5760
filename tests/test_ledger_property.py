"""Every admitted spore is settled exactly once, whatever handlers do (issue 15).

Hypothesis draws a plan per spore: return, raise, time out, fan out, ask another
agent, or send with ``ctx.send``. A recording ledger hook counts settlements; after
``idle()`` each spore that entered settled once, and nothing is held.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sporeflow.pipeline import Context, Organism, Spore
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.ledger import LedgerHook

PLANS = st.sampled_from(["return", "raise", "timeout", "fanout", "request", "send", "none"])


class Recorder(LedgerHook):
    """Counts, per spore id, how it entered and how it was settled."""

    def __init__(self) -> None:
        self.entered: Counter[str] = Counter()
        self.settled: Counter[str] = Counter()

    def admitted(self, spores: Sequence[Spore], agent: str | None,
                 parent: Spore | None) -> None:
        self.entered.update(spore.id for spore in spores)

    def handled(self, spore: Spore, replies: list[Spore], agent: str, latency: float) -> None:
        self.settled[spore.id] += 1
        self.entered.update(reply.id for reply in replies)

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.settled[letter.spore.id] += 1

    def ended(self, spore: Spore) -> None:
        self.settled[spore.id] += 1


async def worker(spore: Spore, ctx: Context) -> Any:
    plan = spore.knowledge["plan"]
    if plan == "raise":
        raise RuntimeError("planned failure")
    if plan == "timeout":
        await asyncio.Event().wait()  # past the agent's timeout
    if plan == "fanout":
        return [{"n": i} for i in range(spore.knowledge["width"])]
    if plan == "request":
        answer = await ctx.request("helper", {}, timeout=5)
        return {"got": answer.knowledge}
    if plan == "send":
        await ctx.send("sink", {"sent": True})
        return None
    if plan == "none":
        return None
    return {"plain": True}


async def helper(spore: Spore, ctx: Context) -> dict[str, Any]:
    return {"help": True}


async def sink(spore: Spore, ctx: Context) -> None:
    return None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(st.tuples(PLANS, st.integers(1, 4)), min_size=1, max_size=12))
def test_every_admitted_spore_settles_exactly_once(plans: list[tuple[str, int]]) -> None:
    async def run() -> tuple[Recorder, dict[str, Any]]:
        organism = Organism.from_dict({"agents": {
            "worker": {"handler": worker, "emit": {"to": "sink"}, "concurrency": 3,
                       "timeout": "20ms", "retry": {"attempts": 2, "backoff": "1ms"}},
            "helper": {"handler": helper},
            "sink": {"handler": sink},
        }})
        recorder = Recorder()
        organism.add_hook(recorder)
        async with organism.running():
            for plan, width in plans:
                await organism.send("worker", {"plan": plan, "width": width})
            await asyncio.wait_for(organism.idle(), 10)
            return recorder, organism.stats()

    recorder, stats = asyncio.run(run())
    assert stats["totals"]["held"] == 0
    assert set(recorder.settled) == set(recorder.entered)
    assert all(count == 1 for count in recorder.settled.values()), recorder.settled
    assert len(recorder.entered) >= len(plans)
