"""Per-conversation budgets: spores and cost per thread, dead letters with reason 'budget'."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.pipeline import ConfigError, LimitExceeded, Organism, Spore
from sporeflow.pipeline.core.budget import ThreadBudget


async def bounce(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"n": spore.knowledge["n"] + 1}


def looping(**limits: Any) -> Organism:
    return Organism.from_dict({
        "agents": {"ping": {"handler": bounce, "emit": {"to": "pong"}},
                   "pong": {"handler": bounce, "emit": {"to": "ping"}},
                   "once": {"handler": bounce, "emit": {"to": "sink"}},
                   "sink": {"handler": lambda spore, ctx: None}},
        "limits": {"max_hops": 1000, **limits}})


async def test_loop_between_two_agents_is_stopped_at_its_budget() -> None:
    organism = looping(max_spores_per_thread=10)
    async with organism.running():
        first = await organism.send("ping", {"n": 0})
        other = await organism.send("once", {"n": 0})
        await organism.idle()
    [letter] = list(organism.dead_letters)
    assert letter.reason == "budget"
    assert letter.spore.thread == first.id
    assert letter.spore.knowledge == {"n": 10}  # the 11th spore of the conversation
    assert f"conversation {first.id} is stopped, over its budget: limits." \
           f"max_spores_per_thread is 10 and it made 11 spores" in letter.error
    stats = organism.stats()
    assert stats["agents"]["ping"]["handled"] + stats["agents"]["pong"]["handled"] == 10
    assert stats["agents"]["sink"]["handled"] == 1  # another conversation went on
    assert other.thread != first.thread
    assert stats["dead_letters"]["by_reason"] == {"budget": 1}


async def test_cost_spent_past_the_limit_stops_the_conversation() -> None:
    async def pricey(spore: Spore, ctx: Any) -> dict[str, Any]:
        ctx.state.setdefault("totals", []).append(ctx.spend(3))
        return {"n": spore.knowledge["n"] + 1}

    organism = Organism.from_dict({
        "agents": {"a": {"handler": pricey, "emit": {"to": "a"}}},
        "limits": {"max_cost_per_thread": 10, "max_hops": 1000}})
    async with organism.running():
        await organism.send("a", {"n": 0})
        await organism.idle()
        assert organism.wiring().agents["a"].state["totals"] == [3, 6, 9, 12]
    [letter] = list(organism.dead_letters)
    assert letter.reason == "budget"
    assert "limits.max_cost_per_thread is 10 and its cost reached 12" in letter.error


async def test_a_request_over_budget_fails_with_the_limit() -> None:
    async def costly(spore: Spore, ctx: Any) -> dict[str, Any]:
        ctx.spend(5)
        return {"ok": True}

    organism = Organism.from_dict({"agents": {"a": {"handler": costly}},
                                   "limits": {"max_cost_per_thread": 1.5}})
    async with organism.running():
        with pytest.raises(LimitExceeded, match="max_cost_per_thread is 1.5 and its cost "
                                                "reached 5"):
            await organism.request("a", {}, timeout=5)


async def test_without_limits_nothing_is_counted_per_spore() -> None:
    organism = looping()
    async with organism.running():
        await organism.send("once", {"n": 0})
        await organism.idle()
    assert not organism._budget.enforcing
    assert len(organism._budget) == 0


def test_tallies_are_kept_for_the_most_recent_threads_only() -> None:
    budget = ThreadBudget(max_spores=2, capacity=3)
    spores = {name: Spore(knowledge={}, thread_id=name) for name in "abcde"}
    for name in "abcd":
        assert budget.refusal(spores[name]) is None
    assert len(budget) == 3  # 'a' was evicted, the least recently active
    assert budget.refusal(spores["b"]) is None  # b: 2 spores, at its limit
    refusal = budget.refusal(spores["b"])
    assert refusal is not None
    assert "max_spores_per_thread is 2 and it made 3 spores" in str(refusal)
    assert budget.stopped == 1


def test_negative_spend_and_zero_limit_are_refused() -> None:
    with pytest.raises(ValueError, match="a cost cannot be negative"):
        ThreadBudget(max_cost=1).spend("t", -1)
    with pytest.raises(ConfigError, match="limits.max_cost_per_thread"):
        looping(max_cost_per_thread=0)
