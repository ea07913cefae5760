"""``sporeflow tail``: one JSON line per spore event of a running organism, filtered."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sporeflow.pipeline import (
    EventBus,
    Organism,
    OrganismStateChanged,
    Spore,
    SporeAdmitted,
    SporeHandled,
    SporeType,
)
from sporeflow.pipeline.cli.tail import Tail, TailFilter, event_line, follow
from sporeflow.pipeline.service.control import control_app

AGENTS = '''
async def start(spore, ctx):
    return ({"n": n} for n in range(spore.knowledge["count"]))

async def double(spore, ctx):
    return {"doubled": spore.knowledge["n"] * 2}

async def keep(spore, ctx):
    ctx.state.setdefault("kept", []).append(spore.knowledge)
'''

ORGANISM = '''
organism: {name: tailed}
channels:
  numbers: {}
agents:
  starter:
    handler: tail_agents:start
    boot: {count: 3}
    emit: {channel: numbers}
  doubler:
    handler: tail_agents:double
    subscribe: [numbers]
    emit: {to: keeper}
  keeper:
    handler: tail_agents:keep
'''


@pytest.fixture
def organism_file(tmp_path: Path) -> Path:
    (tmp_path / "tail_agents.py").write_text(textwrap.dedent(AGENTS))
    path = tmp_path / "organism.yaml"
    path.write_text(textwrap.dedent(ORGANISM))
    return path


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """The CLI configures the ``sporeflow`` logger; put it back after each test."""
    logger = logging.getLogger("sporeflow")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


async def tail(organism_file: Path, count: int,
               **options: str | list[str]) -> list[dict[str, Any]]:
    """The first ``count`` lines ``sporeflow tail`` would print with ``options``: what the
    control endpoint streams (``GET /v1/events``), attached before the organism starts,
    so that its boot spore is seen too. (tests/test_control_cli.py runs the command.)"""
    organism = Organism.from_file(organism_file)
    served: TestClient[Any, Any] = TestClient(TestServer(control_app(organism)))
    await served.start_server()
    try:
        reply = await served.get("/v1/events", params=[
            (key, value) for key, values in options.items()
            for value in ([values] if isinstance(values, str) else values)])
        assert reply.status == 200, await reply.text()
        async with organism.running(drain_timeout=5):
            await organism.idle()
            lines = [json.loads(await asyncio.wait_for(reply.content.readline(), 10))
                     for _ in range(count)]
        reply.close()
    finally:
        await served.close()
    return lines


async def test_tail_prints_every_spore_event_of_the_run_as_json(organism_file: Path) -> None:
    lines = await tail(organism_file, 14)
    handled = sorted((line["agent"], json.dumps(line["spore"]["knowledge"]))
                     for line in lines if line["event"] == "handled")
    assert handled == sorted(
        [("starter", '{"count": 3}')]
        + [("doubler", json.dumps({"n": n})) for n in range(3)]
        + [("keeper", json.dumps({"doubled": 2 * n})) for n in range(3)])
    # The boot spore starts the one conversation every line belongs to.
    boot = next(line for line in lines if line["event"] == "admitted")
    assert boot["spore"]["knowledge"] == {"count": 3}
    assert {line["thread_id"] for line in lines} == {boot["spore_id"]}
    assert all(set(line) >= {"event", "at", "spore_id", "thread_id", "agent", "spore"}
               for line in lines)


async def test_tail_filters_by_channel_agent_type_and_event(organism_file: Path) -> None:
    on_numbers = await tail(organism_file, 6, channel="numbers", event="handled")
    # Replies stay on their parent's channel; the boot spore went on 'main'.
    assert sorted(line["agent"] for line in on_numbers) == ["doubler"] * 3 + ["keeper"] * 3

    keeper = await tail(organism_file, 6, agent="keeper")
    assert {(line["event"], line["spore"]["to_agent"]) for line in keeper} == {
        ("admitted", "keeper"), ("handled", "keeper")}

    broadcasts = await tail(organism_file, 3, type="broadcast", event="admitted",
                            knowledge="false")
    assert all(line["spore"]["spore_type"] == "broadcast" for line in broadcasts)
    assert all("knowledge" not in line["spore"] for line in broadcasts)


async def test_tail_refuses_an_unknown_agent_with_a_hint(organism_file: Path) -> None:
    served: TestClient[Any, Any] = TestClient(TestServer(control_app(
        Organism.from_file(organism_file))))
    await served.start_server()
    try:
        reply = await served.get("/v1/events", params={"agent": "keepr"})
        assert reply.status == 400
        assert ("no agent 'keepr' in organism 'tailed' (did you mean 'keeper'?)"
                in (await reply.json())["message"])
    finally:
        await served.close()


def test_filter_matches_an_agent_as_handler_sender_or_recipient() -> None:
    spore = Spore(knowledge={}, from_agent="a", to_agent="b", channel="c",
                  spore_type=SporeType.REQUEST)
    assert TailFilter.of(agents=["a"])(SporeAdmitted(spore=spore))
    assert TailFilter.of(agents=["b"])(SporeAdmitted(spore=spore))
    assert TailFilter.of(agents=["x"])(SporeHandled(spore=spore, agent="x", latency=0))
    assert not TailFilter.of(agents=["x"])(SporeAdmitted(spore=spore))
    assert not TailFilter.of(channels=["d"])(SporeAdmitted(spore=spore))
    assert TailFilter.of(types=["request"], kinds=["admitted"])(SporeAdmitted(spore=spore))
    assert not TailFilter.of(kinds=["handled"])(SporeAdmitted(spore=spore))
    assert not TailFilter()(OrganismStateChanged(organism="o", old="a", new="b"))


async def test_follow_stops_quietly_when_the_reader_goes_away() -> None:
    written: list[str] = []

    def write(line: str) -> None:
        if len(written) == 2:
            raise BrokenPipeError
        written.append(line)

    async def events() -> AsyncIterator[SporeAdmitted]:
        for n in range(5):
            yield SporeAdmitted(spore=Spore(knowledge={"n": n}))

    assert await follow(events(), write) == 2
    assert [json.loads(line)["spore"]["knowledge"] for line in written] == [{"n": 0}, {"n": 1}]


async def test_tail_writes_what_is_buffered_when_it_closes_and_counts_drops() -> None:
    bus = EventBus()
    written: list[str] = []
    sent = [SporeAdmitted(spore=Spore(knowledge={"n": n})) for n in range(5)]
    async with Tail(bus, TailFilter(), written.append, maxsize=3) as following:
        for event in sent:  # faster than the writer task can run
            bus.emit(event)
    assert following.dropped == 2
    assert written == [event_line(event) for event in sent[2:]]
    assert not bus.active
