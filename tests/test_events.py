"""Typed events: what each one says, and that subscribers can neither block nor break."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import load_organism, organism_from_dict
from sporeflow.pipeline import (
    AgentStateChanged,
    Event,
    EventBus,
    Organism,
    OrganismReloaded,
    OrganismStateChanged,
    Spore,
    SporeAdmitted,
    SporeDeadLettered,
    SporeEvent,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)
from sporeflow.pipeline import organism as organism_module
from sporeflow.pipeline.observe import eventhook as eventhook_module

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


class Clock:
    """A wall clock for an organism that moves only when told."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def of(events: list[Event], kind: type[Event]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


async def workload(organism: Organism, clock: Clock) -> None:
    """Sends that exercise every spore event: a reply chain, failures, an expiry."""
    await organism.send("intake", {"text": "hi"})
    for n in (1, 2, 3):
        await organism.send("picky", {"n": n})
    await organism.send("squarer", {"n": 4}, expires_in=10)
    clock.advance(60)  # before the chain sees it: expired on arrival
    await organism.idle()


def outcome(organism: Organism) -> dict[str, Any]:
    """What the pipeline delivered: heard texts, per-agent counts, dead letters."""
    stats = organism.stats()
    return {
        "heard": {name: organism.wiring().agents[name].state.get("heard")
                  for name in ("ear1", "ear2")},
        "counts": {name: (a["handled"], a["failed"]) for name, a in stats["agents"].items()},
        "dead": sorted((letter.reason, str(letter.spore.knowledge))
                       for letter in organism.dead_letters),
        "returned": sorted(str(s.knowledge) for s in organism.outbox),
    }


def small() -> tuple[Organism, Clock]:
    clock = Clock()
    return Organism(load_organism(SMALL), now=clock), clock


async def run_small(subscribe: Any = None) -> tuple[Organism, dict[str, Any]]:
    organism, clock = small()
    if subscribe is not None:
        subscribe(organism)
    async with organism.running():
        await workload(organism, clock)
    return organism, outcome(organism)


async def test_each_spore_event_carries_the_spore_agent_and_details() -> None:
    events: list[Event] = []
    organism, _ = await run_small(lambda o: o.events.subscribe(events.append))

    handled = {(e.agent, e.spore.knowledge.get("text")): e for e in of(events, SporeHandled)}
    assert set(handled) >= {("intake", "hi"), ("shouter", "hi"), ("ear1", "HI"), ("ear2", "HI")}
    assert handled["intake", "hi"].replies == 1
    assert handled["ear1", "HI"].replies == 0
    assert all(e.latency >= 0 for e in handled.values())
    # A reply chain shares its thread: the shout heard by ear1 descends from the send.
    sent = next(e.spore for e in of(events, SporeAdmitted)
                if e.agent is None and e.spore.to_agent == "intake")
    assert handled["ear1", "HI"].thread_id == sent.id

    admitted_by = {(e.agent, e.spore.to_agent, e.spore.channel) for e in of(events, SporeAdmitted)}
    assert ("intake", "shouter", "main") in admitted_by  # a handler's reply enters too
    assert ("shouter", None, "loud") in admitted_by  # ... and its broadcast

    [failed] = of(events, SporeFailed)
    assert (failed.agent, failed.reason, failed.attempt) == ("picky", "handler failed", 1)
    assert failed.spore.knowledge == {"n": 3}
    assert failed.error == "ValueError: 3 is a multiple of three"

    [expired] = of(events, SporeExpired)
    assert expired.spore.to_agent == "squarer"
    assert expired.agent is None  # it expired before any lane had it

    dead = {(e.reason, e.agent) for e in of(events, SporeDeadLettered)}
    assert dead == {("handler failed", "picky"), ("expired", None)}
    # A spore's failure is told before its dead letter.
    kinds = [e.kind for e in events if isinstance(e, SporeEvent) and e.spore is failed.spore]
    assert kinds[-2:] == ["failed", "dead-lettered"]
    assert all(e.at.tzinfo is not None for e in events)


async def test_every_dead_letter_is_one_event_including_shutdown_leftovers() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(spore: Spore, ctx: Any) -> None:
        started.set()
        await release.wait()

    organism = Organism.from_dict({"organism": {"name": "stuck"}, "agents": {"slow": {
        "handler": stuck}}})
    letters: list[SporeDeadLettered] = []
    organism.events.subscribe(lambda e: letters.append(e) if isinstance(
        e, SporeDeadLettered) else None)
    await organism.start()
    for n in range(3):
        await organism.send("slow", {"n": n})
    await asyncio.wait_for(started.wait(), 5)
    await organism.stop(drain_timeout=0)
    assert organism.dead_letters.total == 3
    assert len(letters) == 3
    assert {e.reason for e in letters} == {"shutdown"}
    assert {e.spore.id for e in letters} == {d.spore.id for d in organism.dead_letters}


def test_a_spore_expiring_in_an_agents_mailbox_is_an_expired_event(virtual: Any) -> None:
    async def main(loop: Any) -> tuple[list[Event], Spore]:
        release = asyncio.Event()
        started = asyncio.Event()

        async def gate(spore: Spore, ctx: Any) -> None:
            if spore.knowledge.get("first"):
                started.set()
                await release.wait()

        async def witness(spore: Spore, ctx: Any) -> None:
            # Sent after the late spore: by now that one waits in gate's mailbox.
            await asyncio.sleep(60)  # virtual: on the loop's clock, the one expiry runs on
            release.set()

        spec = organism_from_dict({"organism": {"name": "mailbox"}, "agents": {
            "gate": {"handler": gate, "concurrency": 1}, "witness": {"handler": witness}}})
        organism = Organism(spec, now=loop.wall)
        events: list[Event] = []
        organism.events.subscribe(events.append)
        async with organism.running():
            await organism.send("gate", {"first": True})
            await asyncio.wait_for(started.wait(), 5)
            late = await organism.send("gate", {"first": False}, expires_in=10)
            await organism.send("witness", {})
            await organism.idle()
        return events, late

    events, late = virtual(main)
    [expired] = of(events, SporeExpired)
    assert (expired.spore.id, expired.agent) == (late.id, "gate")
    assert not of(events, SporeFailed)
    assert [(e.reason, e.agent) for e in of(events, SporeDeadLettered)] == [("expired", "gate")]


async def test_start_and_stop_announce_organism_and_agent_states() -> None:
    organism = Organism.from_file(SMALL)
    events: list[Event] = []
    organism.events.subscribe(events.append)
    async with organism.running():
        pass
    moves = [(e.old, e.new) for e in of(events, OrganismStateChanged)]
    assert moves == [("new", "running"), ("running", "stopping"), ("stopping", "stopped")]
    ear1 = [(e.old, e.new) for e in of(events, AgentStateChanged) if e.agent == "ear1"]
    assert ear1 == moves
    assert {e.agent for e in of(events, AgentStateChanged)} == set(organism.spec.agents)


async def test_a_raising_subscriber_changes_nothing_delivered_and_is_logged() -> None:
    _, baseline = await run_small()

    def explode(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    seen: list[Event] = []
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logger = logging.getLogger("sporeflow.events")
    logger.addHandler(handler)
    try:
        organism, result = await run_small(
            lambda o: (o.events.subscribe(explode), o.events.subscribe(seen.append)))
    finally:
        logger.removeHandler(handler)
    assert result == baseline
    assert organism.events.failures == len(seen) > 0  # every event reached the next subscriber
    assert len(logged) == len(seen)
    assert logged[0].getMessage().startswith("an event subscriber failed")
    assert logged[0].exc_info is not None


async def test_a_stream_nobody_reads_changes_nothing_and_counts_its_drops() -> None:
    _, baseline = await run_small()
    streams: list[Any] = []
    counted: list[Event] = []

    def attach(organism: Organism) -> None:
        streams.append(organism.events.stream(maxsize=2).open())  # a reader that never reads
        organism.events.subscribe(counted.append)

    _, result = await run_small(attach)
    assert result == baseline
    [stream] = streams
    assert len(stream) == 2
    assert stream.dropped == len(counted) - 2


async def test_a_slow_async_consumer_does_not_hold_the_pipeline_up() -> None:
    _, baseline = await run_small()
    gate = asyncio.Event()
    got: list[Event] = []
    counted: list[Event] = []
    organism, clock = small()
    organism.events.subscribe(counted.append)
    events = organism.events.stream(maxsize=1000).open()

    async def consume() -> None:
        async for event in events:
            await gate.wait()  # stuck on its first event until the run is over
            got.append(event)

    consumer = asyncio.ensure_future(consume())
    async with organism.running():
        await workload(organism, clock)
    assert outcome(organism) == baseline
    assert got == []
    gate.set()
    events.close()
    await asyncio.wait_for(consumer, 5)
    assert got == counted  # buffered, nothing lost: 1000 is room enough here
    assert events.dropped == 0


async def test_unsubscribe_stops_delivery_and_deactivates_the_bus() -> None:
    bus = EventBus()
    seen: list[Event] = []
    stop = bus.subscribe(seen.append)
    assert bus.active
    first = OrganismStateChanged(organism="o", old="new", new="running")
    bus.emit(first)
    stop()
    stop()  # twice is harmless
    bus.emit(OrganismStateChanged(organism="o", old="running", new="stopped"))
    assert seen == [first]
    assert not bus.active


async def test_a_callback_may_unsubscribe_itself_while_being_called() -> None:
    bus = EventBus()
    seen: list[str] = []
    stops: list[Any] = []

    def once(event: Event) -> None:
        seen.append("once")
        stops[0]()

    stops.append(bus.subscribe(once))
    bus.subscribe(lambda event: seen.append("always"))
    for _ in range(2):
        bus.emit(OrganismStateChanged(organism="o", old="a", new="b"))
    assert seen == ["once", "always", "always"]


async def test_stream_keeps_the_newest_drops_the_oldest_and_ends_after_close() -> None:
    bus = EventBus()
    sent = [OrganismStateChanged(organism="o", old=str(i), new=str(i + 1)) for i in range(5)]
    async with bus.stream(maxsize=3) as events:
        for event in sent:
            bus.emit(event)
        assert events.dropped == 2
        events.close()
        got = [event async for event in events]
    assert got == sent[2:]
    assert not bus.active


async def test_stream_accept_filters_before_events_take_room() -> None:
    bus = EventBus()
    spore = Spore(knowledge={})
    async with bus.stream(maxsize=1, accept=lambda e: isinstance(e, SporeEvent)) as events:
        bus.emit(OrganismStateChanged(organism="o", old="a", new="b"))
        bus.emit(SporeAdmitted(spore=spore))
        bus.emit(OrganismStateChanged(organism="o", old="b", new="c"))
        events.close()
        got = [event async for event in events]
    assert [type(e) for e in got] == [SporeAdmitted]
    assert events.dropped == 0


async def test_stream_reader_wakes_when_an_event_arrives() -> None:
    bus = EventBus()
    async with bus.stream() as events:
        reader = asyncio.ensure_future(anext(aiter(events)))
        await asyncio.sleep(0)
        assert not reader.done()
        event = SporeAdmitted(spore=Spore(knowledge={}))
        bus.emit(event)
        assert await asyncio.wait_for(reader, 5) is event


def test_stream_needs_room_for_one_event() -> None:
    with pytest.raises(ValueError, match="maxsize=0"):
        EventBus().stream(maxsize=0)


async def test_no_event_is_built_while_nobody_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    for module, names in ((eventhook_module, ("SporeAdmitted", "SporeHandled", "SporeFailed",
                                              "SporeExpired", "SporeDeadLettered")),
                          (organism_module, ("AgentStateChanged", "OrganismStateChanged"))):
        for name in names:
            monkeypatch.setattr(module, name,
                                lambda *args, _name=name, **kwargs: built.append(_name))
    organism, result = await run_small()
    assert result["counts"]["ear1"] == (1, 0)  # the run did happen
    assert built == []


async def test_a_subscriber_to_organism_events_only_costs_no_event_per_spore(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    for name in ("SporeAdmitted", "SporeHandled", "SporeFailed", "SporeExpired",
                 "SporeDeadLettered"):
        monkeypatch.setattr(eventhook_module, name,
                            lambda *args, _name=name, **kwargs: built.append(_name))
    seen: list[Event] = []
    organism, result = await run_small(
        lambda o: o.events.subscribe(seen.append, spores=False))
    assert result["counts"]["ear1"] == (1, 0)
    assert built == []
    assert {"running", "stopped"} <= {e.new for e in of(seen, OrganismStateChanged)}
    assert organism.events.active
    assert not organism.events.spores_active


def test_spore_events_reach_only_subscribers_that_want_them() -> None:
    bus = EventBus()
    told: list[bool] = []
    bus.on_active = told.append
    mine: list[Event] = []
    bus.subscribe(mine.append, spores=False)
    assert (bus.active, bus.spores_active, told) == (True, False, [])
    theirs: list[Event] = []
    stop = bus.subscribe(theirs.append)
    assert told == [True]
    spore_event = SporeHandled(spore=Spore(knowledge={}), agent="a", latency=0.0)
    state = OrganismStateChanged(organism="o", old="a", new="b")
    bus.emit(spore_event)
    bus.emit(state)
    assert mine == [state]
    assert theirs == [spore_event, state]
    stop()
    assert told == [True, False]
    assert bus.active


def test_events_have_a_json_form() -> None:
    spore = Spore(knowledge={"n": 1})
    handled = SporeHandled(spore=spore, agent="a", latency=0.0015, replies=2)
    line = json.loads(json.dumps(handled.to_dict()))
    assert line["event"] == "handled"
    assert (line["spore_id"], line["thread_id"], line["agent"]) == (spore.id, spore.id, "a")
    assert (line["latency_ms"], line["replies"]) == (1.5, 2)
    assert line["spore"]["knowledge"] == {"n": 1}
    failed = SporeFailed(spore=spore, agent="a", reason="timeout", error="E: x", attempt=3)
    assert failed.to_dict()["attempt"] == 3


def test_a_reload_event_reads_its_report() -> None:
    event = OrganismReloaded(organism="o", report={
        "added": ["b"], "removed": [], "changed": ["a"], "refused": False, "errors": []})
    assert (event.added, event.removed, event.changed, event.refused) == (("b",), (), ("a",),
                                                                          False)
    refused = OrganismReloaded(organism="o", report={"refused": True, "errors": ["x: bad"]})
    assert refused.refused
    assert refused.to_dict()["errors"] == ["x: bad"]
    with pytest.raises(AttributeError):
        refused.organism = "p"  # type: ignore[misc]
