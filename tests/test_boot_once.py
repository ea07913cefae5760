"""Boot spores over a broker: once per deployment, not once per process start (issue 19).

The record lives on the broker, so every process of a deployment sees it: a process
hosting a booted agent that is killed and started again does not boot it again, two
processes starting at once boot it once, and ``--reboot`` (``start(reboot=True)``)
sends it again. On the embedded path nothing changes: boot spores at every start, or
once per journal. A journal is for the embedded path: with a broker it is refused.

The subprocess tests run ``sporeflow run --agents ...`` on the real broker, each on an
organism of its own name (its exchange and queues deleted after). A process is known to
have finished its start (its boot spores sent and confirmed, or not sent) when it prints
its metrics address, which ``sporeflow run`` does once ``start()`` has returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from click.testing import CliRunner

from sporeflow.config import ConfigError, OrganismSpec, organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.cli.main import cli

from .conformance.harness import AMQP_URL, broker_reachable

BACKSTOP = 30.0
COUNT = 200  # the boot workload: what the starter sends the worker when it boots

ORGANISM = """\
organism: {name: NAME}
agents:
  starter: {handler: "bootonce_handlers:start", boot: {count: COUNT}, concurrency: 1}
  worker: {handler: "bootonce_handlers:work", concurrency: 1}
""".replace("COUNT", str(COUNT))

HANDLERS = '''
import json, os
from pathlib import Path


def _write(kind, record):
    out = Path(os.environ["BOOT_OUT"]) / f"{kind}-{os.getpid()}.jsonl"
    with out.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\\n")


async def start(spore, ctx):
    """A sentinel goes on to the worker; a boot spore sends the whole workload."""
    if "sentinel" in spore.knowledge:
        await ctx.send("worker", spore.knowledge)
        return
    for n in range(spore.knowledge["count"]):
        await ctx.send("worker", {"n": n})
    _write("boot", {"id": spore.id})  # last: a boot cut short wrote nothing


def work(spore, ctx):
    _write("work", dict(spore.knowledge))
'''


# -- the deployment: an organism of its own on the real broker, in processes ------------


class Deployment:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = f"boot-{uuid.uuid4().hex[:10]}"
        self.path = folder / "organism.yaml"
        self.path.write_text(ORGANISM.replace("NAME", self.name))
        (folder / "bootonce_handlers.py").write_text(HANDLERS)
        self.out = folder / "out"
        self.out.mkdir()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    @property
    def topology(self) -> Topology:
        return Topology(exchange=f"sporeflow.{self.name}",
                        subscriptions={"starter": (), "worker": ()})

    def spawn(self, agents: str, *extra: str) -> subprocess.Popen[bytes]:
        log = self.folder / f"run-{len(self.logs)}.log"
        with log.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(self.path),
                 "--backend", AMQP_URL, "--agents", agents, "--metrics-port", "0",
                 "--drain-timeout", "10", *extra],
                cwd=self.folder, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "BOOT_OUT": str(self.out), "PYTHONUNBUFFERED": "1"})
        self.processes.append(process)
        self.logs[process.pid] = log
        return process

    def records(self, kind: str) -> list[dict[str, Any]]:
        """The complete lines written so far (one cut by a kill has no newline yet)."""
        lines = []
        for file in sorted(self.out.glob(f"{kind}-*.jsonl")):
            text = file.read_text()
            lines += [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]
        return lines

    def workload(self) -> list[dict[str, Any]]:
        return [r for r in self.records("work") if "sentinel" not in r]

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition``; fail at once if a process died, or after the backstop."""
        deadline = time.monotonic() + BACKSTOP
        while not condition():
            for process in self.processes:
                if process.poll() is not None and process.returncode != -signal.SIGKILL:
                    raise AssertionError(f"a process exited with {process.returncode} before "
                                         f"{what}: {self.logs[process.pid].read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {BACKSTOP}s: {what}")
            await asyncio.sleep(0.02)

    async def started(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until ``process`` finished ``start()``: it prints its metrics address then."""
        log = self.logs[process.pid]
        await self.wait(lambda: "metrics: http://" in log.read_text(),
                        f"process {process.pid} started")

    async def unacked(self, queue: str) -> int:
        """Messages of ``queue`` delivered and not yet acked (rabbitmqctl)."""
        done = await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-s", "list_queues", "name",
                             "messages_unacknowledged"],
            capture_output=True, text=True, timeout=60, check=True)
        for line in done.stdout.splitlines():
            name, _, count = line.rpartition("\t")
            if name == queue:
                return int(count)
        raise AssertionError(f"no queue {queue!r} on the broker")

    async def acked(self, queue: str) -> None:
        deadline = time.monotonic() + BACKSTOP
        while await self.unacked(queue):
            if time.monotonic() > deadline:
                raise AssertionError(f"{queue!r} still holds unacked messages")

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=BACKSTOP)
        self.processes.remove(process)  # its exit is no failure of the others' wait
        return process.returncode

    def end(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    made = Deployment(tmp_path)
    try:
        yield made
    finally:
        made.end()
        await AmqpBackend(AMQP_URL).destroy(made.topology)


async def ready_messages(queue: str) -> int:
    """How many messages wait in ``queue`` (no process consumes it any more)."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.consumer_count == 0
        return declared.declaration_result.message_count or 0


@pytest.mark.amqp
async def test_a_killed_process_restarted_does_not_boot_again_and_reboot_does(
        deployment: Deployment) -> None:
    client = Organism.from_file(deployment.path, backend=AMQP_URL, hosted=[])
    await client.start()
    try:
        deployment.spawn("worker")
        first = deployment.spawn("starter")
        await deployment.wait(lambda: len(deployment.workload()) >= COUNT
                              and len(deployment.records("boot")) == 1, "the first boot's work")
        await deployment.acked(deployment.topology.queue("starter"))  # not redelivered
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=BACKSTOP)

        again = deployment.spawn("starter")
        await deployment.started(again)
        # Behind a boot spore sent at this start, if any, in both queues (concurrency 1).
        await client.send("starter", {"sentinel": 1})
        await deployment.wait(lambda: {"sentinel": 1} in deployment.records("work"),
                              "the sentinel reached the worker")
        assert len(deployment.records("boot")) == 1
        assert len(deployment.workload()) == COUNT
        assert deployment.stop(again) == 0

        rebooted = deployment.spawn("starter", "--reboot")
        await deployment.started(rebooted)
        await client.send("starter", {"sentinel": 2})
        await deployment.wait(lambda: {"sentinel": 2} in deployment.records("work"),
                              "the second sentinel reached the worker")
        boots = deployment.records("boot")
        assert len(boots) == 2
        # One derived id (the first boot: the same in every process), one fresh (a reboot
        # is new work: not de-duplicated). The records come by file, named by pid, which
        # tells nothing of their order (a README run found the reboot's first).
        derived = [boot["id"] for boot in boots if boot["id"].startswith("boot-")]
        assert len(derived) == 1, boots
        assert len(deployment.workload()) == 2 * COUNT
        assert deployment.stop(rebooted) == 0
    finally:
        await client.stop(drain_timeout=5)


@pytest.mark.amqp
async def test_two_processes_hosting_the_booted_agent_started_together_boot_once(
        deployment: Deployment) -> None:
    deployment.spawn("worker")
    twins = [deployment.spawn("starter"), deployment.spawn("starter")]
    for twin in twins:
        await deployment.started(twin)
    # Both starts returned: whatever they sent is on the broker. Stopped, they leave
    # what they did not take in the starter's queue.
    assert [deployment.stop(twin) for twin in twins] == [0, 0]
    left = await ready_messages(deployment.topology.queue("starter"))
    assert len(deployment.records("boot")) + left == 1


# -- in one process: the lock, and what a boot not recorded means ------------------------


def spec_of(agents: dict[str, Any]) -> OrganismSpec:
    return organism_from_dict({"organism": {"name": f"boot-{uuid.uuid4().hex[:10]}"},
                               "agents": agents})


@pytest.fixture
async def destroyed() -> AsyncIterator[list[OrganismSpec]]:
    """Specs whose topology is deleted from the real broker after the test."""
    specs: list[OrganismSpec] = []
    yield specs
    for spec in specs:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(spec))


def booted_recorder() -> tuple[list[str], Callable[[Spore, Any], Any]]:
    seen: list[str] = []

    async def starter(spore: Spore, ctx: Any) -> None:
        seen.append(spore.id)

    return seen, starter


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BACKSTOP
    while not condition():
        assert time.monotonic() < deadline, "condition not met within the backstop"
        await asyncio.sleep(0.005)


@pytest.mark.amqp
async def test_starts_at_once_in_one_deployment_boot_once(
        destroyed: list[OrganismSpec]) -> None:
    seen, starter = booted_recorder()
    spec = spec_of({"starter": {"handler": starter, "boot": {"go": 1}}})
    destroyed.append(spec)
    organisms = [Organism(spec, backend=AmqpBackend(AMQP_URL), hosted=["starter"])
                 for _ in range(3)]
    try:
        await asyncio.gather(*(organism.start() for organism in organisms))
        await until(lambda: len(seen) >= 1)
    finally:
        for organism in organisms:
            await organism.stop(drain_timeout=5)
    left = await ready_messages(Topology.of(spec).queue("starter"))
    assert len(seen) + left == 1


@pytest.mark.amqp
async def test_a_start_waits_for_the_process_booting_then_finds_its_record(
        destroyed: list[OrganismSpec], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from sporeflow.pipeline.broker.amqp_boots import AmqpBootRecord

    caplog.set_level(logging.INFO, logger="sporeflow.broker.amqp")
    seen, starter = booted_recorder()
    spec = spec_of({"starter": {"handler": starter, "boot": {"go": 1}}})
    destroyed.append(spec)
    release, note = asyncio.Event(), AmqpBootRecord.note

    async def held(self: AmqpBootRecord, agent: str) -> None:
        await release.wait()  # the first process sent its boot spore and holds the lock
        await note(self, agent)

    monkeypatch.setattr(AmqpBootRecord, "note", held)
    first, second = (Organism(spec, backend=AmqpBackend(AMQP_URL), hosted=["starter"])
                     for _ in range(2))
    try:
        booting = asyncio.create_task(first.start())
        await until(lambda: len(seen) == 1)
        waiting = asyncio.create_task(second.start())
        await until(lambda: "another process is booting agent 'starter'" in caplog.text)
        assert not waiting.done()
        release.set()
        await asyncio.wait_for(asyncio.gather(booting, waiting), BACKSTOP)
        assert second.stats()["broker"]["published"] == 0  # it found the record
    finally:
        release.set()
        for organism in (first, second):
            await organism.stop(drain_timeout=5)
    assert len(seen) == 1


@pytest.mark.amqp
async def test_a_boot_sent_but_not_recorded_is_sent_again_with_its_id(
        destroyed: list[OrganismSpec], monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that dies between sending a boot spore and recording it: the next
    start sends it again (at-least-once), with the same id, for receivers to de-duplicate."""
    from sporeflow.pipeline.broker.amqp_boots import AmqpBootRecord

    seen, starter = booted_recorder()
    spec = spec_of({"starter": {"handler": starter, "boot": {"go": 1}}})
    destroyed.append(spec)

    async def dies_first(self: AmqpBootRecord, agent: str) -> None:
        return None

    with monkeypatch.context() as patch:
        patch.setattr(AmqpBootRecord, "note", dies_first)
        async with Organism(spec, backend=AMQP_URL, hosted=["starter"]).running():
            await until(lambda: len(seen) == 1)
    async with Organism(spec, backend=AMQP_URL, hosted=["starter"]).running():
        await until(lambda: len(seen) == 2)
    assert seen[0] == seen[1]
    third = Organism(spec, backend=AMQP_URL, hosted=["starter"])
    async with third.running():  # recorded now: start decided and sent nothing
        assert third.stats()["broker"]["published"] == 0


async def test_a_memory_broker_keeps_the_record_of_its_deployment() -> None:
    seen, starter = booted_recorder()
    spec = spec_of({"starter": {"handler": starter, "boot": {"go": 1}}})
    broker = MemoryBroker()
    first = Organism(spec, backend=MemoryBackend(broker))
    async with first.running():
        await until(lambda: len(seen) == 1)
    second = Organism(spec, backend=MemoryBackend(broker))
    async with second.running():
        assert second.stats()["broker"]["published"] == 0
    third = Organism(spec, backend=MemoryBackend(broker))
    async with third.running(reboot=True):
        await until(lambda: len(seen) == 2)
    assert seen[0] != seen[1]
    fresh = Organism(spec, backend=MemoryBackend())  # another broker: another deployment
    async with fresh.running():
        await until(lambda: len(seen) == 3)


# -- the embedded path: unchanged ----------------------------------------------------------


async def test_embedded_boots_at_every_start_and_once_per_journal(tmp_path: Path) -> None:
    seen, starter = booted_recorder()
    spec = spec_of({"starter": {"handler": starter, "boot": {"go": 1}}})
    for _ in range(2):
        organism = Organism(spec)
        async with organism.running():
            await organism.idle()
    assert len(seen) == 2
    for reboot in (False, False, True):
        organism = Organism(spec, journal=tmp_path / "j.db")
        async with organism.running(reboot=reboot):
            await organism.idle()
    assert len(seen) == 4  # the journal's boot, then the reboot's
    assert seen[2] != seen[3]
    assert organism.journal is not None
    assert organism.journal.pending == 0


# -- a journal over a broker -----------------------------------------------------------------


async def test_a_journal_over_a_broker_is_refused_naming_the_option(tmp_path: Path) -> None:
    seen, starter = booted_recorder()
    spec = spec_of({"starter": {"handler": starter, "boot": {"go": 1}}})
    organism = Organism(spec, backend=MemoryBackend(), journal=tmp_path / "j.db")
    with pytest.raises(ConfigError, match=r"organism\.journal.*--journal.*broker") as refused:
        await organism.start()
    assert "backend: memory" in str(refused.value)
    assert not (tmp_path / "j.db").exists()
    assert organism.state == "new"


@pytest.mark.amqp
def test_run_refuses_journal_with_a_broker_naming_the_option(tmp_path: Path) -> None:
    (tmp_path / "bootonce_handlers.py").write_text(HANDLERS)
    path = tmp_path / "organism.yaml"
    name = f"boot-{uuid.uuid4().hex[:10]}"
    path.write_text(ORGANISM.replace("NAME", name))
    try:
        result = CliRunner().invoke(cli, [
            "run", str(path), "--journal", str(tmp_path / "j.db"), "--backend", AMQP_URL,
            "--agents", "worker", "--until-idle", "--quiet"])
    finally:
        asyncio.run(AmqpBackend(AMQP_URL).destroy(Topology(
            exchange=f"sporeflow.{name}", subscriptions={"starter": (), "worker": ()})))
    assert result.exit_code == 1, result.output
    # The loader's warnings come first (logged at start); then, as every ConfigError, two
    # lines and no traceback.
    head, problem = [line for line in result.stderr.strip().splitlines()
                     if not line.startswith("WARNING ")]
    assert head == "ConfigError: 1 problem in the organism"
    assert problem.startswith(f"{path}:1:1: organism.journal: a journal (organism.journal, "
                              f"or --journal)")
    assert not (tmp_path / "j.db").exists()
