"""A handler that sends or requests to an agent that does not exist hears of it at the
call, the same way for both: DeliveryError naming the agent, with a did-you-mean."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.config import DeliveryError, organism_from_dict
from sporeflow.pipeline import Organism, Spore


def _organism(handler: Any) -> Organism:
    async def archive(spore: Spore, ctx: Any) -> None:
        return None

    return Organism(organism_from_dict({
        "organism": {"name": "typo"},
        "agents": {"writer": {"handler": handler}, "archiver": {"handler": archive}}}))


@pytest.mark.parametrize("call", ["send", "request"])
async def test_send_and_request_to_an_unknown_agent_raise_the_same_error(call: str) -> None:
    caught: list[BaseException] = []

    async def writer(spore: Spore, ctx: Any) -> None:
        try:
            if call == "send":
                await ctx.send("archivr", {"x": 1})
            else:
                await ctx.request("archivr", {"x": 1}, timeout=5)
        except DeliveryError as exc:
            caught.append(exc)

    organism = _organism(writer)
    async with organism.running():
        await organism.send("writer", {"go": True})
        await organism.idle()
    [error] = caught
    assert str(error).startswith("spore ")
    assert str(error).endswith("from 'writer' is addressed to 'archivr': no agent 'archivr' "
                               "in organism 'typo' (did you mean 'archiver'?)")
    assert error.reason == "unknown agent"
    [letter] = organism.dead_letters  # the refused spore is kept, as any refusal
    assert letter.reason == "unknown agent"
    assert letter.spore.to_agent == "archivr"


async def test_a_broadcast_on_an_undeclared_channel_raises_at_the_call_from_anywhere() -> None:
    caught: list[BaseException] = []

    async def writer(spore: Spore, ctx: Any) -> None:
        try:
            await ctx.broadcast({"x": 1}, channel="newz")
        except DeliveryError as exc:
            caught.append(exc)

    async def reader(spore: Spore, ctx: Any) -> None:
        return None

    organism = Organism(organism_from_dict({
        "organism": {"name": "typo"}, "channels": {"news": {}},
        "agents": {"writer": {"handler": writer},
                   "reader": {"handler": reader, "subscribe": ["news"]}}}))
    async with organism.running():
        with pytest.raises(DeliveryError, match=r"channel 'newz'.*did you mean 'news'") as outside:
            await organism.broadcast({"x": 1}, channel="newz")
        assert outside.value.reason == "unknown channel"
        await organism.send("writer", {"go": True})
        await organism.idle()
    [error] = caught  # a handler hears of it too, as of an unknown agent
    assert error.reason == "unknown channel"
    [letter] = organism.dead_letters  # the handler's is kept, as any refusal of its sends
    assert (letter.reason, letter.spore.channel) == ("unknown channel", "newz")
