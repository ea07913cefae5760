"""The whole chain through the Python API, on the small organism in tests/organisms."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import (
    DeliveryError,
    HandlerError,
    Organism,
    OrganismStateError,
    Spore,
    SporeError,
    SporeType,
)

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


async def test_emit_to_agent_then_to_channel_reaches_every_subscriber() -> None:
    organism = Organism.from_file(SMALL)
    async with organism.running():
        for text in ("hi", "there"):
            await organism.send("intake", {"text": text})
        await organism.idle()
        heard = {name: organism.wiring().agents[name].state["heard"] for name in ("ear1", "ear2")}
    assert heard == {"ear1": ["HI", "THERE"], "ear2": ["HI", "THERE"]}
    stats = organism.stats()
    assert stats["agents"]["shouter"]["handled"] == 2
    assert stats["totals"]["dead_letters"] == 0


async def test_request_is_answered_with_a_response_to_the_sender() -> None:
    organism = Organism.from_file(SMALL)
    async with organism.running():
        answer = await organism.request("squarer", {"n": 7}, timeout=5)
        nested = await organism.request("asker", {"n": 3}, timeout=5)
    assert answer.spore_type is SporeType.RESPONSE
    assert answer.knowledge == {"square": 49}
    assert answer.to_agent == "system"
    assert answer.reply_to is not None
    assert nested.knowledge == {"asked": 3, "square": 9}


async def test_failing_handler_is_counted_dead_lettered_and_the_rest_flow() -> None:
    organism = Organism.from_file(SMALL)
    async with organism.running():
        for n in range(1, 10):
            await organism.send("picky", {"n": n})
        await organism.send("squarer", {"n": 2})
        await organism.idle()
    stats = organism.stats()["agents"]
    assert (stats["picky"]["handled"], stats["picky"]["failed"]) == (6, 3)
    assert stats["squarer"]["handled"] == 1
    letters = list(organism.dead_letters)
    assert sorted(letter.spore.knowledge["n"] for letter in letters) == [3, 6, 9]
    assert all(letter.reason == "handler failed" and letter.agent == "picky" for letter in letters)
    assert "ValueError: 3 is a multiple of three" in letters[0].traceback or \
        "is a multiple of three" in (letters[0].traceback or "")


async def test_request_to_failing_handler_raises_promptly_with_the_cause() -> None:
    organism = Organism.from_file(SMALL)
    async with organism.running():
        with pytest.raises(HandlerError, match="multiple of three") as caught:
            await organism.request("picky", {"n": 6}, timeout=30)
    assert isinstance(caught.value.__cause__, ValueError)


async def test_replies_to_the_outside_world_are_kept_and_announced() -> None:
    organism = Organism.from_file(SMALL)
    seen: list[Spore] = []
    async with organism.running():
        organism.on_outside(seen.append)
        await organism.send("picky", {"n": 1}, sender="tester")
        await organism.idle()
    assert [s.knowledge for s in seen] == [{"n": 1}]
    assert seen[0].to_agent == "tester"
    assert list(organism.outbox) == seen


async def test_outside_send_errors_are_immediate_and_clear() -> None:
    organism = Organism.from_file(SMALL)
    with pytest.raises(OrganismStateError, match="not running"):
        await organism.send("picky", {"n": 1})
    async with organism.running():
        with pytest.raises(DeliveryError, match=r"no agent 'pickky'.*did you mean 'picky'"):
            await organism.send("pickky", {"n": 1})
        with pytest.raises(SporeError, match="knowledge must be a dict"):
            await organism.send("picky", [1, 2])  # type: ignore[arg-type]


async def test_handlers_may_return_many_spores_and_async_iterables() -> None:
    got: list[int] = []

    async def fan(spore: Spore, ctx: Any) -> Any:
        async def numbers() -> Any:
            for i in range(3):
                yield {"i": i}
        return numbers() if spore.knowledge.get("async") else [{"i": 10}, None, {"i": 11}]

    async def sink(spore: Spore, ctx: Any) -> None:
        got.append(spore.knowledge["i"])

    organism = Organism.from_dict({"agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                              "sink": {"handler": sink}}})
    async with organism.running():
        await organism.send("fan", {})
        await organism.send("fan", {"async": True})
        await organism.idle()
    assert sorted(got) == [0, 1, 2, 10, 11]


@pytest.mark.parametrize(("returned", "advice"), [
    (42, "returned an int, 42; return None, a dict, a Spore"),
    # Found by a new user: "returned an int, 3" for a list whose second item was 3.
    ([{"a": 1}, 3], "agent 'bad' returned a list whose item 1 is an int, 3; return None, "
                    "a dict, a Spore"),
    (({"a": 1}, None, {"b"}), "returned a tuple whose item 2 is a set, {'b'}"),
    # A plain sentence: a returned str is read as XML, which it does not say by itself.
    ("hello there, no markup at all",
     "agent 'bad' returned text with no XML element in it: a str (or bytes) a handler "
     "returns is read as XML replies; return a dict"),
    (b"hello", "agent 'bad' returned bytes with no XML element in it"),
    # A set is iterable, but its order (and so its replies' ids) is not defined.
    ({"<a/>", "<b/>"}, "agent 'bad' returned a set, "),
    (frozenset({"a"}), "(a set has no order: its replies would get different ids each "
                       "time it is handled; return a list)"),
    (object(), "returned an object, <object object at"),
    ("x" * 100, "a str (or bytes) a handler returns")])
async def test_a_bad_return_value_is_a_handler_failure_with_advice(
        returned: object, advice: str) -> None:
    async def bad(spore: Spore, ctx: Any) -> Any:
        return returned

    organism = Organism.from_dict({"agents": {"bad": {"handler": bad}}})
    async with organism.running():
        await organism.send("bad", {})
        await organism.idle()
    [letter] = organism.dead_letters
    assert advice in letter.error


async def test_replies_carry_lineage_and_hops() -> None:
    seen: list[Spore] = []

    async def first(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"step": 1}

    async def second(spore: Spore, ctx: Any) -> None:
        seen.append(spore)

    organism = Organism.from_dict({"agents": {"first": {"handler": first, "emit": {"to": "b"}},
                                              "b": {"handler": second}}})
    async with organism.running():
        origin = await organism.send("first", {}, priority=8)
        await organism.idle()
    [reply] = seen
    assert (reply.from_agent, reply.thread_id, reply.hops, reply.priority) == (
        "first", origin.id, 1, 8)


async def test_boot_spores_are_sent_at_start() -> None:
    booted = asyncio.Event()

    async def boot(spore: Spore, ctx: Any) -> None:
        assert spore.knowledge == {"root": "."}
        booted.set()

    organism = Organism.from_dict({"agents": {"b": {"handler": boot, "boot": {"root": "."}}}})
    async with organism.running():
        await asyncio.wait_for(booted.wait(), 5)


async def test_organism_cannot_start_twice() -> None:
    organism = Organism.from_file(SMALL)
    async with organism.running():
        with pytest.raises(OrganismStateError, match="already running"):
            await organism.start()


async def test_a_start_cancelled_halfway_stops_what_it_started() -> None:
    """`asyncio.wait_for(organism.start(), ...)` timing out (a broker not there yet, an
    on_start that takes long) or a Ctrl-C: the organism once stayed 'running', half
    started, admitting spores it could not handle and refusing a new start."""
    entered = asyncio.Event()

    class Slow:
        async def on_start(self) -> None:
            entered.set()
            await asyncio.Event().wait()  # never set: the start is cancelled here

        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

    organism = Organism.from_dict({"agents": {"slow": {"handler": Slow, "lazy": False}}})
    starting = asyncio.ensure_future(organism.start())
    await asyncio.wait_for(entered.wait(), 10)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert organism.state == "stopped"
    with pytest.raises(OrganismStateError, match="stopped"):
        await organism.send("slow", {})


def test_a_send_from_another_event_loop_is_refused_not_lost() -> None:
    # Found by a new user: started under one asyncio.run and sent to under another, the
    # spore was admitted (send returned) and never handled; idle() then failed with a raw
    # 'Event loop is closed'.
    organism = Organism.from_file(SMALL)
    asyncio.run(organism.start())  # its loop ends here, the chain's task with it

    async def send_again() -> None:
        await organism.send("picky", {"n": 1})

    with pytest.raises(OrganismStateError, match=r"runs on another event loop than this "
                                                 r"call .*; nothing was sent"):
        asyncio.run(send_again())
    assert organism.stats()["totals"]["admitted"] == 0


async def test_sloppy_xml_reply_fans_out_into_addressed_spores() -> None:
    got: dict[str, list[Spore]] = {"worker": [], "logger": [], "sink": []}

    async def writer(spore: Spore, ctx: Any) -> str:
        return ('Sure! <task to="worker" priority="7"><title>Fix bug</title><tags>a</tags>'
                '<tags>b</tags></task> some prose <note channel="log"><text>hi</text> '
                '<report><count>3</count><ok>true</ok></report>')

    def keep(name: str) -> Any:
        async def handler(spore: Spore, ctx: Any) -> None:
            got[name].append(spore)
        return handler

    organism = Organism.from_dict({
        "channels": {"log": {}},
        "agents": {"writer": {"handler": writer, "emit": {"to": "sink"}},
                   "worker": {"handler": keep("worker")},
                   "logger": {"handler": keep("logger"), "subscribe": ["log"]},
                   "sink": {"handler": keep("sink")}}})
    async with organism.running():
        await organism.send("writer", {})
        await organism.idle()
    [task], [note], [report] = got["worker"], got["logger"], got["sink"]
    assert (task.knowledge, task.priority, task.metadata) == (
        {"title": "Fix bug", "tags": ["a", "b"]}, 7, {"kind": "task"})
    assert note.knowledge == {"text": "hi"}
    assert note.channel == "log"
    assert report.knowledge == {"count": 3, "ok": True}


async def test_unrecoverable_xml_is_dead_lettered_with_the_excerpt() -> None:
    async def writer(spore: Spore, ctx: Any) -> str:
        return "no markup at all, just prose"

    organism = Organism.from_dict({"agents": {"writer": {"handler": writer}}})
    async with organism.running():
        await organism.send("writer", {})
        await organism.idle()
    [letter] = organism.dead_letters
    assert letter.reason == "handler failed"
    assert "XmlPayloadError" in letter.error
    assert "just prose" in letter.error


async def test_only_the_organism_broadcasts_on_the_dead_letter_channel() -> None:
    """Found by an attacker: anyone could post a notice on the dead-letter channel (an
    HTTP source, an agent, a named outside sender), and it looked like the organism's."""
    from sporeflow.config import NotAPeer

    heard: list[Spore] = []

    async def forger(spore: Spore, ctx: Any) -> None:
        await ctx.broadcast({"reason": "handler failed", "agent": "payments"},
                            channel="dead-letter")

    async def watch(spore: Spore, ctx: Any) -> None:
        heard.append(spore)

    organism = Organism.from_dict({"agents": {
        "forger": {"handler": forger},
        "watcher": {"handler": watch, "subscribe": ["dead-letter"]}}})
    async with organism.running():
        with pytest.raises(NotAPeer, match="carries the organism's own notices"):
            await organism.broadcast({"reason": "fake"}, channel="dead-letter",
                                     sender="webhook")
        await organism.send("forger", {})
        await organism.idle()
    # The forger's broadcast refused (its handler failed on it): that failure's notice,
    # sent by the organism, is the one the watcher hears.
    assert [(s.from_agent, s.knowledge["agent"]) for s in heard] == [("system", "forger")]


async def test_agents_subscribed_to_the_dead_letter_channel_hear_each_dead_letter() -> None:
    heard: list[Spore] = []

    async def fail(spore: Spore, ctx: Any) -> None:
        raise ValueError(f"cannot take {spore.knowledge['n']}")

    async def watch(spore: Spore, ctx: Any) -> None:
        heard.append(spore)

    organism = Organism.from_dict({
        "organism": {"name": "dlq-channel"},
        "agents": {
            "fragile": {"handler": fail},
            "watcher": {"handler": watch, "subscribe": ["dead-letter"]},
        },
    })
    async with organism.running():
        for n in range(3):
            await organism.send("fragile", {"n": n})
        await organism.idle()
    assert [s.knowledge["spore"]["knowledge"] for s in heard] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {s.knowledge["reason"] for s in heard} == {"handler failed"}
    assert all("ValueError: cannot take" in s.knowledge["error"] for s in heard)
    assert {(s.channel, s.from_agent, s.spore_type) for s in heard} == {
        ("dead-letter", "system", SporeType.NOTIFICATION)}
    # The watcher's own notifications are never dead-letters about dead letters.
    assert organism.stats()["dead_letters"]["total"] == 3
