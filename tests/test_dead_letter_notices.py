"""The dead-letter channel hears of every dead letter, whatever the dead spore was.

Found by the paths audit: a notice (the organism's own broadcast on ``dead-letter``)
passed the chain as a spore of the dead spore's conversation, and carried that spore
two levels deeper. So a spore refused for its conversation's budget, or one within the
limits but nested near ``limits.max_depth`` (or near ``max_spore_bytes``), made a notice
that was refused in turn: a second dead letter for one refusal, and nothing heard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sporeflow.pipeline import Organism, Spore


def watched(agents: dict[str, Any], heard: list[Spore], **limits: Any) -> Organism:
    async def watch(spore: Spore, ctx: Any) -> None:
        heard.append(spore)

    return Organism.from_dict({
        "agents": {**agents, "watcher": {"handler": watch, "subscribe": ["dead-letter"]}},
        "limits": limits})


async def test_a_spore_refused_for_its_conversations_budget_is_heard_of_once() -> None:
    async def bounce(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"] + 1}

    heard: list[Spore] = []
    organism = watched({"ping": {"handler": bounce, "emit": {"to": "pong"}},
                        "pong": {"handler": bounce, "emit": {"to": "ping"}}},
                       heard, max_spores_per_thread=5, max_hops=100)
    async with organism.running():
        await organism.send("ping", {"n": 0})
        await organism.idle()
    assert [letter.reason for letter in organism.dead_letters] == ["budget"]
    assert [notice.knowledge["reason"] for notice in heard] == ["budget"]
    assert organism.stats()["agents"]["ping"]["handled"] + \
        organism.stats()["agents"]["pong"]["handled"] == 5  # the notices counted for none


async def test_a_spore_nested_to_the_depth_limit_is_heard_of_once() -> None:
    heard: list[Spore] = []
    organism = watched({"sink": {"handler": lambda spore, ctx: None}}, heard, max_depth=5)
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}  # 5 levels: within the limit
    async with organism.running():
        await organism.submit(Spore(knowledge=deep, to_agent="nobody"))
        await organism.idle()
    assert [letter.reason for letter in organism.dead_letters] == ["unknown agent"]
    [notice] = heard
    assert notice.knowledge["reason"] == "unknown agent"
    assert notice.knowledge["spore"]["to_agent"] == "nobody"
    assert "max_depth" in notice.knowledge["omitted"]


async def test_a_spore_near_the_size_limit_is_heard_of_once() -> None:
    heard: list[Spore] = []
    organism = watched({"sink": {"handler": lambda spore, ctx: None}}, heard,
                       max_spore_bytes=2000)
    async with organism.running():
        await organism.submit(Spore(knowledge={"text": "x" * 1600}, to_agent="nobody"))
        await organism.idle()
    assert [letter.reason for letter in organism.dead_letters] == ["unknown agent"]
    [notice] = heard
    assert "max_spore_bytes" in notice.knowledge["omitted"]
    assert notice.knowledge["spore"]["knowledge"] == {}


async def test_a_notice_within_the_limits_carries_the_whole_spore() -> None:
    heard: list[Spore] = []
    organism = watched({"sink": {"handler": lambda spore, ctx: None}}, heard)
    async with organism.running():
        await organism.submit(Spore(knowledge={"n": 1}, to_agent="nobody"))
        await organism.idle()
    [notice] = heard
    assert notice.knowledge["spore"]["knowledge"] == {"n": 1}
    assert "omitted" not in notice.knowledge


async def test_a_reply_refused_as_no_json_is_heard_of_once() -> None:
    async def unwritable(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"tags": {"a", "b"}}  # a set: no JSON

    heard: list[Spore] = []
    organism = watched({"maker": {"handler": unwritable, "emit": {"to": "sink"}},
                        "sink": {"handler": lambda spore, ctx: None}}, heard)
    async with organism.running():
        await organism.send("maker", {})
        await organism.idle()
    assert [letter.reason for letter in organism.dead_letters] == ["invalid"]
    [notice] = heard
    assert notice.knowledge["spore"]["from_agent"] == "maker"
    assert "not JSON" in notice.knowledge["omitted"]


async def test_a_notice_is_not_counted_as_a_reply_of_the_handlers() -> None:
    # Found by a randomized stress: totals.replies (sporeflow_replies_total, "spores
    # handlers sent") counted the organism's own notices on the dead-letter channel.
    async def fail(spore: Spore, ctx: Any) -> None:
        raise RuntimeError("planned")

    heard: list[Spore] = []
    organism = watched({"failing": {"handler": fail}}, heard)
    async with organism.running():
        for n in range(3):
            await organism.send("failing", {"n": n})
        await organism.idle()
        totals = organism.stats()["totals"]
    assert len(heard) == 3
    assert totals["replies"] == 0
    assert totals["handled"] == 3  # the watcher handled the notices



async def test_a_spore_refused_for_its_thread_id_is_heard_of_once(tmp_path: Path) -> None:
    """Found by review: the notice takes the dead spore's thread (``thread_id``) as its
    own. A spore from untrusted input (a journal row, a broker message) refused as
    invalid for that very field (past MAX_LINEAGE_ID_LENGTH) makes a notice the validate
    stage refuses too, with or without the knowledge 'omitted': a second dead letter, on
    the dead-letter channel, so never announced; the listener hears nothing."""
    heard: list[Spore] = []

    def organism() -> Organism:
        built = watched({"sink": {"handler": lambda spore, ctx: None}}, heard)
        return Organism(built.spec, journal=tmp_path / "j.db")

    first = organism()
    async with first.running():
        journal = first.journal
        assert journal is not None
        journal.add([Spore(knowledge={}, to_agent="sink", thread_id="t" * 2000)])
        await journal.record([])  # on disk: unfinished, replayed at the next start
    second = organism()
    async with second.running():
        await second.idle()
    assert [(letter.reason, letter.spore.channel) for letter in second.dead_letters] == [
        ("invalid", "main")]  # and no second letter: the notice, refused too
    assert [notice.knowledge["reason"] for notice in heard] == ["invalid"]
