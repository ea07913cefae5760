"""``sporeflow dlq`` on RabbitMQ's dead-letter queue (issue 19, 4), and quorum queues (5).

Each test uses an organism of its own name (its own exchange and queues), deleted after;
the CLI runs in a thread, as its own event loop, while the test's loop waits on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from click.testing import CliRunner

from sporeflow.config import load_organism
from sporeflow.pipeline import BrokerError, Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.dead_letter_queue import DeadLetterQueue
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.core.deadletters import LetterChoice

from .conformance.harness import AMQP_URL, broker_reachable
from .test_broker_bounds import queue_depth

pytestmark = pytest.mark.amqp

BACKSTOP = 25.0
KEY = "dlq-signing-key-0123456789abcdef"
WORKER = '''
import asyncio
from pathlib import Path

from sporeflow.pipeline import DeliveryError

HERE = Path(__file__).parent


def work(spore, ctx):
    n = spore.knowledge["n"]
    if n % 2 == 0 and not (HERE / "fixed").exists():
        raise ValueError(f"even item {n}")
    with (HERE / "out.txt").open("a") as out:
        out.write(f"{n}\\n")


def grumpy(spore, ctx):
    raise KeyError("never")


async def forward(spore, ctx):
    try:
        await ctx.send("nob\\udc80dy", {"n": 1})  # a name decoded from bytes, say
    except DeliveryError:
        pass


async def hang(spore, ctx):
    with (HERE / "started.txt").open("a") as out:
        out.write(f"{spore.id}\\n")
    await asyncio.Event().wait()
'''


@dataclass
class Made:
    path: Path  # organism.yaml
    topology: Topology

    def lines(self, name: str) -> list[str]:
        file = self.path.parent / name
        return file.read_text().split() if file.exists() else []


@pytest.fixture
async def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               ) -> AsyncIterator[Callable[[str], Made]]:
    """``made(extra)``: an organism file (``extra`` goes under ``organism:``) with agents
    worker, other (always fails), stuck (hangs) and fwd (sends to a name UTF-8 cannot
    write); deleted from the broker after."""
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    monkeypatch.setenv("DLQ_TEST_KEY", KEY)
    module = f"dlqw_{uuid.uuid4().hex[:10]}"  # handlers are cached by module name
    (tmp_path / f"{module}.py").write_text(WORKER)
    topologies: list[Topology] = []

    def make(extra: str) -> Made:
        name = f"dlqb-{uuid.uuid4().hex[:10]}"
        path = tmp_path / "organism.yaml"
        path.write_text(
            f"organism: {{name: {name}, backend: '{AMQP_URL}'{extra}}}\n"
            f"agents:\n"
            f"  worker: {{handler: {module}:work}}\n"
            f"  other: {{handler: {module}:grumpy}}\n"
            f"  stuck: {{handler: {module}:hang, max_crashes: 2}}\n"
            f"  fwd: {{handler: {module}:forward}}\n")
        topologies.append(Topology.of(load_organism(path)))
        return Made(path, topologies[-1])

    try:
        yield make
    finally:
        for topology in topologies:
            await AmqpBackend(AMQP_URL).destroy(topology)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


async def dlq(*args: str) -> tuple[int, str, str]:
    """``sporeflow dlq ARGS`` in a thread: the command runs an event loop of its own."""
    return await asyncio.to_thread(invoke, "dlq", *args)


async def eventually(condition: Callable[[], object], what: str) -> None:
    """Wait until ``condition()`` (sync, or a coroutine's result) is true; a backstop only."""
    deadline = time.monotonic() + BACKSTOP
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BACKSTOP}s: {what}")
        await asyncio.sleep(0.02)


async def dead_letter_some(made: Made) -> None:
    """worker fails on 0, 2 and 4 (handles 1, 3, 5), other on 10: four dead letters, in
    the order sent (one spore at a time)."""
    org = Organism.from_file(made.path)
    async with org.running(drain_timeout=5):
        for n in range(6):
            await org.send("worker", {"n": n})
            if n % 2 == 0:  # one at a time: the letters' order is the sending order
                await eventually(partial(dead_lettered, org, n // 2 + 1), f"item {n} dead")
        await org.send("other", {"n": 10})
        await eventually(partial(dead_lettered, org, 4), "4 letters")
    assert sorted(made.lines("out.txt")) == ["1", "3", "5"]


def dead_lettered(org: Organism, count: int) -> bool:
    return bool(org.stats()["broker"]["dead_lettered"] >= count)


def rows(out: str) -> list[tuple[int, str, str]]:
    """(number, agent, reason) of each line of ``dlq list``."""
    found = []
    for line in out.splitlines():
        number, _, _, agent, rest = line.split(maxsplit=4)
        found.append((int(number), agent, rest.split("  ")[0].strip()))
    return found


async def test_list_show_replay_and_purge_the_broker_dead_letters(made: Callable[[str], Made]
                                                                  ) -> None:
    # Signed: the replay must be signed afresh, or the worker would refuse it.
    org = made(", signing: {key_env: DLQ_TEST_KEY}")
    await dead_letter_some(org)
    where = str(org.path)

    code, out, err = await dlq("list", where)  # chosen by itself: backend is amqp
    assert code == 0, err
    assert rows(out) == [(1, "worker", "handler failed"), (2, "worker", "handler failed"),
                         (3, "worker", "handler failed"), (4, "other", "handler failed")]
    assert [line.split("ValueError: even item ")[1].split()[0]
            for line in out.splitlines()[:3]] == ["0", "2", "4"]
    assert f"4 dead letter(s) in {org.topology.dead_letter_queue}" in err
    # Listing took nothing: the same letters, in the same order, are there again.
    assert (await dlq("list", where))[1] == out
    assert await queue_depth(org.topology.dead_letter_queue) == 4

    code, out, _ = await dlq("list", where, "--agent", "other")
    assert [r[0] for r in rows(out)] == [4]
    code, out, _ = await dlq("list", where, "--agent", "worker", "--id", "1", "--id", "3")
    assert [r[0] for r in rows(out)] == [1, 3]
    code, out, _ = await dlq("list", where, "--reason", "poison")
    assert code == 0
    assert out == ""
    code, out, _ = await dlq("list", where, "--json", "--agent", "worker")
    letters = [json.loads(line) for line in out.splitlines()]
    assert [letter["spore"]["knowledge"] for letter in letters] == [{"n": 0}, {"n": 2}, {"n": 4}]
    second = letters[1]["spore"]["id"]

    code, out, err = await dlq("show", where, "--id", second)
    assert code == 0, err
    assert out.startswith("dead letter 2\n")
    for part in (f"spore:    {second}", "ValueError: even item 2", '"n": 2', "agent:    worker"):
        assert part in out

    (org.path.parent / "fixed").touch()  # the handler is fixed
    code, _, err = await dlq("replay", where, "--id", second)
    assert code == 0, err
    assert "1 dead letter(s) published again to exchange" in err
    assert [r[0] for r in rows((await dlq("list", where))[1])] == [1, 2, 3]
    fixed = Organism.from_file(org.path)
    async with fixed.running(drain_timeout=5):
        await eventually(lambda: "2" in org.lines("out.txt"), "the replayed spore handled")
    assert sorted(org.lines("out.txt")) == ["1", "2", "3", "5"]

    code, _, err = await dlq("purge", where, "--all")
    assert code == 0, err
    assert "3 dead letter(s) purged" in err
    assert (await dlq("list", where))[1] == ""
    assert await queue_depth(org.topology.dead_letter_queue) == 0


async def test_letters_this_process_made_are_in_the_broker_queue_once_each(
        made: Callable[[str], Made]) -> None:
    # Found by a new user: over a broker, a spore refused in the process that sent it (an
    # expiry, an unknown agent, a schema; a late response) was a dead letter in that
    # process's memory only: `dlq list` reads the broker's queue and never showed it, and
    # it was gone with the process. A delivery's letter is there once, not twice.
    org = made("")
    organism = Organism.from_file(org.path)
    async with organism.running(drain_timeout=5):
        await organism.send("worker", {"n": 7}, expires_in=-1)  # expired before it left
        await organism.submit(Spore(knowledge={"n": 8}, to_agent="nobody"))
        await organism.send("worker", {"n": 0})  # fails there: the delivery's own letter
        await eventually(lambda: len(organism.dead_letters) == 3, "three letters")
    # Its stop waited for what it was putting in the broker's queue.
    assert [letter.reason for letter in organism.dead_letters] == [
        "expired", "unknown agent", "handler failed"]
    code, out, err = await dlq("list", str(org.path))
    assert code == 0, err
    assert sorted(reason for _, _, reason in rows(out)) == [
        "expired", "handler failed", "unknown agent"]
    code, out, _ = await dlq("list", str(org.path), "--json", "--reason", "expired")
    [expired] = [json.loads(line) for line in out.splitlines()]
    assert (expired["spore"]["knowledge"], expired["agent"]) == ({"n": 7}, None)
    assert organism.stats()["broker"]["letters_out"] == 2
    code, _, err = await dlq("replay", str(org.path), "--reason", "expired")
    assert code == 0, err
    organism = Organism.from_file(org.path)
    async with organism.running(drain_timeout=5):  # replayed without its expiry: handled
        await eventually(lambda: "7" in org.lines("out.txt"), "the replay handled")


async def test_broker_delete_takes_a_deployment_away_only_when_asked_and_unused(
        made: Callable[[str], Made]) -> None:
    # A new user's finding: README pointed at AmqpBackend.destroy, which the package does
    # not export, and no command took an organism's exchanges and queues away.
    org = made("")
    organism = Organism.from_file(org.path)
    async with organism.running(drain_timeout=5):
        code, _, err = await asyncio.to_thread(invoke, "broker-delete", str(org.path), "--yes")
        assert code == 1
        assert "is consumed by a running process: stop the organism's processes" in err
        await organism.send("worker", {"n": 1})
    code, _, err = await asyncio.to_thread(invoke, "broker-delete", str(org.path))
    assert code == 1
    assert err.startswith(f"would delete exchanges {org.topology.exchange}, ")
    assert "pass --yes to delete" in err
    assert await queue_depth(org.topology.dead_letter_queue) == 0  # still there
    code, out, err = await asyncio.to_thread(invoke, "broker-delete", str(org.path), "--yes")
    assert code == 0, err
    assert out.startswith("deleted from ")
    for queue in (org.topology.queue("worker"), org.topology.dead_letter_queue):
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await queue_depth(queue)


async def test_commands_that_never_sign_run_without_the_signing_key(
        made: Callable[[str], Made], monkeypatch: pytest.MonkeyPatch) -> None:
    # Admin tools need no secret they never use; those that sign still ask for it.
    org = made(", signing: {key_env: DLQ_TEST_KEY}")
    await dead_letter_some(org)
    monkeypatch.delenv("DLQ_TEST_KEY")
    where = str(org.path)
    for command in (["graph"], ["check"], ["broker-permissions", "--agents", "worker"],
                    ["broker-declare"], ["dlq", "list"], ["dlq", "show", "--id", "1"],
                    ["dlq", "purge", "--id", "1"]):
        code, _, err = await asyncio.to_thread(invoke, *command, where)
        assert code == 0, (command, err)
        if command == ["check"]:  # a warning, as for an http source's unset token_env
            assert "warning: environment variable 'DLQ_TEST_KEY' is not set" in err
            assert "this one signs none" in err
    code, _, err = await dlq("replay", where, "--all")
    assert code == 1
    assert "environment variable 'DLQ_TEST_KEY' is not set; export it with the key" in err
    assert await queue_depth(org.topology.dead_letter_queue) == 3  # only the one purged
    code, _, err = await asyncio.to_thread(invoke, "broker-delete", where, "--yes")
    assert code == 0, err


async def test_purge_and_replay_need_a_choice_and_run_is_for_journals(
        made: Callable[[str], Made]) -> None:
    org = made("")
    code, _, err = await dlq("purge", str(org.path))
    assert (code, "--all" in err) == (2, True)
    code, _, err = await dlq("replay", str(org.path), "--all", "--run")
    assert (code, "running processes deliver them" in err) == (2, True)
    code, _, err = await dlq("list", str(org.path), "--from", "journal")
    assert (code, "has no journal" in err) == (1, True)


async def test_a_letter_that_is_no_spore_is_listed_purged_never_replayed(
        made: Callable[[str], Made]) -> None:
    org = made(", signing: {key_env: DLQ_TEST_KEY}")
    backend = AmqpBackend(AMQP_URL)
    async with backend:
        await backend.open(org.topology)
    await publish_letter(org.topology, b"{not json",
                         {"spore_id": "junk-1", "x-sporeflow-reason": "invalid",
                          "x-sporeflow-error": f"SporeError: bad, key {KEY} here",
                          "x-sporeflow-agent": "worker", "x-sporeflow-attempts": 0})
    code, out, err = await dlq("list", str(org.path))
    assert code == 0, err
    assert rows(out) == [(1, "worker", "invalid")]
    assert "junk-1" in out
    for command in ("list", "show"):  # the organism's secrets never printed
        text = "".join((await dlq(command, str(org.path), "--id", "junk-1"))[1:])
        assert KEY not in text
        assert "***" in text
    assert KEY not in (await dlq("list", str(org.path), "--json"))[1]

    code, _, err = await dlq("replay", str(org.path), "--all")
    assert code == 1
    assert "not replayed: dead letter 1 (spore junk-1): it holds no spore" in err
    assert "it stays a dead letter: `dlq purge --id junk-1` removes it" in err
    assert await queue_depth(org.topology.dead_letter_queue) == 1  # left where it was
    code, _, err = await dlq("purge", str(org.path), "--reason", "invalid")
    assert (code, "1 dead letter(s) purged" in err) == (0, True)
    assert await queue_depth(org.topology.dead_letter_queue) == 0


async def test_a_letter_that_cannot_be_signed_is_refused_alone_and_the_rest_replayed(
        made: Callable[[str], Made], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: with signing on, one letter from an agent whose private key this
    process lacks stopped `dlq replay --all` before anything moved: no letter after it
    (nor before) was replayed."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
    from sporeflow.steps import Spore
    from sporeflow.steps.signing import signed

    private = ed25519.Ed25519PrivateKey.generate()
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    org = made(f", signing: {{key_env: DLQ_TEST_KEY, agents: {{other: "
               f"{{public_key: '{public}', private_key_env: DLQ_OTHER_KEY}}}}}}")
    backend = AmqpBackend(AMQP_URL)
    async with backend:
        await backend.open(org.topology)
    # Each signed by its sender, as its first delivery was: `other` in its own process.
    monkeypatch.setenv("DLQ_OTHER_KEY", base64.b64encode(private.private_bytes_raw()).decode())
    keys = load_organism(org.path).signing
    monkeypatch.delenv("DLQ_OTHER_KEY")
    assert keys is not None
    spores = [signed(Spore(knowledge={"n": n}, from_agent=sender, to_agent="worker"), keys)
              for n, sender in enumerate(["cli", "other", "cli"])]
    for spore in spores:
        body, headers, _ = spore_to_amqp(spore)
        await publish_letter(org.topology, body, {
            **headers, "x-sporeflow-reason": "handler failed", "x-sporeflow-agent": "worker",
            "x-sporeflow-error": "ValueError: x", "x-sporeflow-attempts": 1})
    code, _, err = await dlq("replay", str(org.path), "--all")
    assert code == 1
    [refused] = [line for line in err.splitlines() if line.startswith("not replayed: ")]
    assert refused.startswith(f"not replayed: dead letter 2 (spore {spores[1].id}): "
                              f"BadSignature: this process holds no key to sign spore")
    assert refused.endswith(f"`dlq replay --id {spores[1].id}` again, or "
                            f"`dlq purge --id {spores[1].id}` to drop it")
    assert "2 dead letter(s) published again to exchange" in err
    code, out, _ = await dlq("list", str(org.path), "--json")
    assert [json.loads(line)["spore"]["id"] for line in out.splitlines()] == [spores[1].id]


async def test_dlq_replay_never_signs_a_letter_forged_on_the_dead_letter_exchange(
        made: Callable[[str], Made]) -> None:
    """Found by a tester: a spore published to `<exchange>.dead` (every agent-hosting user
    of broker-permissions may write there) with `x-sporeflow-reason: handler failed` was
    listed as a dead letter, and `dlq replay` signed it with the organism's key: the
    agent handled it as its sender's. Only a letter whose spore's signature proves its
    sender is replayed; a letter this process made is signed as it would be published."""
    from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
    from sporeflow.steps.signing import signed

    org = made(", signing: {key_env: DLQ_TEST_KEY}")
    organism = Organism.from_file(org.path)
    async with organism.running(drain_timeout=5):  # a letter of its own: replayed
        await organism.send("worker", {"n": 7}, expires_in=-1)
        await eventually(lambda: organism.stats()["broker"]["letters_out"] == 1, "put")
    forged = [Spore(knowledge={"n": 100}, from_agent="other", to_agent="worker"),
              signed(Spore(knowledge={"n": 101}, from_agent="other", to_agent="worker"),
                     "another-key-0123456789abcdef0123")]
    for spore in forged:
        body, headers, _ = spore_to_amqp(spore)
        await publish_letter(org.topology, body, {
            **headers, "x-sporeflow-reason": "handler failed", "x-sporeflow-agent": "worker"})
    code, _, err = await dlq("replay", str(org.path), "--all")
    assert code == 1
    refused = [line for line in err.splitlines() if line.startswith("not replayed: ")]
    assert [line.split(": ", 2)[1] for line in refused] == [
        f"dead letter 2 (spore {forged[0].id})", f"dead letter 3 (spore {forged[1].id})"]
    assert all("signature does not prove its sender" in line
               and "`dlq purge --id" in line for line in refused), refused
    assert "1 dead letter(s) published again to exchange" in err
    assert await queue_depth(org.topology.queue("worker")) == 1  # the process's own only
    code, out, _ = await dlq("list", str(org.path), "--json")
    assert [json.loads(line)["spore"]["id"] for line in out.splitlines()] == [
        spore.id for spore in forged]


async def test_an_id_that_names_no_broker_letter_is_an_error_naming_it(
        made: Callable[[str], Made]) -> None:
    """Found in review: `dlq replay --id 9` (show, purge) of a letter the queue no longer
    held said "0 dead letter(s)" and exited 0."""
    org = made("")
    await dead_letter_some(org)
    for command in ("show", "replay", "purge"):
        code, out, err = await dlq(command, str(org.path), "--id", "1", "--id", "9")
        assert (code, out) == (1, "")
        assert err.startswith(f"NoSuchDeadLetter: {org.topology.dead_letter_queue} at ")
        assert "no dead letter '9': " in err
        assert f"`sporeflow dlq list {org.path}` lists the letters kept now" in err
    assert await queue_depth(org.topology.dead_letter_queue) == 4  # nothing was done


async def test_one_reader_at_a_time_and_what_it_holds_goes_back(
        made: Callable[[str], Made]) -> None:
    org = made("")
    await dead_letter_some(org)
    async with DeadLetterQueue(AMQP_URL, org.topology) as reader:
        held = await reader.read(LetterChoice(agents=("worker",)))
        assert [s.number for s in held] == [1, 2, 3]
        assert await queue_depth(org.topology.dead_letter_queue) == 0  # all taken, unacked
        code, _, err = await dlq("list", str(org.path))
        assert (code, "another `sporeflow dlq` is reading" in err) == (1, True)
    await eventually(lambda: queue_depth(org.topology.dead_letter_queue), "letters given back")
    assert await queue_depth(org.topology.dead_letter_queue) == 4
    code, out, _ = await dlq("list", str(org.path))
    assert [r[1] for r in rows(out)] == ["worker", "worker", "worker", "other"]


async def publish_letter(topology: Topology, body: bytes, headers: dict[str, Any]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.dead_letter_exchange)
        await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="")


# -- quorum queues -----------------------------------------------------------------------


async def test_classic_queues_stay_the_default(made: Callable[[str], Made]) -> None:
    org = made("")
    arguments = org.topology.queue_arguments("worker")
    assert arguments["x-max-priority"] == 10
    assert "x-queue-type" not in arguments
    backend = AmqpBackend(AMQP_URL)
    async with backend:
        await backend.open(org.topology)
    # The same queues declared quorum: RabbitMQ keeps them classic, and says so.
    with pytest.raises(BrokerError) as refused:
        async with AmqpBackend(AMQP_URL) as again:
            await again.open(replace(org.topology, queue_type="quorum"))
    assert "organism.broker.queue_type" in str(refused.value)
    assert "keep the old setting (organism.broker.queue_type: classic)" in str(refused.value)


async def test_a_quorum_organism_handles_spores_and_a_spore_that_kills_its_consumer_is_poison(
        made: Callable[[str], Made]) -> None:
    org = made(", broker: {queue_type: quorum}")
    arguments = org.topology.queue_arguments("stuck")
    assert arguments["x-queue-type"] == "quorum"
    assert "x-max-priority" not in arguments
    assert arguments["x-delivery-limit"] == 1  # stuck's max_crashes is 2
    client = Organism.from_file(org.path, hosted=["worker"])
    async with client.running(drain_timeout=5):
        (org.path.parent / "fixed").touch()
        for n in range(20):
            await client.send("worker", {"n": n})
        await eventually(lambda: len(org.lines("out.txt")) == 20, "20 spores handled")
        await client.send("stuck", {"n": 99})
        # A process hosting stuck dies (SIGKILL) while its handler runs, twice.
        for crashes in (1, 2):
            log = org.path.parent / f"run-{crashes}.log"
            process = host_stuck(org.path, log)
            try:
                await eventually(partial(started, org, crashes, process),
                                 f"run {crashes} started")
                assert process.poll() is None, log.read_text()[-2000:]
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=BACKSTOP)
    assert sorted(map(int, org.lines("out.txt"))) == list(range(20))
    await eventually(lambda: queue_depth(org.topology.dead_letter_queue),
                     "dead-lettered by RabbitMQ")
    code, out, err = await dlq("list", str(org.path), "--reason", "poison")
    assert code == 0, err
    assert rows(out) == [(1, "stuck", "poison")]
    code, out, _ = await dlq("show", str(org.path), "--reason", "poison")
    for part in ("attempts: 2", "agents.stuck.max_crashes", '"n": 99'):
        assert part in out
    assert await queue_depth(org.topology.queue("stuck")) == 0  # not given to a third process


def started(made: Made, count: int, process: subprocess.Popen[bytes]) -> bool:
    """``count`` runs of stuck's handler began, or the process ended."""
    return len(made.lines("started.txt")) == count or process.poll() is not None


def host_stuck(organism: Path, log: Path) -> subprocess.Popen[bytes]:
    """``sporeflow run ORGANISM --agents stuck`` in a process of its own."""
    with log.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(organism), "--quiet",
             "--agents", "stuck"], cwd=organism.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL, stderr=errors)


def test_x_death_reasons_read_as_sporeflow_reasons() -> None:
    from sporeflow.config import organism_from_dict
    from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
    from sporeflow.pipeline.broker.dead_letter_queue import read_letter
    from sporeflow.steps import Spore

    spec = organism_from_dict({"organism": {"name": "xd", "broker": {"queue_type": "quorum"}},
                               "agents": {"a": {"handler": print, "max_crashes": 4}}})
    topology = Topology.of(spec)
    body, headers, _ = spore_to_amqp(Spore(knowledge={"k": 1}, to_agent="a"))
    when = datetime(2026, 3, 1, tzinfo=UTC)

    def death(reason: str) -> dict[str, object]:
        return {**headers, "x-death": [{"reason": reason, "queue": topology.queue("a"),
                                        "count": 1, "time": when}]}

    poison, readable = read_letter(death("delivery_limit"), body, None, topology)
    assert readable
    assert (poison.reason, poison.agent, poison.attempts, poison.at) == ("poison", "a", 4, when)
    assert "after 4 deliveries" in poison.error
    assert read_letter(death("expired"), body, None, topology)[0].reason == "expired"
    assert read_letter(death("maxlen"), body, None, topology)[0].reason == "broker error"
    ours, _ = read_letter({**headers, "x-sporeflow-reason": "timeout", "x-sporeflow-agent": "a",
                           "x-sporeflow-error": "TimeoutError: slow", "x-sporeflow-attempts": 3},
                          body, when, topology)
    assert (ours.reason, ours.agent, ours.attempts, ours.error, ours.at) == (
        "timeout", "a", 3, "TimeoutError: slow", when)
    junk, readable = read_letter({"x-death": "nonsense"}, b"\xff", None, topology)
    assert (readable, junk.reason) == (False, "invalid")


def test_a_letter_without_a_timestamp_is_dated_by_its_spore_at_every_listing() -> None:
    from sporeflow.config import organism_from_dict
    from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
    from sporeflow.pipeline.broker.dead_letter_queue import read_letter
    from sporeflow.steps import Spore

    topology = Topology.of(organism_from_dict({"agents": {"a": {"handler": print}}}))
    made = datetime(2026, 3, 1, 12, tzinfo=UTC)
    body, headers, _ = spore_to_amqp(Spore(knowledge={"k": 1}, to_agent="a",
                                           created_at=made))
    ours = {**headers, "x-sporeflow-reason": "timeout", "x-sporeflow-agent": "a"}
    by_hand = dict(headers)  # published to the dead-letter exchange by hand
    unreadable = {**headers, "x-sporeflow-reason": "invalid"}
    for given, content in ((ours, body), (by_hand, body), (unreadable, b"\xff")):
        assert read_letter(given, content, None, topology)[0].at == made, given


def test_quorum_queues_refuse_reject_publish_dlx_and_bound_what_they_can() -> None:
    from sporeflow.config import ConfigError, organism_from_dict

    def spec(**broker: object) -> Topology:
        return Topology.of(organism_from_dict({"organism": {"name": "q", "broker": broker},
                                               "agents": {"a": {"handler": print}}}))

    with pytest.raises(ConfigError, match="reject-publish-dlx"):
        spec(queue_type="quorum", overflow="reject-publish-dlx")
    kept = spec(queue_type="quorum").queue_arguments("a")
    assert (kept["x-delivery-limit"], kept["x-max-length"]) == (2, 100_000)
    assert kept["x-dead-letter-strategy"] == "at-least-once"
    dropping = spec(queue_type="quorum", overflow="drop-head").queue_arguments("a")
    assert "x-dead-letter-strategy" not in dropping  # RabbitMQ: at-least-once needs reject
    assert spec().dead_letter_arguments() == spec(queue_type="quorum").dead_letter_arguments()


async def test_a_letter_naming_what_utf8_cannot_write_still_reaches_the_broker_queue(
        made: Callable[[str], Made]) -> None:
    # Review: letters_out puts a letter of this process's in the broker's queue with the
    # spore's names as AMQP headers (to_agent, the routing key, message_id). A name with a
    # lone surrogate (refused at validate, or an unknown agent) cannot be encoded there:
    # UnicodeEncodeError, no BrokerError, so LettersOut logged "a broker task failed" with
    # a traceback and the letter never reached the queue `dlq` reads.
    org = made("")
    organism = Organism.from_file(org.path)
    async with organism.running(drain_timeout=5):
        await organism.send("fwd", {"go": 1})
        await eventually(lambda: len(organism.dead_letters) == 1, "the letter")
        await organism.idle()
    # The stop waited for the letters it was putting in the broker's queue.
    assert organism.stats()["broker"]["letters_out"] == 1
    code, out, err = await dlq("list", str(org.path))
    assert code == 0, err
    assert [reason for _, _, reason in rows(out)] == ["unknown agent"]


async def test_broker_delete_takes_the_queues_kept_for_removed_agents_too(
        made: Callable[[str], Made]) -> None:
    # Found by a documentation audit: broker-declare kept the queue of an agent taken out
    # of the file (it held a spore), and broker-delete left it, unnamed, with the record
    # that would have told of it gone: nothing would ever warn of it again.
    org = made("")
    code, _, err = await asyncio.to_thread(invoke, "broker-declare", str(org.path))
    assert code == 0, err
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await (await connection.channel()).default_exchange.publish(
            aio_pika.Message(b"{}"), routing_key=org.topology.queue("other"))
    finally:
        await connection.close()
    text = org.path.read_text()
    org.path.write_text("".join(line for line in text.splitlines(keepends=True)
                                if not line.startswith("  other:")))
    code, out, err = await asyncio.to_thread(invoke, "broker-declare", str(org.path))
    assert code == 0, err
    assert f"kept {org.topology.queue('other')}, unbound" in out + err
    code, _, err = await asyncio.to_thread(invoke, "broker-delete", str(org.path))
    assert code == 1
    assert org.topology.queue("other") in err  # the preview names it
    connection = await aio_pika.connect(AMQP_URL)  # a process of it still consumes
    try:
        queue = await (await connection.channel()).get_queue(org.topology.queue("worker"))
        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            return None

        await queue.consume(hold)
        code, _, err = await asyncio.to_thread(invoke, "broker-delete", str(org.path),
                                               "--yes")
        assert code == 1
        assert "is consumed by a running process" in err
        # Nothing deleted yet (before: the queues sorted before worker's went first).
        assert await queue_depth(org.topology.queue("fwd")) == 0
        assert await queue_depth(org.topology.queue("other")) == 1
    finally:
        await connection.close()
    code, out, err = await asyncio.to_thread(invoke, "broker-delete", str(org.path), "--yes")
    assert code == 0, err
    assert org.topology.queue("other") in out
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await queue_depth(org.topology.queue("other"))
