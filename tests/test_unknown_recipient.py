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
