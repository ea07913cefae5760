"""Structured logs: JSON lines with spore and thread ids, readable text, no knowledge."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import LimitExceeded
from sporeflow.pipeline import Organism, OrganismStateChanged, Spore, SporeError
from sporeflow.pipeline.observe.events import EventBus, SporeHandled
from sporeflow.pipeline.observe.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    describe_error,
    log_events,
    spore_fields,
)

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Capture every ``sporeflow`` log record, DEBUG up, as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sporeflow")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def parse(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def record(**extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("sporeflow.test", logging.WARNING, __file__, 1, "hello %s",
                             ("there",), None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_json_line_has_the_base_fields_and_the_spore_fields() -> None:
    spore = Spore(knowledge={"secret": "x"}, thread_id="t-1")
    line = json.loads(JsonFormatter().format(record(**spore_fields(
        spore, agent="a", event="failed", reason="timeout"))))
    assert line["message"] == "hello there"
    assert (line["level"], line["logger"]) == ("warning", "sporeflow.test")
    assert line["ts"].endswith("+00:00")
    assert (line["spore_id"], line["thread_id"], line["agent"], line["event"],
            line["reason"]) == (spore.id, "t-1", "a", "failed", "timeout")
    assert "secret" not in json.dumps(line)


def test_json_line_without_spore_fields_omits_them() -> None:
    line = json.loads(JsonFormatter().format(record()))
    assert set(line) == {"ts", "level", "logger", "message"}


def test_text_line_stays_readable_and_names_the_spore() -> None:
    spore = Spore(knowledge={}, thread_id="t-9")
    text = TextFormatter().format(record(**spore_fields(spore, agent="a")))
    assert text == f"WARNING sporeflow.test: hello there [spore {spore.id} thread t-9]"
    assert TextFormatter().format(record()) == "WARNING sporeflow.test: hello there"


async def test_organism_logs_carry_the_failing_spore_thread_and_agent(
        json_lines: io.StringIO) -> None:
    organism = Organism.from_file(SMALL)
    async with organism.running():
        sent = await organism.send("picky", {"n": 3})
        await organism.idle()
    [failed] = [line for line in parse(json_lines) if line.get("event") == "failed"]
    assert (failed["spore_id"], failed["thread_id"], failed["agent"]) == (
        sent.id, sent.thread, "picky")
    assert failed["level"] == "warning"
    assert failed["reason"] == "handler failed"
    assert "ValueError: 3 is a multiple of three" in failed["message"]


async def test_a_refused_spore_is_logged_without_its_knowledge(
        json_lines: io.StringIO) -> None:
    async def leaky(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"password": {"hunter2"}}  # a set is not JSON: validation refuses the reply

    organism = Organism.from_dict({"organism": {"name": "leaky"}, "agents": {
        "leaky": {"handler": leaky}}})
    async with organism.running():
        sent = await organism.send("leaky", {})
        await organism.idle()
    [letter] = organism.dead_letters
    assert "hunter2" in letter.error  # the dead letter keeps the details...
    # A handler's output refused: a warning naming the agent (tests/test_refused_output.py)
    [line] = [line for line in parse(json_lines) if line.get("event") == "refused"]
    assert line["thread_id"] == sent.id
    assert (line["level"], line["agent"]) == ("warning", "leaky")
    assert "hunter2" not in json_lines.getvalue()  # ...the log does not


def test_describe_error_leaves_out_what_a_spore_error_quotes() -> None:
    assert describe_error(SporeError("knowledge holds a set ({'hunter2'})")) == (
        "SporeError (the dead letter has the details)")
    too_big = "spore s-1 is 90000 bytes as JSON, over limits.max_spore_bytes=65536"
    assert describe_error(LimitExceeded(too_big)) == f"LimitExceeded: {too_big}"  # sizes only
    assert describe_error(ValueError("bad n")) == "ValueError: bad n"
    assert describe_error(None) == "no error"


async def test_events_become_debug_lines_only_when_debug_is_on(
        json_lines: io.StringIO) -> None:
    organism = Organism.from_file(SMALL)
    stop = log_events(organism.events)
    async with organism.running():
        sent = await organism.send("intake", {"text": "quiet please"})
        await organism.idle()
    stop()
    lines = parse(json_lines)
    handled = [line for line in lines if line.get("event") == "handled"]
    assert {line["agent"] for line in handled} == {"intake", "shouter", "ear1", "ear2"}
    assert all(line["thread_id"] == sent.id and line["level"] == "debug" for line in handled)
    assert any(line.get("event") == "organism-state" for line in lines)
    assert "quiet please" not in json_lines.getvalue()
    assert "QUIET PLEASE" not in json_lines.getvalue()

    logging.getLogger("sporeflow").setLevel(logging.INFO)
    bus = EventBus()
    log_events(bus)
    assert not bus.active  # nobody would read the lines: no subscription, no cost


def test_event_log_line_names_the_latency() -> None:
    out = io.StringIO()
    logger = logging.getLogger("sporeflow.test.events")
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        bus = EventBus()
        log_events(bus, logger)
        spore = Spore(knowledge={}, from_agent="a", to_agent="b")
        bus.emit(SporeHandled(spore=spore, agent="b", latency=0.0025))
        bus.emit(OrganismStateChanged(organism="o", old="new", new="running"))
        shout = Spore(knowledge={}, from_agent="a", channel="loud", thread_id="t")
        bus.emit(SporeHandled(spore=shout, agent="ear", latency=0.001))
    finally:
        logger.removeHandler(handler)
    first, second, third = out.getvalue().splitlines()
    assert third == (f"DEBUG sporeflow.test.events: handled knowledge {shout.id} a -> #loud by "
                     f"ear in 1.000 ms [spore {shout.id} thread t]")
    assert first == (f"DEBUG sporeflow.test.events: handled knowledge {spore.id} a -> b in "
                     f"2.500 ms [spore {spore.id}]")
    assert second == "DEBUG sporeflow.test.events: organism-state o: new -> running"


def test_configure_logging_json_writes_one_object_per_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("sporeflow")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        configure_logging("json", "info")
        spore = Spore(knowledge={})
        logging.getLogger("sporeflow.organism.x").info(
            "one", extra=spore_fields(spore, agent="a", event="handled"))
        logging.getLogger("sporeflow.organism.x").debug("below the level")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["spore_id"] == spore.id
