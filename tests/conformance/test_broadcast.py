"""Channel broadcasts, on every backend."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sporeflow.pipeline import Spore

from .harness import Harness


async def test_broadcast_reaches_every_subscriber_but_never_its_sender(
        backend: Harness) -> None:
    heard: dict[str, list[str]] = defaultdict(list)

    def listener(name: str) -> Any:
        async def listen(spore: Spore, ctx: Any) -> None:
            heard[name].append(spore.knowledge["text"])
            if spore.knowledge["text"] == "relay" and name == "first":
                await ctx.broadcast({"text": "from first"})

        return listen

    data = {"channels": {"news": {}},
            "agents": {name: {"handler": listener(name), "subscribe": ["news"]}
                       for name in ("first", "second", "third")}}
    async with backend.running(data) as org:
        await org.broadcast({"text": "hello"}, channel="news")
        await org.broadcast({"text": "relay"}, channel="news")
        await backend.quiet(org)
    assert sorted(heard["first"]) == ["hello", "relay"]
    assert sorted(heard["second"]) == sorted(heard["third"]) == ["from first", "hello", "relay"]
    channel = org.stats()["channels"]["news"]
    assert (channel["broadcasts"], channel["deliveries"]) == (3, 8)


async def test_emit_to_a_channel_fans_out_to_its_subscribers(backend: Harness) -> None:
    heard: dict[str, list[int]] = defaultdict(list)

    async def shout(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"]}

    def ear(name: str) -> Any:
        async def listen(spore: Spore, ctx: Any) -> None:
            heard[name].append(spore.knowledge["n"])

        return listen

    data = {"channels": {"loud": {}},
            "agents": {"shouter": {"handler": shout, "emit": {"channel": "loud"}},
                       "ear1": {"handler": ear("ear1"), "subscribe": ["loud"]},
                       "ear2": {"handler": ear("ear2"), "subscribe": ["loud"]}}}
    async with backend.running(data) as org:
        for n in range(20):
            await org.send("shouter", {"n": n})
        await backend.quiet(org)
    assert heard["ear1"] == heard["ear2"] == list(range(20))


async def test_broadcast_on_a_channel_nobody_hears_is_dead_lettered(backend: Harness) -> None:
    async def idle(spore: Spore, ctx: Any) -> None:
        return None

    data = {"channels": {"empty": {}}, "agents": {"idle": {"handler": idle}}}
    async with backend.running(data) as org:
        await org.broadcast({"x": 1}, channel="empty")
        await backend.quiet(org)
    assert [d.reason for d in org.dead_letters] == ["no subscribers"]
