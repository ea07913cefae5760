"""The ids handlers' output gets: one rule (``steps.ids``), wherever output is made."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sporeflow.config import Emit
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.steps import shape_replies
from sporeflow.steps.ids import derived_id
from sporeflow.steps.replies import shape_replies_off_loop

from .conformance.harness import wait_for

PARENT = Spore(knowledge={}, from_agent="outside", to_agent="a", id="p-1")


def test_the_rule_depends_on_parent_agent_and_position_only() -> None:
    assert derived_id("p-1", "a", 0) == derived_id("p-1", "a", 0)
    ids = {derived_id(p, a, n) for p in ("p-1", "p-2") for a in ("a", "b")
           for n in (0, 1, "s0", "s1")}
    assert len(ids) == 16
    assert all(i.startswith("r-") and len(i) == 20 for i in ids)


def test_returned_output_is_numbered_across_dicts_spores_and_xml() -> None:
    result = [{"n": 0}, Spore(knowledge={"n": 1}, id="chosen-by-the-handler"),
              "<a>2</a><b>3</b>", None, {"n": 4}]
    shaped = shape_replies(result, parent=PARENT, agent="a", emit=Emit(to="b"))
    assert [s.id for s in shaped] == [derived_id("p-1", "a", n) for n in range(5)]
    again = shape_replies(result, parent=PARENT, agent="a", emit=Emit(to="b"))
    assert [s.id for s in again] == [s.id for s in shaped]


async def test_large_xml_parsed_off_the_loop_keeps_its_positions() -> None:
    big = "<x>" + "y" * 70_000 + "</x>"
    pending = shape_replies_off_loop([{"n": 0}, big, {"n": 2}], parent=PARENT, agent="a",
                                     emit=None)
    assert not isinstance(pending, list)
    shaped = await pending
    assert [s.id for s in shaped] == [derived_id("p-1", "a", n) for n in range(3)]


async def test_sends_are_numbered_apart_from_returns_and_requests_stay_random() -> None:
    made: list[tuple[str, str]] = []

    async def maker(spore: Spore, ctx: Any) -> dict[str, Any]:
        made.append(("reply", (await ctx.reply({"k": "r"})).id))
        made.append(("send", (await ctx.send("sink", {"k": "s"})).id))
        answer = await ctx.request("sink", {"k": "q"}, timeout=5)
        made.append(("request", answer.reply_to or ""))
        return {"k": "returned"}

    async def sink(spore: Spore, ctx: Any) -> dict[str, Any] | None:
        return {"k": "answer"} if spore.spore_type is SporeType.REQUEST else None

    org = Organism.from_dict({"agents": {"maker": {"handler": maker, "emit": {"to": "sink"}},
                                         "sink": {"handler": sink}}})
    outside = []
    async with org.running():
        for _ in range(2):  # one after the other: a run lends its slot while it asks
            outside.append(await org.send("maker", {}, id="p-1"))
            await org.idle()
    assert made[:2] == [("reply", derived_id("p-1", "maker", "s0")),
                        ("send", derived_id("p-1", "maker", "s1"))]
    assert made[3:5] == made[:2]  # the second run of the same spore
    requests = {made[2][1], made[5][1]}
    assert len(requests) == 2
    assert not any(r.startswith("r-") for r in requests)
    assert [s.id for s in outside] == ["p-1", "p-1"]


async def test_what_is_sent_from_outside_keeps_fresh_ids() -> None:
    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"agents": {"sink": {"handler": sink}}})
    async with org.running():
        sent = [await org.send("sink", {"same": 1}) for _ in range(2)]
        await org.idle()
    assert sent[0].id != sent[1].id


async def test_a_journal_replay_gives_sent_and_returned_spores_their_first_ids(
        tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    first_life = [True]

    async def worker(spore: Spore, ctx: Any) -> dict[str, Any]:
        await ctx.send("sink", {"kind": "sent"})
        if first_life[0]:
            await asyncio.Event().wait()  # killed here: the stop below cancels it
        return {"kind": "returned"}

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append((spore.knowledge["kind"], spore.id))

    spec = Organism.from_dict({"agents": {"worker": {"handler": worker, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    await org.start()
    parent = await org.send("worker", {})
    await wait_for(lambda: len(seen) == 1)
    await org.stop(drain_timeout=0)
    with JournalFile(tmp_path / "j.db") as file:
        assert [s.id for s in file.pending()] == [parent.id]
    first_life[0] = False
    again = Organism(spec, journal=tmp_path / "j.db")
    async with again.running():
        await again.idle()
    assert seen == [("sent", derived_id(parent.id, "worker", "s0")),
                    ("sent", derived_id(parent.id, "worker", "s0")),
                    ("returned", derived_id(parent.id, "worker", 0))]
