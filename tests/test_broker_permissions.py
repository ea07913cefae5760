"""A RabbitMQ user per process: ``sporeflow broker-permissions`` and ``broker-declare``.

The permissions are checked twice: as regular expressions (the profiles a process
and a client get), and on the real broker. There, a vhost and two users made for
this run get exactly what the command prints (its script is run, the passwords
given through the environment); an administrator declares the topology with
``broker-declare``; then plain aio-pika connections show what user A (hosting
agent a) is refused, and two sporeflow processes, one per user, answer a request
end to end. The vhost and the users are deleted after, also when a test fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from click.testing import CliRunner

from sporeflow.config import BrokerError, OrganismSpec, load_organism, organism_from_text
from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.permissions import permissions
from sporeflow.pipeline.cli.main import cli
from sporeflow.steps import Spore, SporeType

from .conformance.harness import broker_reachable

ORGANISM = """
organism: {name: NAME}
channels:
  news: {publish: [b]}
agents:
  a: {handler: brokerperm_handlers:ask_b, peers: [b], subscribe: [news]}
  b: {handler: brokerperm_handlers:answer, subscribe: [news], boot: {n: 0}}
  c: {handler: brokerperm_handlers:answer, peers: []}
"""
HANDLERS = '''
async def ask_b(spore, ctx):
    response = await ctx.request("b", {"n": spore.knowledge["n"]}, timeout=20)
    return {"n": response.knowledge["n"], "via": response.from_agent}


def answer(spore, ctx):
    return {"n": spore.knowledge["n"] + 1}
'''
TYPES = [t.value for t in SporeType]


def organism(tmp_path: Path, name: str = "shop") -> Path:
    (tmp_path / "brokerperm_handlers.py").write_text(HANDLERS)
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM.replace("NAME", name))
    return path


@pytest.fixture
def spec(tmp_path: Path) -> OrganismSpec:
    return load_organism(organism(tmp_path))


# -- the profiles, as regular expressions ----------------------------------------------


def matches(pattern: str, *names: str) -> list[bool]:
    return [re.search(pattern, name) is not None for name in names]


def test_a_process_consumes_and_binds_only_its_own(spec: OrganismSpec) -> None:
    perms = permissions(spec, ["a"], user="shop-a")
    mine = "sporeflow.shop.reply.shop-a.0f3c"
    theirs = "sporeflow.shop.reply.shop-b.0f3c"
    assert matches(perms.configure, mine, theirs, "sporeflow.shop", "sporeflow.shop.a",
                   "sporeflow.shop.dead-letters") == [True, False, False, False, False]
    assert matches(perms.read, "sporeflow.shop.a", mine, "sporeflow.shop",
                   "sporeflow.shop.b", theirs, "sporeflow.shop.dead",
                   "sporeflow.shop.dead-letters") == [True, True, True, False, False, False,
                                                      False]
    assert matches(perms.write, "sporeflow.shop", "sporeflow.shop.dead", mine, "amq.default",
                   "sporeflow.shop.b", theirs) == [True, True, True, False, False, False]
    assert matches(perms.topic_read, "reply.shop-a.0f3c", "#", "agent.a.*", "reply.shop-b.0f3c",
                   "reply.*.0f3c") == [True, False, False, False, False]


def test_a_process_records_only_the_boots_of_its_own_booted_agents(spec: OrganismSpec) -> None:
    topology = Topology.of(spec)
    names = [topology.boot_lock("b"), topology.boot_marker("b"), topology.boot_lock("a"),
             topology.boot_marker("a"), topology.queue("b"), f"{topology.boot_marker('b')}x"]
    perms_b = permissions(spec, ["b"], user="shop-b")
    assert matches(perms_b.configure, *names) == [True, True, False, False, False, False]
    assert matches(perms_b.write, *names[:2]) == matches(perms_b.read, *names[:2]) == [
        False, False]
    # a has no boot spore, and a client boots nothing.
    for perms in (permissions(spec, ["a"]), permissions(spec, [])):
        assert matches(perms.configure, *names[:4]) == [False] * 4


def test_a_process_publishes_only_where_its_agents_may(spec: OrganismSpec) -> None:
    write = permissions(spec, ["a"], user="shop-a").topic_write
    allowed = ["agent.b.request", "agent.a.knowledge", "channel.main.broadcast",
               "reply.shop-client.0f3c"]
    refused = ["agent.c.request", "agent.b.request.extra", "#", "agent.*.request",
               "channel.news.broadcast", "agent.b.bogus"]
    assert matches(write, *allowed) == [True] * len(allowed)
    assert matches(write, *refused) == [False] * len(refused)
    # b may broadcast on news and address anyone (no peers); c no one but itself.
    write_b = permissions(spec, ["b"]).topic_write
    assert matches(write_b, "channel.news.broadcast", "agent.c.request") == [True, True]
    assert matches(permissions(spec, ["c"]).topic_write, "agent.a.knowledge",
                   "agent.c.knowledge") == [False, True]


def test_a_client_sends_to_any_agent_and_consumes_no_agent_queue(spec: OrganismSpec) -> None:
    perms = permissions(spec, [])
    assert perms.user == "shop-client"
    assert perms.agents == ()
    assert matches(perms.topic_write, *(f"agent.{a}.{t}" for a in "abc" for t in TYPES)) == (
        [True] * 15)
    # news has a publish list, and a client answers no request.
    assert matches(perms.topic_write, "channel.main.broadcast", "channel.news.broadcast",
                   "reply.shop-a.0f3c") == [True, False, False]
    assert matches(perms.read, "sporeflow.shop.a", "sporeflow.shop.b", "sporeflow.shop.c",
                   "sporeflow.shop.reply.shop-client.0f3c") == [False, False, False, True]
    assert not re.search(perms.write, "sporeflow.shop.dead")


def test_user_names_cannot_reach_into_other_keys(spec: OrganismSpec) -> None:
    topology = Topology.of(spec)
    assert topology.reply_prefix("ops.a*#") == "sporeflow.shop.reply.ops%2Ea%2A%23."
    queue = topology.reply_prefix("ops.a*#") + "0f3c"
    assert topology.reply_key(queue) == "reply.ops%2Ea%2A%23.0f3c"
    assert topology.reply_key("sporeflow.shop.b") is None
    perms = permissions(spec, ["a"], user="ops.a*#")
    assert matches(perms.topic_read, "reply.ops%2Ea%2A%23.0f3c", "reply.ops.a.0f3c") == [
        True, False]


def test_routing_key_templates_shape_the_patterns(tmp_path: Path) -> None:
    text = (ORGANISM.replace("NAME", "shop") + "\n").replace(
        "organism: {name: shop}",
        "organism: {name: shop, broker: {direct_key: 'to.{agent}', "
        "broadcast_key: '{type}.on.{channel}'}}")
    (tmp_path / "brokerperm_handlers.py").write_text(HANDLERS)
    custom = organism_from_text(text, base_dir=tmp_path)
    write = permissions(custom, ["a"]).topic_write
    assert matches(write, "to.b", "broadcast.on.main", "agent.b.request", "to.c") == [
        True, True, False, False]


def test_the_script_names_no_password_and_quotes_what_it_is_given(tmp_path: Path) -> None:
    path = organism(tmp_path)
    result = CliRunner().invoke(
        cli, ["broker-permissions", str(path), "--agents", "a", "--user", "o'brien",
              "--vhost", "team one", "--password-env", "PERMS_PASSWORD"],
        env={"PERMS_PASSWORD": "hunter2-secret"})
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert "hunter2-secret" not in script
    assert script.startswith("#!/bin/sh\n")
    assert "rabbitmqctl set_permissions -p 'team one' -- 'o'\"'\"'brien' " in script
    assert '"$PERMS_PASSWORD" | rabbitmqctl add_user -- ' in script
    assert "sporeflow broker-declare" in script
    done = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr


def test_the_command_refuses_unknown_agents_in_one_line(tmp_path: Path) -> None:
    path = organism(tmp_path)
    result = CliRunner().invoke(cli, ["broker-permissions", str(path), "--agents", "a,zed"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "BrokerError: --agents names ['zed'], which organism 'shop' does not have; its "
        "agents are ['a', 'b', 'c']"]
    both = CliRunner().invoke(cli, ["broker-permissions", str(path), "--agents", "a",
                                    "--client"])
    assert both.exit_code == 2
    assert "--agents or --client" in both.stderr


# -- on the broker ----------------------------------------------------------------------


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@dataclass(frozen=True)
class Vhost:
    name: str
    organism: Path
    spec: OrganismSpec
    users: dict[str, tuple[str, str]]  # hosted agent -> (user, password)

    def url(self, agent: str, password: str | None = None) -> str:
        user, real = self.users[agent]
        return f"amqp://{user}:{password or real}@127.0.0.1:5672/{self.name}"

    @property
    def admin(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    @property
    def topology(self) -> Topology:
        return Topology.of(self.spec)


@pytest.fixture(scope="module")
def vhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vhost]:
    """A vhost with users for agents a and b, made by the printed scripts; guest is its
    administrator and declares the topology."""
    why = broker_reachable()
    if why is not None or shutil.which("rabbitmqctl") is None:
        pytest.fail(f"these tests need RabbitMQ on 127.0.0.1:5672 and rabbitmqctl ({why})")
    run = uuid.uuid4().hex[:10]
    path = organism(tmp_path_factory.mktemp("perms"), f"perms-{run}")
    users = {agent: (f"perms-{agent}-{run}", secrets.token_hex(16)) for agent in "ab"}
    name = f"sporeflow-perms-{run}"
    try:
        ctl("add_vhost", name)
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        for agent, (user, password) in users.items():
            printed = CliRunner().invoke(cli, [
                "broker-permissions", str(path), "--agents", agent, "--user", user,
                "--vhost", name, "--password-env", "PERMS_PASSWORD"])
            assert printed.exit_code == 0, printed.output
            subprocess.run(["sh", "-c", printed.stdout], check=True, capture_output=True,
                           env={**os.environ, "PERMS_PASSWORD": password}, timeout=300)
        declared = subprocess.run(
            [sys.executable, "-m", "sporeflow.pipeline.cli", "broker-declare", str(path),
             "--backend", f"amqp://guest:guest@127.0.0.1:5672/{name}"],
            capture_output=True, text=True, timeout=120)
        assert declared.returncode == 0, declared.stderr
        yield Vhost(name, path, load_organism(path), users)
    finally:
        for user, _ in users.values():
            subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True,
                           timeout=120)
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=120)


Action = Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]


async def refused(connection: aio_pika.abc.AbstractConnection, action: Action,
                  error: type[Exception] = aiormq.exceptions.ChannelAccessRefused) -> str:
    """What the broker says refusing ``action`` (each refusal closes its channel)."""
    channel = await connection.channel(publisher_confirms=True)
    with pytest.raises(error) as caught:
        await action(channel)
    return str(caught.value)


async def take(vhost: Vhost, queue: str) -> aio_pika.abc.AbstractIncomingMessage:
    """The next message of ``queue``, taken as the administrator."""
    async with await aio_pika.connect(vhost.admin) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        message = await declared.get(timeout=10)
        await message.ack()
        return message


@pytest.mark.amqp
async def test_user_a_is_refused_what_is_not_its_own(vhost: Vhost) -> None:
    topology, (user_a, _) = vhost.topology, vhost.users["a"]
    mine = f"{topology.reply_prefix(user_a)}0f3c"
    body = aio_pika.Message(b"{}", user_id=user_a)

    async def get(channel: aio_pika.abc.AbstractChannel, queue: str) -> Any:
        return await (await channel.declare_queue(queue, passive=True)).get(fail=False)

    async def bind_mine(channel: aio_pika.abc.AbstractChannel, exchange: str, key: str) -> None:
        queue = await channel.declare_queue(mine, exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=key)

    async def publish(channel: aio_pika.abc.AbstractChannel, key: str,
                      message: aio_pika.Message = body) -> None:
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(message, routing_key=key)

    async with await aio_pika.connect(vhost.url("a")) as connection:
        assert f"queue '{topology.queue('b')}'" in await refused(
            connection, lambda ch: get(ch, topology.queue("b")))
        assert topology.dead_letter_queue in await refused(
            connection, lambda ch: get(ch, topology.dead_letter_queue))
        assert "topic '#'" in await refused(
            connection, lambda ch: bind_mine(ch, topology.exchange, "#"))
        assert "topic 'agent.b.*'" in await refused(
            connection, lambda ch: bind_mine(ch, topology.exchange, "agent.b.*"))
        assert topology.dead_letter_exchange in await refused(
            connection, lambda ch: bind_mine(ch, topology.dead_letter_exchange, ""))
        assert "topic 'agent.c.request'" in await refused(
            connection, lambda ch: publish(ch, "agent.c.request"))
        assert "amq.default" in await refused(
            connection, lambda ch: ch.default_exchange.publish(body, topology.queue("b")))
        assert topology.queue("b") in await refused(
            connection, lambda ch: ch.queue_delete(topology.queue("b")))
        assert "spy" in await refused(connection, lambda ch: ch.declare_queue("spy"))
        assert topology.boot_lock("b") in await refused(
            connection, lambda ch: ch.declare_queue(topology.boot_lock("b"), exclusive=True))
        assert f"authenticated user was '{user_a}'" in await refused(
            connection, lambda ch: publish(ch, "agent.b.request", aio_pika.Message(
                b"{}", user_id=vhost.users["b"][0])),
            aiormq.exceptions.ChannelPreconditionFailed)
        # What is its own passes: its queue, its reply queue's key, its peer's key.
        channel = await connection.channel(publisher_confirms=True)
        assert await get(channel, topology.queue("a")) is None
        await bind_mine(channel, topology.exchange, topology.reply_key(mine) or "")
        await publish(channel, "agent.b.request")
    assert (await take(vhost, topology.queue("b"))).user_id == user_a


@pytest.mark.amqp
async def test_the_backend_signs_its_user_and_outlives_a_refusal(vhost: Vhost) -> None:
    topology, (user_a, _) = vhost.topology, vhost.users["a"]
    backend = AmqpBackend(vhost.url("a"))
    await backend.open(topology)
    try:
        assert backend.declared is False  # joined what the administrator declared
        to_c = Spore(knowledge={"n": 1}, from_agent="a", to_agent="c")
        with pytest.raises(BrokerError, match=f"refused spore .*user '{user_a}'.*agent.c"):
            await backend.publish(to_c, routing_key=topology.routing_key(to_c))
        to_b = Spore(knowledge={"n": 2}, from_agent="a", to_agent="b")
        await backend.publish(to_b, routing_key=topology.routing_key(to_b))
    finally:
        await backend.close()
    assert backend.statistics().failed_publishes == 1
    message = await take(vhost, topology.queue("b"))
    assert message.user_id == user_a
    assert message.headers["spore_id"] == to_b.id


@pytest.mark.amqp
async def test_an_undeclared_topology_names_broker_declare(vhost: Vhost) -> None:
    other = Topology(exchange=f"{vhost.topology.exchange}.other", subscriptions={"a": ()})
    backend = AmqpBackend(vhost.url("a"))
    with pytest.raises(BrokerError, match="not declared yet.*sporeflow broker-declare"):
        await backend.open(other)


@pytest.mark.amqp
def test_broker_declare_refuses_a_user_that_may_not_declare(vhost: Vhost) -> None:
    result = CliRunner().invoke(cli, ["broker-declare", str(vhost.organism),
                                      "--backend", vhost.url("a")])
    assert result.exit_code == 1
    user, password = vhost.users["a"]
    assert f"BrokerError: user '{user}' at amqp://{user}:***@" in result.stderr
    assert "may not declare" in result.stderr
    assert password not in result.output


def spawn_b(vhost: Vhost) -> subprocess.Popen[bytes]:
    """``sporeflow run --agents b`` as user b; sporeflow reads the password from the
    environment, so it is on no command line."""
    url_b = vhost.url("b", password="${PERMS_PASSWORD_B}")
    return subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(vhost.organism),
         "--quiet", "--agents", "b", "--backend", url_b, "--drain-timeout", "5"],
        cwd=vhost.organism.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PERMS_PASSWORD_B": vhost.users["b"][1]})


@pytest.mark.amqp
async def test_two_processes_with_their_own_users_answer_a_request(vhost: Vhost) -> None:
    """Process B (``sporeflow run --agents b``, user b) answers agent a, hosted here as
    user a; responses reach a's reply queue through the exchange. B boots b, recording it
    with its user's permissions."""
    process_b = spawn_b(vhost)
    org_a = Organism.from_file(vhost.organism, backend=vhost.url("a"), hosted=["a"])
    try:
        await org_a.start()
        response = await org_a.request("a", {"n": 1}, timeout=30)
        assert response.knowledge == {"n": 2, "via": "b"}
        reply_queue = org_a.stats()["broker"]["reply_queue"]
        assert reply_queue.startswith(vhost.topology.reply_prefix(vhost.users["a"][0]))
    finally:
        await org_a.stop(drain_timeout=5)
        process_b.send_signal(signal.SIGTERM)
        _, err = process_b.communicate(timeout=60)
    stderr = err.decode()
    assert process_b.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("spores are unsigned on the broker at 127.0.0.1:5672") == 1
    async with await aio_pika.connect(vhost.admin) as connection:  # b's boot is recorded
        channel = await connection.channel()
        await channel.get_exchange(vhost.topology.boot_marker("b"), ensure=True)
