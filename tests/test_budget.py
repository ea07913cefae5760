"""Per-conversation budgets: spores and cost per thread, dead letters with reason 'budget'."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.config import organism_from_text
from sporeflow.pipeline import ConfigError, LimitExceeded, Organism, Spore, ThreadBudgetReached
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


async def test_a_returned_spore_naming_a_thread_of_its_own_stays_in_its_parents() -> None:
    """Found by an attacker: a handler returning Spore(thread_id=<new>) escaped its
    conversation's budget (a fan-out of 8,191 spores, stopped only by max_hops), where
    ctx.send could not."""
    async def fan(spore: Spore, ctx: Any) -> list[Spore]:
        n = spore.knowledge["n"]
        return [Spore(knowledge={"n": n + 1}, to_agent="fan", thread_id=f"fresh-{n}-{k}")
                for k in range(2)]

    organism = Organism.from_dict({"agents": {"fan": {"handler": fan}},
                                   "limits": {"max_spores_per_thread": 20, "max_hops": 12}})
    async with organism.running():
        first = await organism.send("fan", {"n": 0})
        await organism.idle()
    handled = organism.stats()["agents"]["fan"]["handled"]
    assert handled == 20  # the budget's, not 2**12 - 1
    letters = list(organism.dead_letters)
    assert {letter.reason for letter in letters} == {"budget"}
    assert {letter.spore.thread for letter in letters} == {first.id}


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


# -- warnings as a thread nears its budget ---------------------------------------------


def budget_events(organism: Organism) -> list[ThreadBudgetReached]:
    seen: list[ThreadBudgetReached] = []
    organism.events.subscribe(
        lambda event: seen.append(event) if isinstance(event, ThreadBudgetReached) else None,
        spores=False)
    return seen


async def test_a_thread_nearing_its_cost_limit_is_warned_once_per_threshold(
        caplog: pytest.LogCaptureFixture) -> None:
    async def tenner(spore: Spore, ctx: Any) -> dict[str, Any]:
        ctx.spend(10)
        return {"n": spore.knowledge["n"] + 1}

    organism = Organism.from_dict({
        "agents": {"a": {"handler": tenner, "emit": {"to": "a"}}},
        "limits": {"max_cost_per_thread": 100, "max_hops": 1000}})
    events = budget_events(organism)
    async with organism.running():
        first = await organism.send("a", {"n": 0})
        second = await organism.send("a", {"n": 0})
        await organism.idle()
    for thread in (first.thread, second.thread):  # each conversation is warned on its own
        mine = [event for event in events if event.thread_id == thread]
        assert [(e.percent, e.used) for e in mine] == [(75, 80), (90, 90), (95, 100)]
        assert {(e.limit, e.maximum) for e in mine} == {("max_cost_per_thread", 100)}
    assert len(events) == 6
    assert events[0].to_dict()["event"] == "thread-budget"
    lines = [r.getMessage() for r in caplog.records if "of limits.max_cost" in r.getMessage()]
    assert f"conversation {first.thread} reached 75% of limits.max_cost_per_thread: 80 of " \
           f"100" in lines
    assert len(lines) == 6


async def test_spore_count_warnings_follow_the_thresholds_of_organism_yaml() -> None:
    organism = looping(max_spores_per_thread=10, budget_warnings=[50])
    events = budget_events(organism)
    async with organism.running():
        await organism.send("ping", {"n": 0})
        await organism.idle()
    assert [(e.limit, e.percent, e.used) for e in events] == [
        ("max_spores_per_thread", 50, 5)]

    quiet = looping(max_spores_per_thread=10, budget_warnings=[])
    none = budget_events(quiet)
    async with quiet.running():
        await quiet.send("ping", {"n": 0})
        await quiet.idle()
    assert none == []


@pytest.mark.parametrize("warnings", [[0], [100], [75, 75], ["75%"]])
def test_budget_warnings_out_of_range_are_refused(warnings: Any) -> None:
    with pytest.raises(ConfigError, match="budget_warnings"):
        looping(max_spores_per_thread=10, budget_warnings=warnings)


def test_warnings_jumped_over_are_all_told_once() -> None:
    told: list[float] = []
    budget = ThreadBudget(max_cost=100, warnings=(95, 75, 90),
                          on_warning=lambda warning: told.append(warning.percent))
    budget.spend("t", 50)
    budget.spend("t", 46)  # from 50% to 96%: all three, in order
    budget.spend("t", 1)
    assert told == [75, 90, 95]


# -- declared costs: refused before the handler runs --------------------------------


async def test_a_spore_whose_declared_cost_would_cross_the_budget_never_runs() -> None:
    ran: list[int] = []

    async def start(spore: Spore, ctx: Any) -> None:
        for n in range(3):
            await ctx.send("pricey", {"n": n})

    async def pricey(spore: Spore, ctx: Any) -> None:
        ran.append(spore.knowledge["n"])

    organism = Organism.from_dict({
        "agents": {"start": {"handler": start, "emit": {"to": "pricey"}},
                   "pricey": {"handler": pricey, "cost": 40}},
        "limits": {"max_cost_per_thread": 100}})
    events = budget_events(organism)
    async with organism.running():
        sent = await organism.send("start", {})
        await organism.idle()
    assert sorted(ran) == [0, 1]  # 40 + 40; a third would make 120
    [letter] = list(organism.dead_letters)
    assert letter.reason == "budget"
    assert letter.spore.thread == sent.thread
    assert (f"would take conversation {sent.thread} past its budget: agents.pricey.cost is "
            f"40, its cost is 80 so far and limits.max_cost_per_thread is 100; it is refused "
            f"before it runs") in letter.error
    assert [(e.percent, e.used) for e in events] == [(75, 80)]
    assert organism._budget.cost(sent.thread) == 80  # the refused spore is not charged


async def test_a_broadcast_costs_what_every_agent_it_reaches_declares() -> None:
    heard: list[tuple[str, int]] = []

    async def caster(spore: Spore, ctx: Any) -> None:
        for n in (1, 2):
            await ctx.broadcast({"n": n}, channel="news")

    organism = Organism.from_dict({
        "channels": {"news": {}},
        "agents": {"caster": {"handler": caster},
                   **{name: {"handler": lambda spore, ctx, name=name: heard.append(
                       (name, spore.knowledge["n"])), "subscribe": ["news"], "cost": 30}
                      for name in ("a", "b")}},
        "limits": {"max_cost_per_thread": 100}})
    async with organism.running():
        sent = await organism.send("caster", {})
        await organism.idle()
    assert sorted(heard) == [("a", 1), ("b", 1)]  # the second, 60 more, reaches no one
    [letter] = list(organism.dead_letters)
    assert letter.reason == "budget"
    assert "the agents it reaches on channel 'news' cost 60 in all (a, b), its cost is 60 " \
           "so far" in letter.error
    assert organism._budget.cost(sent.thread) == 60


def test_declared_costs_are_checked_when_loaded() -> None:
    with pytest.raises(ConfigError, match="cost"):
        Organism.from_dict({"agents": {"a": {"handler": bounce, "cost": 0}}})


@pytest.mark.parametrize("amount", [float("nan"), float("inf")])
def test_a_cost_that_is_no_finite_number_is_refused(amount: float) -> None:
    # Before: ctx.spend(nan) passed the `amount < 0` check; the tally became NaN, and
    # `cost > max_cost` was never true again: the conversation's budget was off.
    budget = ThreadBudget(max_cost=20)
    with pytest.raises(ValueError, match=r"a cost is a finite number"):
        budget.spend("t", amount)
    assert budget.cost("t") == 0


async def test_spending_nan_does_not_lift_a_conversations_budget() -> None:
    ran: list[int] = []

    async def first(spore: Spore, ctx: Any) -> None:
        try:
            ctx.spend(float("nan"))
        finally:
            for i in range(10):
                await ctx.send("worker", {"i": i})

    async def worker(spore: Spore, ctx: Any) -> None:
        ran.append(spore.knowledge["i"])

    org = Organism.from_dict({"agents": {"first": {"handler": first},
                                         "worker": {"handler": worker, "cost": 5}},
                              "limits": {"max_cost_per_thread": 20}})
    async with org.running(drain_timeout=2):
        await org.send("first", {})
        await asyncio.wait_for(org.idle(), 10)
    assert len(ran) == 4, f"{len(ran)} spores of cost 5 ran within a budget of 20"


@pytest.mark.parametrize(("setting", "column"), [
    ("agents: {a: {handler: operator:eq, cost: .nan}}", 42),
    ("agents: {a: {handler: operator:eq, cost: .inf}}", 42),
    ("limits: {max_cost_per_thread: .nan}\nagents: {}", 31)])
def test_a_cost_in_the_organism_file_that_is_no_finite_number_is_refused_at_its_line(
        setting: str, column: int) -> None:
    with pytest.raises(ConfigError) as caught:
        organism_from_text(setting + "\n", name="o.yaml")
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith(f"o.yaml:1:{column}: "), problem
    assert "is no finite number; write" in problem, problem
