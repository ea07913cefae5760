"""Faults of RabbitMQ other than an outage (``test_broker_outage``): its memory alarm,
an operator closing a connection, a reload while the broker is away.

Every test runs against a RabbitMQ node of this module's own (``private_broker``): the
shared one on 5672 is never touched. What a test turns on in the node (an alarm) it
turns off in its ``finally``, whether it passed or not; the node stops after the module.
The tests wait on conditions, a backstop failing them, never on a clock.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import BrokerError
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .private_broker import PrivateBroker

pytestmark = pytest.mark.amqp

BACKSTOP = 30.0  # seconds: each step here takes well under one on a healthy node


async def wait_for(condition: Callable[[], bool], what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + BACKSTOP
    while not condition():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"not within {BACKSTOP}s: {said}")
        await asyncio.sleep(0.02)


def url_of(broker: PrivateBroker) -> str:
    return f"{broker.url}?reconnect_interval=0.1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connections(broker: PrivateBroker) -> list[str]:
    """The node's client connections now, by their Erlang pid."""
    lines = broker.ctl("list_connections", "pid", "--quiet", "--no-table-headers")
    return [line.split()[0] for line in lines.splitlines() if line.startswith("<")]


async def test_a_response_made_again_for_a_redelivered_request_is_a_copy_not_a_dead_letter(
        private_broker: PrivateBroker) -> None:
    """Found by a fault injector: a responder's connection closed by an operator
    (``rabbitmqctl close_connection``) while it handled a request; the request came
    again, was handled again, and the second response, the same spore as the first
    (same id), was dead-lettered 'unexpected response' ("which is no pending request"),
    here and on the broker's dead-letter queue: at-least-once delivery told as an error.
    """
    runs: list[str] = []
    release = asyncio.Event()

    async def oracle(spore: Spore, ctx: Any) -> dict[str, Any]:
        runs.append(spore.id)
        await release.wait()
        return {"square": spore.knowledge["n"] ** 2}

    spec = Organism.from_dict({"organism": {"name": unique("copies"),
                                            "broker": {"give_up_after": "1m"}},
                               "agents": {"oracle": {"handler": oracle, "concurrency": 2}}}).spec
    topology = Topology.of(spec)
    url = url_of(private_broker)
    responder = Organism(spec, backend=url, hosted=["oracle"])
    requester = Organism(spec, backend=url, hosted=[])
    await responder.start()
    try:
        # The responder's, alone so far.
        [its_connection] = await asyncio.to_thread(connections, private_broker)
        await requester.start()
        asking = asyncio.create_task(requester.request("oracle", {"n": 3}, timeout=BACKSTOP))
        await wait_for(lambda: len(runs) == 1, "the responder took the request")
        await asyncio.to_thread(private_broker.ctl, "close_connection", its_connection,
                                "an operator closed it")
        await wait_for(lambda: len(runs) == 2, "the request came again and runs again")
        assert runs[0] == runs[1]
        release.set()  # both runs answer, with the same response
        answer = await asking
        both = (requester, responder)

        def settled() -> int:
            return sum(org.stats()["totals"].get("duplicate_responses", 0)
                       + len(org.dead_letters) for org in both)

        await wait_for(lambda: settled() >= 1, "the second response was settled")
        await responder.idle()
        await requester.idle()
    finally:
        release.set()
        await requester.stop(drain_timeout=2)
        await responder.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)
    assert answer.knowledge == {"square": 9}
    assert [list(org.dead_letters) for org in both] == [[], []]
    assert sum(org.stats()["totals"]["duplicate_responses"] for org in both) == 1


HANDLERS = """
import asyncio

RUNNING = set()
GATE = []


async def gated(spore, ctx):
    RUNNING.add(spore.knowledge["n"])
    if not GATE:
        GATE.append(asyncio.Event())
    await GATE[0].wait()
"""


async def test_a_reload_during_an_outage_raising_concurrency_runs_that_many_once_back(
        private_broker: PrivateBroker, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a fault injector: over a broker, a reload raising an agent's concurrency
    from 1 to 4 said "changed worker (concurrency)", yet two ran at once: the consumer's
    prefetch stays what the start made of the old concurrency (twice it). Reloaded while
    the broker is away, the new prefetch is applied once it is back."""
    module = unique("faults_handlers").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    handlers = importlib.import_module(module)
    file = tmp_path / "organism.yaml"
    text = (f"organism: {{name: {unique('reload')}, broker: {{give_up_after: 1m}}}}\n"
            f"agents:\n  worker: {{handler: '{module}:gated', concurrency: CONCURRENCY}}\n")
    file.write_text(text.replace("CONCURRENCY", "1"))
    org = Organism.from_file(file, backend=url_of(private_broker))
    topology = Topology.of(org.spec)
    await org.start()
    broker_down = False
    try:
        await asyncio.to_thread(private_broker.stop_app)
        broker_down = True
        await wait_for(lambda: org.stats()["broker"]["connection"]["state"] != "connected",
                       "the organism saw the broker go")
        file.write_text(text.replace("CONCURRENCY", "4"))
        report = await asyncio.wait_for(org.reload(), BACKSTOP)
        assert dict(report.changed) == {"worker": ("concurrency",)}
        await asyncio.to_thread(private_broker.start_app)
        broker_down = False
        await wait_for(lambda: org.stats()["broker"]["connection"]["state"] == "connected",
                       "the organism reconnected")
        for n in range(4):
            await org.send("worker", {"n": n})
        await wait_for(lambda: len(handlers.RUNNING) == 4,
                       lambda: f"four ran at once (running: {sorted(handlers.RUNNING)})")
    finally:
        if broker_down:
            await asyncio.to_thread(private_broker.start_app)
        if handlers.GATE:
            handlers.GATE[0].set()
        await org.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)


async def nothing(spore: Spore, ctx: Any) -> None:
    return None


async def test_a_stop_while_the_broker_blocks_the_connection_ends_by_its_drain_timeout(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fault injector: under RabbitMQ's memory alarm the broker blocks a
    publishing connection (it reads nothing from it, confirms nothing) though the
    connection stays up. ``stop(drain_timeout=1)`` then waited for the confirms of the
    spores sent meanwhile for as long as the alarm lasted (for ever, as far as the stop
    could tell), and so did ``sporeflow run`` on SIGTERM."""
    sent = 50
    org = Organism(Organism.from_dict({"organism": {"name": unique("blocked")},
                                       "agents": {"sink": {"handler": nothing}}}).spec,
                   backend=url_of(private_broker), hosted=[])
    topology = Topology.of(org.spec)
    await org.start()
    stopping: asyncio.Task[int] | None = None
    try:
        await org.send("sink", {"n": 0})
        await org.confirmed()
        with caplog.at_level(logging.WARNING, logger="aiormq.connection"):
            await asyncio.to_thread(private_broker.ctl, "set_vm_memory_high_watermark",
                                    "0.000001")  # the alarm
            for n in range(1, sent):
                await org.send("sink", {"n": n})
            await wait_for(lambda: "was blocked by" in caplog.text,
                           "the broker blocked the publishing connection")
        assert org.stats()["broker"]["published"] == 1  # the others wait for a confirm
        stopping = asyncio.create_task(org.stop(drain_timeout=1))
        done, _ = await asyncio.wait({stopping}, timeout=BACKSTOP)
        assert done, "the stop waited past its drain timeout for a broker reading nothing"
    finally:
        await asyncio.to_thread(private_broker.ctl, "set_vm_memory_high_watermark",
                                "0.4")  # RabbitMQ's default
        if stopping is not None:
            await stopping  # ends once the broker reads again, if not before
        elif org.state == "running":
            await org.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)
    assert org.state == "stopped"
    published = org.stats()["broker"]["published"]
    letters = Counter(str(letter.reason) for letter in org.dead_letters)
    assert set(letters) <= {"broker error"}
    assert published + letters["broker error"] == sent  # each confirmed or dead-lettered


# -- a start under the broker's memory alarm ---------------------------------------------

ALARM, NO_ALARM = "0.000001", "0.4"  # vm_memory_high_watermark: on, RabbitMQ's default
PROMPTLY = 10.0  # seconds: a backstop; these end within about one (the stop's LEAST)


def alarm(broker: PrivateBroker, watermark: str) -> None:
    broker.ctl("set_vm_memory_high_watermark", watermark)


def blocked(broker: PrivateBroker) -> bool:
    """Whether the node blocks a connection (one that published under its alarm)."""
    states = broker.ctl("list_connections", "state", "--quiet", "--no-table-headers")
    return "blocked" in states.split()


async def wait_until_blocked(broker: PrivateBroker, starting: asyncio.Future[Any]) -> None:
    """Wait until the node blocks the starting connection (asked of the node: ``ctl``
    takes about a second, and paces the polling)."""
    deadline = time.monotonic() + BACKSTOP
    while not await asyncio.to_thread(blocked, broker):
        assert not starting.done(), "the start ended before the broker blocked it"
        assert time.monotonic() < deadline, f"not within {BACKSTOP}s: the broker blocked it"


def hosting_nothing(node: PrivateBroker, name: str, **settings: Any) -> Organism:
    """A process of a one-agent organism named ``name`` on ``node`` hosting no agent
    (``settings``: more of ``organism:``)."""
    return Organism(Organism.from_dict({"organism": {"name": unique(name), **settings},
                                        "agents": {"sink": {"handler": nothing}}}).spec,
                    backend=url_of(node), hosted=[])


@asynccontextmanager
async def starting_under_alarm(broker: PrivateBroker,
                               org: Organism) -> AsyncIterator[asyncio.Task[None]]:
    """``org`` starting while ``broker``'s memory alarm is on; after, whatever happened:
    the alarm off, the start ended, ``org`` stopped and its topology deleted."""
    topology = Topology.of(org.spec)
    starting: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(alarm, broker, ALARM)
        starting = asyncio.create_task(org.start())
        yield starting
    finally:
        await asyncio.to_thread(alarm, broker, NO_ALARM)
        if starting is not None:
            await asyncio.gather(starting, return_exceptions=True)
        await org.stop(drain_timeout=2)
        await AmqpBackend(broker.url).destroy(topology)


async def test_a_start_cancelled_while_the_broker_blocks_its_connection_ends_at_once(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fault injector: under RabbitMQ's memory alarm the broker blocks the
    connection of a process starting (its declaration's record is a publish), and reads
    nothing more from it. A start cancelled then (Ctrl-C, SIGTERM, a caller's timeout)
    stayed stuck in its own cleanup, closing a channel on the blocked connection, for as
    long as the alarm lasted; and the log said nothing of the alarm."""
    org = hosting_nothing(private_broker, "blocked-start")
    with caplog.at_level(logging.INFO, logger="sporeflow"):
        async with starting_under_alarm(private_broker, org) as starting:
            await wait_until_blocked(private_broker, starting)
            starting.cancel()
            done, _ = await asyncio.wait({starting}, timeout=PROMPTLY)
            assert done, "the cancelled start waited on a broker reading nothing"
    assert starting.cancelled()
    assert org.state == "stopped"
    said = [r.getMessage() for r in caplog.records if r.name.startswith("sporeflow")]
    assert len([line for line in said if "blocking the connection" in line]) == 1, said
    assert not [line for line in said if "is the broker running" in line], said
    assert "memory or disk alarm" in str(org.failure)  # `sporeflow run` exits 1, saying so


async def test_a_start_the_broker_blocks_for_a_while_goes_on_once_unblocked(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    """The alarm clears: the start goes on, and the log said each change once."""
    org = hosting_nothing(private_broker, "unblocked")
    with caplog.at_level(logging.INFO, logger="sporeflow"):
        async with starting_under_alarm(private_broker, org) as starting:
            await wait_until_blocked(private_broker, starting)
            await asyncio.to_thread(alarm, private_broker, NO_ALARM)
            await asyncio.wait_for(starting, BACKSTOP)
            await org.send("sink", {"n": 1})
            await org.confirmed()
            published = org.stats()["broker"]["published"]
    said = [r.getMessage() for r in caplog.records if r.name.startswith("sporeflow")]
    assert len([line for line in said if "is blocking the connection" in line]) == 1, said
    assert len([line for line in said if "unblocked the connection" in line]) == 1, said
    assert org.failure is None
    assert published == 1


async def test_a_start_the_broker_blocks_gives_up_in_time_saying_why(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fault injector: a start blocked by the memory alarm gave up after
    ``give_up_after`` saying "could not connect ... 0 attempt(s) failed (the last:
    none); is the broker running?" (it was, and blocked the connection); closing the
    blocked connection cancelled what waited on it, so ``start()`` raised CancelledError,
    not the BrokerError, and ``sporeflow run`` ended in its traceback."""
    org = hosting_nothing(private_broker, "blocked-limit", broker={"give_up_after": "2s"})
    with caplog.at_level(logging.INFO, logger="sporeflow"):
        async with starting_under_alarm(private_broker, org) as starting:
            done, _ = await asyncio.wait({starting}, timeout=PROMPTLY)
            assert done, "the start waited past give_up_after on a broker reading nothing"
    failure = starting.exception()
    assert isinstance(failure, BrokerError), failure
    assert "blocked the connection" in str(failure), failure
    assert "memory or disk alarm" in str(failure), failure
    assert "is the broker running" not in caplog.text
    assert org.state == "stopped"


def run_quietly(file: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    """``sporeflow run FILE`` over ``url``, its stderr (the logs) written to ``log``."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(file), "--quiet",
             "--no-control", "--backend", url, "--drain-timeout", "1"],
            cwd=file.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL, stderr=err)


def sink_file(folder: Path, name: str) -> Path:
    """An organism file in ``folder``: one agent, its handler in a module of a name of its
    own (one process imports one module of a name)."""
    module = unique(f"{name}_handlers").replace("-", "_")
    (folder / f"{module}.py").write_text("async def sink(spore, ctx):\n    return None\n")
    file = folder / "organism.yaml"
    file.write_text(f"organism: {{name: {unique(name)}}}\n"
                    f"agents:\n  sink: {{handler: '{module}:sink'}}\n")
    return file


async def test_sporeflow_run_stops_on_sigterm_while_the_broker_blocks_its_start(
        private_broker: PrivateBroker, tmp_path: Path) -> None:
    """Found by a fault injector: ``sporeflow run`` started under the memory alarm waited
    in "connecting" up to give_up_after (300 s), and a SIGTERM meanwhile was not honoured
    (the cancelled start waited on the blocked connection, measured ~296 s). It stops at
    once, exits 1 and says the broker blocked the connection."""
    file = sink_file(tmp_path, "blocked-run")
    topology = Topology.of(Organism.from_file(file).spec)
    log = tmp_path / "run.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(alarm, private_broker, ALARM)
        process = run_quietly(file, url_of(private_broker), log)
        deadline = time.monotonic() + BACKSTOP
        while not await asyncio.to_thread(blocked, private_broker):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not within {BACKSTOP}s: the broker blocked it"
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, PROMPTLY)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM was not honoured while the broker blocked the "
                                 f"start:\n{log.read_text()[-3000:]}") from None
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        await asyncio.to_thread(alarm, private_broker, NO_ALARM)
        await AmqpBackend(private_broker.url).destroy(topology)
    text = log.read_text()
    assert code == 1, text[-3000:]
    last = text.splitlines()[-1]
    assert last.startswith("BrokerError: "), last
    assert "memory or disk alarm" in last, last
    assert text.count("blocking the connection") == 1, text
    assert "is the broker running" not in text


def one_off(file: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``sporeflow COMMAND... FILE`` run to its end, or killed after PROMPTLY seconds."""
    try:
        return subprocess.run([sys.executable, "-m", "sporeflow.pipeline.cli", *command,
                               str(file)], cwd=file.parent, capture_output=True, text=True,
                              timeout=PROMPTLY)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`sporeflow {' '.join(command)}` waited on a broker reading "
                             f"nothing:\n{exc.stderr!r}") from None


async def test_broker_declare_under_the_memory_alarm_exits_1_saying_so(
        private_broker: PrivateBroker, tmp_path: Path) -> None:
    """Found by a fault injector: ``sporeflow broker-declare`` (a one-off command: it
    gives up on the broker at once, give_up_after 0) run under RabbitMQ's memory alarm
    hung as long as the alarm lasted: its declaration's record is a publish, the broker
    blocked the connection, and a blocked connection was never given up. It exits 1 at
    once, saying the broker blocks it and why."""
    file = sink_file(tmp_path, "blocked-declare")
    topology = Topology.of(Organism.from_file(file).spec)
    try:
        await asyncio.to_thread(alarm, private_broker, ALARM)
        done = await asyncio.to_thread(one_off, file, "broker-declare", "--backend",
                                       url_of(private_broker))
    finally:
        await asyncio.to_thread(alarm, private_broker, NO_ALARM)
        await AmqpBackend(private_broker.url).destroy(topology)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.splitlines()[-1]
    assert last.startswith("BrokerError: "), last
    assert "blocks the connection" in last, last
    assert "memory or disk alarm" in last, last
    assert "is the broker running" not in done.stderr
