"""The loop-stall watchdog (``pipeline.observe.watchdog``): an ``async def`` handler that
blocks the event loop is named, with its spore and the line it blocks on.

The blocking in these handlers is the fault injected; the tests themselves never sleep
to wait for something: they await the organism, or a handler blocks until the warning
it causes has been logged (with a backstop).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.observe.watchdog import LoopWatchdog

THRESHOLD = 0.2
BACKSTOP = 10.0
LOGGER = "sporeflow.organism.organism"  # from_dict names the organism "organism"


class _Seen(logging.Handler):
    """Sets ``warned`` as soon as the watchdog's warning is logged, on its thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warned = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "event loop has been blocked" in record.getMessage():
            self.warned.set()


@pytest.fixture
def seen() -> Iterator[_Seen]:
    handler = _Seen()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def stall_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "event loop" in r.getMessage()]


def watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"{LOGGER}:watchdog"]


def organism(handler: Any, **agent: Any) -> Organism:
    return Organism.from_dict({"agents": {"sleeper": {"handler": handler, **agent}},
                               "limits": {"loop_stall_warning": THRESHOLD}})


async def test_a_handler_blocking_the_loop_is_named_with_its_spore_and_line(
        records: pytest.LogCaptureFixture) -> None:
    lines: list[int] = []

    async def slow(spore: Spore, ctx: Any) -> None:
        lines.append(sys._getframe().f_lineno + 1)
        time.sleep(THRESHOLD * 3)  # noqa: ASYNC251 - the fault: blocks every agent meanwhile

    async with organism(slow).running() as org:
        spore = await org.send("sleeper", {"n": 1})
        await org.idle()
        assert [t.daemon for t in watchdogs()] == [True]
    assert watchdogs() == []  # stop() ended it

    (level, warning), (end_level, end) = stall_lines(records)
    assert level == logging.WARNING
    assert warning.startswith("the event loop has been blocked for ")
    assert (f"by agent 'sleeper' handling spore {spore.id} "
            f"at tests/test_watchdog.py:{lines[0]} in slow(); ") in warning
    assert "use a sync handler (runs in a thread) or await instead of blocking" in warning
    assert end_level == logging.INFO
    assert end.startswith("the event loop ran again after being blocked for ")
    blocked = float(end.split("blocked for ")[1].split(" s ")[0])
    blocked_at_warning = float(warning.split("blocked for ")[1].split(" s ")[0])
    assert blocked >= THRESHOLD * 2 > blocked_at_warning >= THRESHOLD  # the whole stall's length
    assert f"by agent 'sleeper' handling spore {spore.id}" in end


async def test_blocking_inside_a_library_names_the_handler_line_and_the_library_frame(
        records: pytest.LogCaptureFixture, seen: _Seen) -> None:
    lines: list[int] = []

    async def waits(spore: Spore, ctx: Any) -> None:  # with a timeout: AgentLane._run
        lines.append(sys._getframe().f_lineno + 1)
        seen.warned.wait(BACKSTOP)  # blocks the loop until the watchdog has spoken

    async with organism(waits, timeout="30s").running() as org:
        spore = await org.send("sleeper", {"n": 1})
        await org.idle()

    assert seen.warned.is_set()
    (level, warning), (end_level, _) = stall_lines(records)
    assert level == logging.WARNING
    assert (f"by agent 'sleeper' handling spore {spore.id} at tests/test_watchdog.py:"
            f"{lines[0]} in waits(), inside ") in warning
    assert "threading.py:" in warning
    assert end_level == logging.INFO


async def test_a_handler_that_awaits_causes_no_warning(records: pytest.LogCaptureFixture) -> None:
    async def patient(spore: Spore, ctx: Any) -> None:
        await asyncio.sleep(THRESHOLD * 3)  # as long as the blocking one, but awaited

    async with organism(patient).running() as org:
        await org.send("sleeper", {"n": 1})
        await org.idle()
        assert len(watchdogs()) == 1

    assert stall_lines(records) == []


async def test_blocking_outside_any_handler_says_where(
        records: pytest.LogCaptureFixture, seen: _Seen) -> None:
    async def quick(spore: Spore, ctx: Any) -> None:
        pass

    def stuck() -> None:
        seen.warned.wait(BACKSTOP)

    async with organism(quick).running():
        stuck()  # the test's own coroutine blocks the loop this time

    (level, warning), _ = stall_lines(records)
    assert level == logging.WARNING
    assert "by agent" not in warning
    assert " at tests/test_watchdog.py:" in warning
    assert " in stuck(), inside " in warning
    assert warning.endswith("; no agent runs meanwhile")


async def test_zero_turns_the_watchdog_off(records: pytest.LogCaptureFixture) -> None:
    async def slow(spore: Spore, ctx: Any) -> None:
        time.sleep(THRESHOLD * 2)  # noqa: ASYNC251 - the fault

    org = Organism.from_dict({"agents": {"sleeper": {"handler": slow}},
                              "limits": {"loop_stall_warning": 0}})
    async with org.running():
        assert watchdogs() == []
        await org.send("sleeper", {"n": 1})
        await org.idle()
    assert stall_lines(records) == []


def test_the_threshold_is_an_organism_setting() -> None:
    def spec(limits: dict[str, Any]) -> Any:
        return Organism.from_dict({"agents": {"a": {"handler": lambda s, c: None}},
                                   "limits": limits}).spec.limits

    assert spec({}).loop_stall_warning == 1.0
    assert spec({"loop_stall_warning": "250ms"}).loop_stall_warning == 0.25
    assert spec({"loop_stall_warning": 0}).loop_stall_warning == 0.0


async def test_a_disabled_watchdog_starts_nothing() -> None:
    for threshold in (None, 0):
        watchdog = LoopWatchdog(threshold, logging.getLogger(LOGGER))
        watchdog.start()
        assert watchdogs() == []
        watchdog.stop()


async def test_a_blocking_handler_installed_in_site_packages_gets_the_blocking_advice(
        records: pytest.LogCaptureFixture) -> None:
    # Found in review: with no frame outside sporeflow, the standard library and
    # site-packages, a handler's stall was told it was "sporeflow's own work"; a user's
    # agents installed with pip live in site-packages.
    filename = f"{sysconfig.get_paths()['purelib']}/myagents/handlers.py"
    namespace: dict[str, Any] = {"time": time}
    exec(compile(f"async def slow(spore, ctx):\n    time.sleep({THRESHOLD * 3})\n",  # noqa: S102
                 filename, "exec"), namespace)
    async with organism(namespace["slow"]).running() as org:
        await org.send("sleeper", {"n": 1})
        await org.idle()
    (_, warning), _ = stall_lines(records)
    assert "myagents/handlers.py:2 in slow()" in warning
    assert warning.endswith("use a sync handler (runs in a thread) or await instead of "
                            "blocking")
