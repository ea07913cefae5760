"""Surviving the broker (issue 19): RabbitMQ stopped and started, or its node killed with
SIGKILL and started again, in the middle of a run of three ``sporeflow run --agents``
processes and a producer (this test process, hosting no agent).

Every test runs against a RabbitMQ node of this module's own (``private_broker``): the
shared one on 5672 is never stopped. The processes reconnect (pausing from 0.1 s,
``reconnect_interval`` in the URL), declare their topology, consumers and reply queues
again, and resume: every spore is handled at least once (a duplicate is counted, not
refused), and a send made during the outage returns only once the broker has the spore.
One that cannot reconnect within ``broker.give_up_after`` exits with status 1. A process
started while its broker is down connects by the same rule once the broker is up, or
gives up as late, and so does an organism started through the library. The tests wait
on the processes' output and logs, never on a clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from sporeflow.config import BrokerError, OrganismStateError
from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .private_broker import PrivateBroker, _free_port

pytestmark = pytest.mark.amqp

RELAY = Path(__file__).parent / "organisms" / "amqp_relay"
BACKSTOP = 40.0  # seconds: a node starts in about 5, and the processes resume within 2
BEFORE, DURING, AFTER = 100, 50, 150  # spores sent before, during and after the outage
LOST, BACK = "connection lost", "reconnected after"
OUTAGES: dict[str, tuple[Callable[[PrivateBroker], None], Callable[[PrivateBroker], None]]] = {
    "stop_app": (PrivateBroker.stop_app, PrivateBroker.start_app),
    "kill -9": (PrivateBroker.kill, PrivateBroker.start),
}


def relay_copy(folder: Path, broker: str = "") -> Path:
    """The relay organism under a unique name in ``folder``, ``broker:`` settings added."""
    name = f"outage-{uuid.uuid4().hex[:10]}"
    head = f"{{name: {name}{', broker: {' + broker + '}' if broker else ''}}}"
    text = (RELAY / "organism.yaml").read_text().replace("{name: relay}", head)
    (folder / "organism.yaml").write_text(text)
    shutil.copy(RELAY / "relay_handlers.py", folder / "relay_handlers.py")
    (folder / "out").mkdir()
    return folder / "organism.yaml"


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    organism = relay_copy(tmp_path)
    monkeypatch.setenv("RELAY_OUT", str(tmp_path / "out"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return organism


def url_of(broker: PrivateBroker) -> str:
    return f"{broker.url}?reconnect_interval=0.1"


LOG_OF: dict[int, Path] = {}  # a spawned process's pid -> its log, for a failure's message


def tail_of(process: subprocess.Popen[bytes]) -> str:
    log = LOG_OF.get(process.pid)
    return f"exit {process.returncode}: " + (log.read_text()[-4000:] if log else "(no log)")


@pytest.fixture(autouse=True)
def logs_shown_on_failure() -> Iterator[None]:
    """Print the end of each spawned process's log after the test: pytest shows it when
    the test failed (an outage's failure is in the processes' logs, not the test's)."""
    before = set(LOG_OF)
    yield
    for pid in sorted(set(LOG_OF) - before):
        print(f"--- process {pid}, {LOG_OF[pid].name}:\n{LOG_OF[pid].read_text()[-3000:]}")


def spawn(relay: Path, url: str, agents: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``sporeflow run --agents``; its stderr (the logs) goes to a file the test reads."""
    log = relay.parent / f"{agents.replace(',', '+')}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(relay), "--quiet",
             "--backend", url, "--agents", agents, "--drain-timeout", "10"],
            cwd=relay.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL, stderr=err)
    LOG_OF[process.pid] = log
    return process, log


def records(relay: Path, agent: str) -> list[dict[str, Any]]:
    """The complete lines the processes wrote so far."""
    lines = []
    for file in sorted((relay.parent / "out").glob(f"{agent}-*.jsonl")):
        text = file.read_text()
        lines += [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]
    return lines


async def wait_for(condition: Callable[[], bool], processes: list[subprocess.Popen[bytes]],
                   what: str) -> None:
    """Poll ``condition``; fail at once if a process died, or after the backstop."""
    deadline = time.monotonic() + BACKSTOP
    while not condition():
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise AssertionError(f"{[p.args for p in dead]} exited before {what}:\n"
                                 + "\n".join(tail_of(p) for p in dead))
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BACKSTOP}s: {what}")
        await asyncio.sleep(0.02)


async def consumers(url: str, topology: Topology, agents: Counter[str]) -> Counter[str]:
    """How many consumers the queues of ``agents`` have now (a passive declaration)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        found: Counter[str] = Counter()
        for agent in agents:
            queue = await channel.declare_queue(topology.queue(agent), passive=True)
            found[agent] = queue.declaration_result.consumer_count or 0
        return found
    finally:
        await connection.close()


async def all_started(url: str, topology: Topology, processes: list[subprocess.Popen[bytes]],
                      hosted: Counter[str]) -> None:
    """Wait until every process consumes each queue it hosts: the last step of its start
    (its reply queue is declared before)."""
    deadline = time.monotonic() + BACKSTOP
    while (found := await consumers(url, topology, hosted)) != hosted:
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise AssertionError(f"{[p.args for p in dead]} exited before they all started:"
                                 f"\n" + "\n".join(tail_of(p) for p in dead))
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BACKSTOP}s: every process started ({found} "
                                 f"consumers, {hosted} expected)")
        await asyncio.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=BACKSTOP)


def state_of(organism: Organism) -> dict[str, Any]:
    broker = organism.stats()["broker"]
    assert broker is not None
    return broker


@pytest.mark.parametrize("outage", sorted(OUTAGES))
async def test_an_outage_mid_run_loses_no_spore_and_every_process_resumes(
        outage: str, private_broker: PrivateBroker, relay: Path) -> None:
    down, up = OUTAGES[outage]
    url = url_of(private_broker)
    hosts = ("source,oracle,tick_a", "worker,sink", "worker,oracle,tick_b")
    spawned = [spawn(relay, url, agents) for agents in hosts]
    processes, logs = [p for p, _ in spawned], [log for _, log in spawned]
    client = Organism.from_file(relay, backend=url, hosted=[])
    await client.start()
    sends: list[asyncio.Task[Any]] = []
    broker_down = False
    try:
        for n in range(BEFORE):
            await client.send("source", {"n": n})
        await wait_for(lambda: len(records(relay, "sink")) >= BEFORE // 2, processes,
                       "half of the first spores reached the sink")
        # Every process up before the outage: this test is about a loss mid-run (a start
        # without the broker is the next tests').
        await all_started(url, Topology.of(client.spec), processes,
                          Counter(a for agents in hosts for a in agents.split(",")))

        began = time.monotonic()
        broker_down = True
        await asyncio.to_thread(down, private_broker)
        await wait_for(lambda: all(LOST in log.read_text() for log in logs)
                       and state_of(client)["connection"]["state"] == "disconnected",
                       processes, "every process noticed the outage")
        # Sent now, they wait for the broker's confirm: none returns while it is away.
        sends = [asyncio.create_task(client.send("source", {"n": n}))
                 for n in range(BEFORE, BEFORE + DURING)]
        await wait_for(lambda: state_of(client)["waiting_sends"] == DURING, processes,
                       "the sends made during the outage wait for the broker")
        assert not any(send.done() for send in sends)

        await asyncio.to_thread(up, private_broker)
        broker_down = False
        outage_length = time.monotonic() - began
        returned = time.monotonic()
        await asyncio.gather(*sends)  # each returns, or raises: here all return
        resumed = time.monotonic() - returned
        for n in range(BEFORE + DURING, BEFORE + DURING + AFTER):
            await client.send("source", {"n": n})
        everything = set(range(BEFORE + DURING + AFTER))
        await wait_for(lambda: {r["n"] for r in records(relay, "sink")} >= everything
                       and {r["n"] for r in records(relay, "tick_b")} >= {
                           n for n in everything if n % 10 == 0}, processes,
                       "every spore reached the sink, every tick the second listener")
        handled = time.monotonic() - returned
        connection = state_of(client)["connection"]
    finally:
        for send in sends:
            send.cancel()
        if broker_down:  # for the next tests, and to delete this one's queues
            await asyncio.to_thread(up, private_broker)
        codes = [stop(process) for process in processes]
        await client.stop(drain_timeout=5)
        await AmqpBackend(private_broker.url).destroy(Topology.of(client.spec))

    sink = Counter(r["n"] for r in records(relay, "sink"))
    duplicates = sum(sink.values()) - len(sink)
    print(f"\n{outage}: outage {outage_length:.1f} s; the sends made during it returned "
          f"{resumed:.1f} s after the broker did, everything was handled after "
          f"{handled:.1f} s; {duplicates} duplicate(s) at the sink of {len(sink)} spores")
    assert set(sink) == everything
    assert all(r["square"] == r["n"] ** 2 for r in records(relay, "sink"))
    assert {r["n"] for r in records(relay, "tick_a")} == {n for n in everything if n % 10 == 0}
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    assert connection["state"] == "connected"
    assert connection["reconnects"] == 1
    for log in logs:  # each change of state is logged once
        text = log.read_text()
        assert (text.count(LOST), text.count(BACK)) == (1, 1), text[-3000:]
        assert "could not publish" not in text, text[-3000:]


async def test_a_process_that_cannot_reconnect_gives_up_and_exits_non_zero(
        private_broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_copy(tmp_path, "give_up_after: 2s, send_timeout: 500ms")
    monkeypatch.setenv("RELAY_OUT", str(tmp_path / "out"))
    monkeypatch.syspath_prepend(str(tmp_path))
    url = url_of(private_broker)
    process, log = spawn(relay, url, "crunch")
    client = Organism.from_file(relay, backend=url, hosted=[])
    await client.start()
    try:
        await client.send("crunch", {"n": 0})
        await wait_for(lambda: len(records(relay, "crunch")) == 1, [process], "crunch ran")
        await asyncio.to_thread(private_broker.stop_app)
        await wait_for(lambda: state_of(client)["connection"]["state"] == "disconnected",
                       [process], "the client noticed the outage")

        with pytest.raises(BrokerError, match="did not confirm spore .* it was not sent"):
            await client.send("crunch", {"n": 1})  # send_timeout: 500ms
        with pytest.raises(BrokerError, match="did not confirm spore .* it was not sent"):
            await client.request("oracle", {"n": 1}, timeout=0.3)  # its own timeout
        await asyncio.wait_for(client.failing.wait(), BACKSTOP)
        assert client.state == "failed"
        assert isinstance(client.failure, BrokerError)
        assert "gave up on RabbitMQ" in str(client.failure)
        assert state_of(client)["connection"]["state"] == "gave up"
        with pytest.raises(OrganismStateError, match="failed"):
            await client.send("crunch", {"n": 2})
        code = await asyncio.to_thread(process.wait, BACKSTOP)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await asyncio.to_thread(private_broker.start_app)
        await client.stop(drain_timeout=5)
        await AmqpBackend(private_broker.url).destroy(Topology.of(client.spec))
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert text.count(LOST) == 1, text
    assert text.count("gave up on RabbitMQ") == 2, text  # logged, then the exit's line
    assert "BrokerError: gave up on RabbitMQ" in text.splitlines()[-1]
    attempts = [line for line in text.splitlines() if "reconnecting, attempt" in line]
    assert [line.split("attempt ")[1].split()[0] for line in attempts][:3] == ["1", "2", "4"]


async def test_a_stop_during_an_outage_ends_and_accounts_for_every_spore_in_flight(
        private_broker: PrivateBroker, tmp_path: Path) -> None:
    """Found by a fault injector: the node killed with many publishes in flight, the stop
    that followed waited for ever (each publish waited on the lost channel: for room in
    its write queue, for a confirm, for aio-pika to restore it), and the spores it held
    were neither published nor dead-lettered."""
    async def nothing(spore: Any, ctx: Any) -> None:
        return None

    name = f"outage-stop-{uuid.uuid4().hex[:8]}"
    client = Organism(Organism.from_dict({"organism": {"name": name}, "agents": {
        "sink": {"handler": nothing}}}).spec, backend=url_of(private_broker), hosted=[])
    await client.start()
    sent = 2000
    try:
        for n in range(sent):
            await client.send("sink", {"n": n})
        await asyncio.to_thread(private_broker.kill)
        await asyncio.wait_for(client.stop(drain_timeout=3), BACKSTOP)
    finally:
        await asyncio.to_thread(private_broker.start)
        if client.state != "stopped":
            await client.stop(drain_timeout=1)
        await AmqpBackend(private_broker.url).destroy(Topology.of(client.spec))
    assert client.state == "stopped"
    published = client.stats()["broker"]["published"]
    letters = Counter(str(letter.reason) for letter in client.dead_letters)
    assert set(letters) <= {"broker error"}
    assert published + letters["broker error"] == sent  # each published or dead-lettered


CONNECTING, CONNECTED = "connecting, attempt 1 failed", "connected after"


async def test_a_process_started_before_its_broker_connects_once_it_is_up_and_boots_once(
        private_broker: PrivateBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Found by hand: a process started while RabbitMQ was unreachable exited at once
    (``cannot reach RabbitMQ``), and ``Organism.start()`` raised, where a process that had
    connected once waited for the broker's return."""
    relay = relay_copy(tmp_path, "give_up_after: 5m, send_timeout: 5m")
    text = relay.read_text().replace('emit: {to: worker}}', 'emit: {to: worker}, boot: {n: 0}}')
    relay.write_text(text)
    monkeypatch.setenv("RELAY_OUT", str(tmp_path / "out"))
    monkeypatch.syspath_prepend(str(tmp_path))
    url = url_of(private_broker)
    await asyncio.to_thread(private_broker.stop_app)
    broker_down = True
    client = Organism.from_file(relay, backend=url, hosted=[])
    process, log = spawn(relay, url, "source,worker,oracle,sink,tick_a,tick_b")
    starting: asyncio.Task[None] | None = None
    sends: list[asyncio.Task[None]] = []
    try:
        with caplog.at_level(logging.WARNING, logger="sporeflow.broker.link"):
            starting = asyncio.create_task(client.start())
            await wait_for(lambda: CONNECTING in log.read_text() and CONNECTING in caplog.text,
                           [process], "both tried and failed to connect")
            assert not starting.done()
            assert state_of(client)["connection"]["state"] == "connecting"
            # Sent while the client connects: each waits for the broker's confirm.
            sends = [asyncio.create_task(client.send("source", {"n": n})) for n in (1, 2, 3)]
            await wait_for(lambda: state_of(client)["waiting_sends"] == 3, [process],
                           "the sends made while connecting wait for the broker")
            with pytest.raises(BrokerError, match="did not confirm spore .* it was not sent"):
                await client.request("oracle", {"n": 9}, timeout=0.3)  # its own timeout
            assert not any(send.done() for send in sends)

            await asyncio.to_thread(private_broker.start_app)
            broker_down = False
            await asyncio.wait_for(starting, BACKSTOP)
            await asyncio.wait_for(asyncio.gather(*sends), BACKSTOP)  # confirmed: returned
        await wait_for(lambda: {r["n"] for r in records(relay, "sink")} >= {0, 1, 2, 3},
                       [process], "the boot spore and the three sends reached the sink")
        assert caplog.text.count(CONNECTED) == 1
    finally:
        for task in [*sends, *([starting] if starting is not None else [])]:
            task.cancel()
        if broker_down:
            await asyncio.to_thread(private_broker.start_app)
        code = stop(process)
        await client.stop(drain_timeout=5)
        await AmqpBackend(private_broker.url).destroy(Topology.of(client.spec))
    sink = Counter(r["n"] for r in records(relay, "sink"))
    assert sink[0] == 1  # the boot spore, once
    # The request not confirmed in time was withdrawn: a dead letter here, never sent.
    assert [str(letter.reason) for letter in client.dead_letters] == ["broker error"]
    assert code == 0, tail_of(process)
    text = log.read_text()
    assert (text.count(CONNECTING), text.count(CONNECTED), text.count(LOST)) == (1, 1, 0), text


async def test_a_process_started_without_its_broker_gives_up_after_its_limit_and_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_copy(tmp_path, "give_up_after: 1s, send_timeout: 5m")
    monkeypatch.setenv("RELAY_OUT", str(tmp_path / "out"))
    monkeypatch.syspath_prepend(str(tmp_path))
    url = f"amqp://app:hunter2@127.0.0.1:{_free_port()}/?reconnect_interval=0.1"  # nobody
    process, log = spawn(relay, url, "crunch")
    client = Organism.from_file(relay, backend=url, hosted=[])
    starting = asyncio.create_task(client.start())
    try:
        await wait_for(lambda: client.state == "running"
                       and state_of(client)["connection"]["state"] == "connecting", [],
                       "the client is connecting")
        sending = asyncio.create_task(client.send("crunch", {"n": 1}))
        with pytest.raises(BrokerError, match="gave up on RabbitMQ .* could not connect"):
            await asyncio.wait_for(starting, BACKSTOP)
        with pytest.raises(BrokerError, match="gave up on RabbitMQ"):  # never reported sent
            await asyncio.wait_for(sending, BACKSTOP)
        code = await asyncio.to_thread(process.wait, BACKSTOP)
    finally:
        starting.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert client.state == "stopped"
    assert [str(letter.reason) for letter in client.dead_letters] == ["broker error"]
    text = log.read_text()
    assert code == 1, text[-3000:]
    last = text.splitlines()[-1]
    assert last.startswith("BrokerError: gave up on RabbitMQ at amqp://app:***@127.0.0.1:"), last
    assert "could not connect for" in last
    assert "organism.broker.give_up_after is 1 s" in last
    assert "hunter2" not in text
    assert text.count("gave up on RabbitMQ") == 2, text  # logged once, then the exit's line
    assert text.count(CONNECTING) == 1, text


async def test_a_process_waiting_for_its_broker_stops_on_sigterm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = relay_copy(tmp_path, "give_up_after: 5m")
    monkeypatch.setenv("RELAY_OUT", str(tmp_path / "out"))
    url = f"amqp://guest:guest@127.0.0.1:{_free_port()}/?reconnect_interval=0.1"  # nobody
    process, log = spawn(relay, url, "crunch")
    try:
        await wait_for(lambda: CONNECTING in log.read_text(), [process], "it tried to connect")
        code = stop(process)  # SIGTERM: a supervisor's stop, long before give_up_after
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, tail_of(process)
    assert "gave up" not in log.read_text()


async def test_an_outage_while_the_topology_is_declared_is_waited_out(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fault injector: a loss while ``open()`` declared the topology (here,
    while it waited for the declaring lock another process held) made ``start()`` raise
    BrokerError at once, and ``sporeflow run`` exit 1, seconds into a give_up_after of 5
    minutes. It is waited out as an outage later is."""
    client = Organism.from_dict(
        {"organism": {"name": f"outage-{uuid.uuid4().hex[:8]}",
                      "broker": {"give_up_after": "5m"}},
         "agents": {"sink": {"handler": "relay_handlers:sink"}}},
        base_dir=RELAY, backend=url_of(private_broker))
    topology = Topology.of(client.spec)
    holder = await aio_pika.connect(private_broker.url)  # another process declaring
    await (await holder.channel()).declare_queue(topology.declaring_lock, exclusive=True)
    starting: asyncio.Task[None] | None = None
    try:
        with caplog.at_level(logging.INFO, logger="sporeflow.broker.amqp"):
            starting = asyncio.create_task(client.start())
            await wait_for(lambda: "waiting for it" in caplog.text or starting.done(), [],
                           "start() waits for the declaring lock")
            assert not starting.done()
            await asyncio.to_thread(private_broker.stop_app)  # the broker restarts meanwhile
            await asyncio.to_thread(private_broker.start_app)
            await asyncio.wait_for(starting, BACKSTOP)
        assert client.state == "running"
        assert "the connection was lost while declaring the topology" in caplog.text
    finally:
        if starting is not None and not starting.done():
            starting.cancel()
        if not holder.is_closed:
            await holder.close()
        await client.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)


async def test_a_stop_during_an_outage_makes_no_dead_letter_of_output_whose_delivery_goes_back(
        private_broker: PrivateBroker) -> None:
    """Found by a fault injector: stopped while the broker was away, a process made a
    'broker error' dead letter of each output of a delivery that went back to its queue
    unacked, though the delivery comes again and its output is made again (same id)."""
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow(spore: Any, ctx: Any) -> dict[str, Any]:
        entered.set()
        await release.wait()
        return {"n": spore.knowledge["n"]}

    async def nothing(spore: Any, ctx: Any) -> None:
        return None

    built = Organism.from_dict(
        {"organism": {"name": f"outage-{uuid.uuid4().hex[:8]}",
                      "broker": {"give_up_after": "5m"}},
         "agents": {"a": {"handler": slow, "emit": {"to": "b"}}, "b": {"handler": nothing}}})
    org = Organism(built.spec, backend=url_of(private_broker), hosted=["a"])
    topology = Topology.of(org.spec)
    await org.start()
    broker_down = False
    try:
        await org.send("a", {"n": 1})
        await asyncio.wait_for(entered.wait(), BACKSTOP)
        await asyncio.to_thread(private_broker.stop_app)
        broker_down = True
        await wait_for(lambda: state_of(org)["connection"]["state"] != "connected", [],
                       "the process sees the broker gone")
        release.set()  # the handler ends while the broker is away: its output waits
        await wait_for(lambda: org.stats()["agents"]["a"]["handled"] == 1, [],
                       "the handler ended")
        await org.stop(drain_timeout=2)
        letters = [(str(letter.reason), letter.spore.id) for letter in org.dead_letters]
        await asyncio.to_thread(private_broker.start_app)
        broker_down = False
        connection = await aio_pika.connect(private_broker.url)
        try:
            queue = await (await connection.channel()).declare_queue(topology.queue("a"),
                                                                     passive=True)
            waiting = queue.declaration_result.message_count
        finally:
            await connection.close()
        assert waiting == 1  # the delivery of n=1 went back to a's queue: it comes again
        assert letters == []
    finally:
        if broker_down:
            await asyncio.to_thread(private_broker.start_app)
        if org.state == "running":
            await org.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)
