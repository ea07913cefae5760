"""Per-conversation budgets, on every backend: a spore is counted and charged once.

Found by the paths audit: over a broker a spore passed the budget stage twice (where it
was sent, and again where its agent took it from the broker), so each spore counted two
towards ``max_spores_per_thread`` and was charged its agent's ``cost`` twice (a broadcast
delivery: the whole channel's cost each); spores well within budget were dead-lettered
``budget`` and never handled.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sporeflow.pipeline import Spore
from sporeflow.steps import SporeType

from .harness import Harness


def recorder(ran: Counter[str], name: str) -> Any:
    async def handle(spore: Spore, ctx: Any) -> None:
        ran[name] += 1

    return handle


async def test_a_declared_cost_is_charged_once_per_spore(backend: Harness) -> None:
    ran: Counter[str] = Counter()
    data = {"agents": {"paid": {"handler": recorder(ran, "paid"), "cost": 3}},
            "limits": {"max_cost_per_thread": 10}}
    async with backend.running(data) as org:
        for n in range(4):  # 3 + 3 + 3 within 10; the fourth would take it to 12
            await org.submit(Spore(knowledge={"n": n}, to_agent="paid", thread_id="t-cost"))
        await backend.quiet(org)
    assert ran["paid"] == 3
    assert [(letter.reason, letter.spore.knowledge) for letter in org.dead_letters] == [
        ("budget", {"n": 3})]


async def test_a_broadcast_is_charged_what_its_subscribers_cost(backend: Harness) -> None:
    ran: Counter[str] = Counter()
    data = {"channels": {"news": {}},
            "agents": {name: {"handler": recorder(ran, name), "cost": 3, "subscribe": ["news"]}
                       for name in ("first", "second")},
            "limits": {"max_cost_per_thread": 10}}
    async with backend.running(data) as org:  # 3 + 3 within 10
        await org.submit(Spore(knowledge={}, spore_type=SporeType.BROADCAST, channel="news",
                               thread_id="t-broadcast"))
        await backend.quiet(org)
    assert ran == {"first": 1, "second": 1}
    assert list(org.dead_letters) == []


async def test_each_spore_counts_once_towards_max_spores_per_thread(backend: Harness) -> None:
    ran: Counter[str] = Counter()
    data = {"agents": {"sink": {"handler": recorder(ran, "sink")}},
            "limits": {"max_spores_per_thread": 3}}
    async with backend.running(data) as org:
        for n in range(4):
            await org.submit(Spore(knowledge={"n": n}, to_agent="sink", thread_id="t-count"))
        await backend.quiet(org)
    assert ran["sink"] == 3
    assert [(letter.reason, letter.spore.knowledge) for letter in org.dead_letters] == [
        ("budget", {"n": 3})]
