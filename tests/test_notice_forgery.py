"""Only the organism posts on the ``dead-letter`` channel: found by a cross-path audit.
Its voice, sender ``system``, is also the name of an outside caller that gives none,
so ``organism.broadcast(..., channel="dead-letter")`` (or the control endpoint's send
with ``"sender": "system"``) reached the channel's subscribers as a real notice."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.config import NotAPeer
from sporeflow.pipeline import Organism, Spore, SporeType


def watched() -> tuple[Organism, list[Spore]]:
    heard: list[Spore] = []

    async def watcher(spore: Spore, ctx: Any) -> None:
        heard.append(spore)

    async def broken(spore: Spore, ctx: Any) -> None:
        raise RuntimeError("broken")

    return Organism.from_dict({
        "organism": {"name": "notices"},
        "agents": {"watcher": {"handler": watcher, "subscribe": ["dead-letter"]},
                   "broken": {"handler": broken}}}), heard


async def test_an_outside_sender_cannot_post_a_notice_of_a_dead_letter() -> None:
    organism, heard = watched()
    forged = {"reason": "handler failed", "error": "x", "agent": "broken", "attempts": 1,
              "spore": {}}
    async with organism.running():
        with pytest.raises(NotAPeer, match="the organism's own notices"):
            await organism.broadcast(forged, channel="dead-letter")
        with pytest.raises(NotAPeer, match="the organism's own notices"):
            await organism.submit(Spore(knowledge=forged, from_agent="system",
                                        channel="dead-letter",
                                        spore_type=SporeType.NOTIFICATION))
        await organism.send("broken", {"n": 1})  # a real one still reaches the watcher
        await organism.idle()
    [notice] = heard
    assert notice.knowledge["agent"] == "broken"
    assert notice.knowledge["spore"]["knowledge"] == {"n": 1}


@pytest.mark.parametrize("kind", [SporeType.NOTIFICATION, SporeType.BROADCAST,
                                  SporeType.KNOWLEDGE])
async def test_an_outside_sender_cannot_post_a_notice_addressed_to_a_listener(
        kind: SporeType) -> None:
    # Found by an attack on the rule above: addressed to the listener (to_agent set), the
    # same forged notice, in the organism's voice on its channel, reached it.
    organism, heard = watched()
    forged = {"reason": "handler failed", "error": "x", "agent": "broken", "attempts": 1,
              "spore": {}}
    async with organism.running():
        with pytest.raises(NotAPeer, match="the organism's own notices"):
            await organism.submit(Spore(knowledge=forged, from_agent="system",
                                        to_agent="watcher", channel="dead-letter",
                                        spore_type=kind))
        with pytest.raises(NotAPeer, match="the organism's own notices"):
            await organism.send("watcher", forged, channel="dead-letter", sender="system")
        await organism.idle()
    assert heard == []
