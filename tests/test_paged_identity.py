"""Past ``limits.max_in_memory`` the intake pages spores out to disk and reads them back
as new objects. Whatever knew a spore by ``id()`` must not follow it to another object
that happens to take its address, or must keep it in memory (``Intake.never_page``)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker

from .conformance.harness import BACKSTOP, wait_for

MADE = 40
SENDS = 200  # enough for the allocator to hand a freed address to an invalid spore


async def test_a_spore_at_the_address_of_a_paged_out_send_is_still_checked() -> None:
    # Before: a handler's send, checked as it was sent, was paged out with its id() left
    # in the set of checked spores; the next spore made took that address and passed the
    # validate stage unchecked (here: knowledge holding NaN reached the sink).
    received: list[dict[str, Any]] = []

    async def fan(spore: Spore, ctx: Any) -> list[Spore]:
        invalid = []
        for n in range(SENDS):
            await ctx.send("sink", {"n": n})  # paged out: the organism holds 2 at most
            invalid.append(Spore(knowledge={"bad": math.nan}, to_agent="sink",
                                 from_agent="fan"))
        return invalid

    async def sink(spore: Spore, ctx: Any) -> None:
        received.append(spore.knowledge)

    spec = organism_from_dict({"limits": {"max_in_memory": 2},
                               "agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}})
    org = Organism(spec)
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("fan", {"go": True})
        await wait_for(lambda: org.stats()["totals"]["handled"] >= 1 + SENDS
                       and org.stats()["totals"]["held"] == 0)
    assert sorted(k.get("n", -1) for k in received) == list(range(SENDS))
    assert org.stats()["dead_letters"]["by_reason"] == {"invalid": SENDS}


async def test_paged_deliveries_and_products_are_handled_once_and_acked() -> None:
    # Before: the bridge knew them by id(); a delivery paged out came back unknown and was
    # published to its queue again while the first stayed unacked, the prefetch filled,
    # and the sink never handled one of them.
    handled: Counter[str] = Counter()

    async def fan(spore: Spore, ctx: Any) -> list[dict[str, Any]]:
        for n in range(MADE):
            await ctx.send("sink", {"sent": n})
        return [{"returned": n} for n in range(MADE)]

    async def sink(spore: Spore, ctx: Any) -> None:
        handled[spore.id] += 1

    spec = organism_from_dict({"limits": {"max_in_memory": 2},
                               "agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}})
    org = Organism(spec, backend=MemoryBackend(MemoryBroker()))
    async with org.running(drain_timeout=BACKSTOP):
        await org.send("fan", {"go": True})
        await wait_for(lambda: sum(handled.values()) >= 2 * MADE)
        await wait_for(lambda: org.stats()["broker"]["in_flight"] == 0
                       and org.stats()["broker"]["awaiting_confirms"] == 0)
        assert org.stats()["broker"]["acked"] == 1 + 2 * MADE  # fan's delivery too
    assert len(handled) == 2 * MADE
    assert set(handled.values()) == {1}
