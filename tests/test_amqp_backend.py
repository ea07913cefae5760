"""The RabbitMQ backend on the real broker: dead letters, signatures, bad messages, errors."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aio_pika
import pytest

from sporeflow.config import ConfigError, organism_from_dict
from sporeflow.pipeline import BrokerError, Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import (
    AMQP_URL,
    BACKSTOP,
    Harness,
    broker_dead_letters,
    wait_for,
)

pytestmark = pytest.mark.amqp



async def inject(topology: Topology, agent: str, body: bytes, headers: dict[str, Any]) -> None:
    """Publish straight into an agent's queue, as an intruder without the key would."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(body, headers=headers),
                                               routing_key=topology.queue(agent))


async def test_the_last_failure_is_dead_lettered_on_the_broker_with_why(
        harness: Harness) -> None:
    async def broken(spore: Spore, ctx: Any) -> None:
        raise KeyError("missing")

    async with harness.running({"agents": {"broken": {"handler": broken,
                                                      "retry": {"attempts": 2,
                                                                "backoff": "1ms"}}}}) as org:
        await org.send("broken", {"n": 1})
        await harness.quiet(org)
        topology = Topology.of(org.spec)
    [(headers, body)] = await broker_dead_letters(topology)
    assert json.loads(body) == {"n": 1}
    assert (headers["x-sporeflow-reason"], headers["x-sporeflow-agent"],
            headers["x-sporeflow-attempts"]) == ("handler failed", "broken", 2)
    assert "KeyError" in headers["x-sporeflow-error"]


async def test_a_spore_injected_without_the_key_is_dead_lettered_as_bad_signature(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFORMANCE_KEY", "k" * 32)
    handled: list[Any] = []

    async def double(spore: Spore, ctx: Any) -> dict[str, Any]:
        handled.append(spore.knowledge)
        return {"n": spore.knowledge["n"] * 2}

    data = {"organism": {"signing_key_env": "CONFORMANCE_KEY"},
            "agents": {"double": {"handler": double}}}
    async with harness.running(data) as org:
        answer = await org.request("double", {"n": 4}, timeout=10)  # signed: accepted
        topology = Topology.of(org.spec)
        body, headers, _ = spore_to_amqp(Spore(knowledge={"n": 99}, to_agent="double"))
        await inject(topology, "double", body, headers)
        await wait_for(lambda: len(org.dead_letters) == 1)
    assert answer.knowledge == {"n": 8}
    assert handled == [{"n": 4}]
    assert [d.reason for d in org.dead_letters] == ["bad signature"]
    [(letter, _)] = await broker_dead_letters(topology)
    assert letter["x-sporeflow-reason"] == "bad signature"


async def test_a_message_that_is_no_spore_is_dead_lettered_and_the_rest_flow(
        harness: Harness) -> None:
    seen: list[int] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    async with harness.running({"agents": {"sink": {"handler": sink}}}) as org:
        topology = Topology.of(org.spec)
        await inject(topology, "sink", b"not json", {"spore_id": "x"})
        await org.send("sink", {"n": 1})
        await wait_for(lambda: seen == [1] and org.stats()["broker"]["refused"] == 1)
        await harness.quiet(org)
    [(letter, body)] = await broker_dead_letters(topology)
    assert (letter["x-sporeflow-reason"], body) == ("invalid", b"not json")
    assert "not JSON" in letter["x-sporeflow-error"]


async def test_a_consumer_the_broker_cancelled_consumes_again_once_its_queue_is_back(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sporeflow.broker.amqp")
    seen: list[int] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    async with harness.running({"agents": {"sink": {"handler": sink}}}) as org:
        topology = Topology.of(org.spec)
        await org.send("sink", {"n": 1})
        await wait_for(lambda: seen == [1])
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(topology.queue("sink"))  # the broker cancels it
            # While the queue is missing, an attempt to consume it again fails.
            await wait_for(lambda: "consuming" in caplog.text and "failed" in caplog.text)
            queue = await channel.declare_queue(topology.queue("sink"), durable=True,
                                                arguments=topology.queue_arguments("sink"))
            await queue.bind(topology.exchange, routing_key=topology.bindings("sink")[0])
        await org.send("sink", {"n": 2})
        await wait_for(lambda: seen == [1, 2])
    assert "the broker cancelled the consumer" in caplog.text


async def test_an_unreachable_broker_raises_broker_error_without_the_password() -> None:
    backend = AmqpBackend("amqp://app:hunter2@127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(BrokerError, match=r"cannot reach RabbitMQ at "
                                          r"amqp://app:\*\*\*@127.0.0.1:1/") as caught:
        await backend.open(Topology(exchange="x", subscriptions={}))
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", [AMQP_URL.replace("guest:guest", "guest:wrong-pw1"),
                                 AMQP_URL.rstrip("/") + "/no-such-vhost-x1"],
                         ids=["password", "virtual host"])
async def test_a_process_the_broker_refuses_gives_up_at_once_naming_what_to_check(
        url: str) -> None:
    # With the first connection retried as after a loss (3ec1461), a wrong password
    # was tried again for give_up_after (5 min) before the process exited.
    spec = organism_from_dict({"agents": {"a": {"handler": print}}})  # give_up_after: 5 min
    organism = Organism(spec, backend=url)
    with pytest.raises(BrokerError, match=r"refused this process \(.*\): trying again "
                                          r"cannot help; check the user, password and "
                                          r"virtual host") as caught:
        await asyncio.wait_for(organism.start(), BACKSTOP)
    assert "wrong-pw1" not in str(caught.value)
    assert organism.state == "stopped"


async def test_an_organism_giving_up_at_once_on_an_unreachable_broker_stops_cleanly() -> None:
    # give_up_after 0: the first failed attempt ends it (the default waits, as after a loss:
    # tests/test_broker_outage.py starts a process before its broker).
    spec = organism_from_dict({"organism": {"broker": {"give_up_after": 0}},
                               "agents": {"a": {"handler": print}}})
    organism = Organism(spec, backend="amqp://guest:guest@127.0.0.1:1/")
    with pytest.raises(BrokerError, match="cannot reach RabbitMQ"):
        await asyncio.wait_for(organism.start(), 30)
    assert organism.state == "stopped"


@pytest.mark.parametrize(("hosted", "message"), [
    ("worker", "hosted names the agents this process runs: a list, got the text 'worker'; "
               "write hosted=['worker']"),
    (["wroker"], "--agents names ['wroker'], which organism 'h' does not have; its agents "
                 "are ['worker'] (did you mean 'worker'?)"),
])
async def test_the_agents_a_process_hosts_are_checked_with_what_to_write(
        hosted: Any, message: str) -> None:
    # Found by a new user: hosted="worker" was taken letter by letter ('--agents names
    # ['e', 'k', 'o', 'r', 'w']'), and a misspelt name had no suggestion.
    spec = organism_from_dict({"organism": {"name": "h"}, "agents": {"worker": {"handler": print}}})
    organism = Organism(spec, backend=AMQP_URL, hosted=hosted)
    with pytest.raises(ConfigError) as caught:
        await organism.start()  # checked before anything connects
    assert caught.value.problems[0].message == message
    assert caught.value.problems[0].path == "--agents (hosted)"  # was organism.backend
    assert organism.state == "new"  # nothing started


async def test_a_local_letter_is_not_waited_for_while_the_broker_is_away(
        harness: Harness) -> None:
    # The reviewer's remark on 628b7d2: a letter made here went to aio-pika's robust
    # channel, which waits for the broker to return, and a stop waits for what the bridge
    # puts out: a stop during an outage could wait for the broker (or give_up_after).
    async with harness.running({"agents": {"a": {"handler": print}}}) as org:
        topology = Topology.of(org.spec)
    backend = AmqpBackend(AMQP_URL)
    async with backend:
        await backend.open(topology)
        letter = Spore(knowledge={"n": 1}, to_agent="nobody")
        backend.link.lost(ConnectionError("the test's outage"))
        with pytest.raises(BrokerError, match="is not connected"):
            await asyncio.wait_for(backend.dead_letter_spore(
                letter, reason="unknown agent", error="no agent 'nobody'"), BACKSTOP)
        backend.link.connected()
        await backend.dead_letter_spore(letter, reason="unknown agent", error="no 'nobody'")
    [(headers, body)] = await broker_dead_letters(topology)
    assert (json.loads(body), headers["x-sporeflow-reason"]) == ({"n": 1}, "unknown agent")
