"""Subscribing and unsubscribing agents at run time: routing, stats and graph follow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.pipeline import ConfigError, Organism, Spore
from sporeflow.pipeline.observe.graph import wiring


def news_organism(gate: asyncio.Event | None = None) -> Organism:
    async def hear(spore: Spore, ctx: Any) -> None:
        if gate is not None and spore.knowledge.get("wait"):
            await gate.wait()
        ctx.state.setdefault("heard", []).append(spore.knowledge["text"])

    return Organism.from_dict({
        "channels": {"news": {}, "secret": {"subscribe": ["a"]}},
        "agents": {"a": {"handler": hear, "subscribe": ["news"]}, "b": {"handler": hear}}})


def subscribe_edges(organism: Organism) -> set[tuple[str, str]]:
    return {(edge.source, edge.target) for edge in wiring(organism.spec).edges
            if edge.kind == "subscribe"}


async def test_subscribe_and_unsubscribe_change_who_a_broadcast_reaches() -> None:
    organism = news_organism()
    async with organism.running():
        assert organism.subscribe("b", "news") is True
        assert organism.subscribe("b", "news") is False  # already: nothing changes
        await organism.broadcast({"text": "one"}, channel="news")
        await organism.idle()
        assert organism.stats()["agents"]["b"]["subscribe"] == ["news"]
        assert ("channel:news", "agent:b") in subscribe_edges(organism)

        assert organism.unsubscribe("a", "news") is True
        assert organism.unsubscribe("a", "news") is False
        await organism.broadcast({"text": "two"}, channel="news")
        await organism.idle()
        heard = {name: organism.wiring().agents[name].state["heard"] for name in ("a", "b")}
        assert organism.stats()["agents"]["a"]["subscribe"] == []
        assert ("channel:news", "agent:a") not in subscribe_edges(organism)

        organism.unsubscribe("b", "news")
        await organism.broadcast({"text": "three"}, channel="news")
        await organism.idle()
    assert heard == {"a": ["one"], "b": ["one", "two"]}
    [letter] = list(organism.dead_letters)
    assert (letter.reason, letter.spore.knowledge) == ("no subscribers", {"text": "three"})


async def test_a_subscription_leaves_the_agents_lane_and_work_alone() -> None:
    gate = asyncio.Event()
    organism = news_organism(gate)
    async with organism.running():
        await organism.send("b", {"text": "held", "wait": True})
        await organism.send("b", {"text": "queued"})
        lane = organism.wiring().lanes["b"]
        organism.subscribe("b", "news")
        await organism.broadcast({"text": "new"}, channel="news")
        gate.set()
        await organism.idle()
        assert organism.wiring().lanes["b"] is lane
        assert organism.wiring().agents["b"].state["heard"] == ["held", "queued", "new"]


async def test_subscribing_before_start_applies_at_start() -> None:
    organism = news_organism()
    organism.subscribe("b", "news")
    async with organism.running():
        await organism.broadcast({"text": "hi"}, channel="news")
        await organism.idle()
        assert organism.wiring().agents["b"].state["heard"] == ["hi"]


@pytest.mark.parametrize(("agent", "channel", "message"), [
    ("b", "nwes", "agents.b.subscribe: unknown channel 'nwes' (did you mean 'news'?)"),
    ("c", "news", "agents.c: unknown agent 'c'"),
    ("b", "secret", "agent 'b' may not subscribe to 'secret': its subscribe list is ['a']"),
])
def test_wrong_subscriptions_are_refused_with_the_fix(agent: str, channel: str,
                                                      message: str) -> None:
    organism = news_organism()
    with pytest.raises(ConfigError) as caught:
        organism.subscribe(agent, channel)
    assert message in str(caught.value)
    assert organism.spec.agents["b"].subscribe == ()


async def test_agents_added_and_removed_from_python_take_the_reload_path() -> None:
    organism = news_organism()
    booted: list[dict[str, Any]] = []

    async def late(spore: Spore, ctx: Any) -> None:
        booted.append(spore.knowledge)

    async with organism.running():
        report = await organism.add_agent(
            "late", {"handler": late, "subscribe": ["news"], "boot": {"hello": 1}})
        assert (report.ok, report.added) == (True, ("late",))
        await organism.broadcast({"text": "x"}, channel="news")
        await organism.idle()
        assert booted == [{"hello": 1}, {"text": "x"}]
        assert "late" in organism.stats()["agents"]

        # A reference the organism cannot resolve is refused, nothing changes.
        with pytest.raises(ConfigError, match="nobody"):
            await organism.add_agent("bad", {"handler": late, "emit": {"to": "nobody"}})
        # Only agents listed in a channel's subscribe list may subscribe to it.
        with pytest.raises(ConfigError, match="secret"):
            await organism.add_agent("spy", {"handler": late, "subscribe": ["secret"]})
        assert set(organism.agents) == {"a", "b", "late"}

        report = await organism.remove_agent("late")
        assert report.removed == ("late",)
        await organism.send("a", {"text": "still here"})
        await organism.idle()
        assert "late" not in organism.stats()["agents"]
        assert organism.stats()["reload"]["count"] == 2
