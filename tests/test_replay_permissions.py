"""A replayed dead letter is delivered under the permission of its original delivery: a
broadcast's delivery to a subscriber reaches it again although the sender has ``peers``;
a spore that was never allowed stays refused, and the refusal is logged."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from sporeflow.config import NotAPeer, organism_from_dict
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.core.deadletters import LetterChoice
from sporeflow.pipeline.service import operations


def _organism(received: list[Spore], *, fail_first: bool = True) -> Organism:
    failures = [fail_first]

    async def triage(spore: Spore, ctx: Any) -> None:
        if spore.knowledge.get("direct"):
            try:
                await ctx.send("archiver", {"n": 2})
            except NotAPeer:
                pass  # its dead letter is kept
        else:
            await ctx.broadcast({"n": 1}, channel="news")

    async def archiver(spore: Spore, ctx: Any) -> None:
        if failures[0]:
            failures[0] = False
            raise RuntimeError("disk full")
        received.append(spore)

    async def reader(spore: Spore, ctx: Any) -> None:
        return None

    return Organism(organism_from_dict({
        "organism": {"name": "replays"}, "channels": {"news": {}},
        "agents": {"triage": {"handler": triage, "peers": ["reader"]},
                   "archiver": {"handler": archiver, "subscribe": ["news"]},
                   "reader": {"handler": reader, "subscribe": ["news"]}}}))


async def test_a_replayed_broadcast_delivery_reaches_its_subscriber() -> None:
    received: list[Spore] = []
    organism = _organism(received)
    async with organism.running():
        await organism.send("triage", {})
        await organism.idle()
        [letter] = organism.dead_letters
        assert (letter.agent, letter.reason) == ("archiver", "handler failed")
        replayed = await operations.replay(organism, LetterChoice())
        await organism.idle()
    assert replayed.problems == ()
    assert list(organism.dead_letters) == []
    [spore] = received
    assert (spore.from_agent, spore.knowledge) == ("triage", {"n": 1})


async def test_a_spore_never_allowed_stays_refused_at_replay_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    received: list[Spore] = []
    organism = _organism(received, fail_first=False)
    async with organism.running():
        await organism.send("triage", {"direct": True})  # triage may not address archiver
        await organism.idle()
        [letter] = organism.dead_letters
        assert letter.reason == "not a peer"
        with caplog.at_level(logging.WARNING):
            replayed = await operations.replay(organism, LetterChoice())
        await organism.idle()
    assert received == []
    [problem] = replayed.problems
    assert "NotAPeer: agent 'triage' may not address 'archiver'" in problem
    assert len(organism.dead_letters) == 1  # put back
    [record] = [r for r in caplog.records if "replay" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "may not address 'archiver'" in record.getMessage()


async def test_a_broadcast_typed_spore_reaches_no_agent_beyond_the_channel() -> None:
    # Calling a direct spore a broadcast gains nothing: only subscribers of its channel.
    received: list[Spore] = []
    organism = _organism(received, fail_first=False)
    async with organism.running():
        forged = Spore(knowledge={"n": 3}, spore_type=SporeType.BROADCAST,
                       from_agent="triage", to_agent="archiver", channel="main")
        with pytest.raises(NotAPeer):
            await organism.submit(forged)
        allowed = dataclasses.replace(forged, channel="news")
        await organism.submit(allowed)
        await organism.idle()
    assert [s.knowledge for s in received] == [{"n": 3}]
