"""Signing on the real broker, attacked from another client of it (issue 17).

An attacker on the same RabbitMQ binds a queue to ``#`` and reads the organism's
signed traffic; each test replays, re-targets or moves what it captured, or forges
with a key it holds, and expects a dead letter with the reason, the handler not run.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiostream import pipable_operator, streamcontext

from sporeflow.config import StageSpec, organism_from_dict
from sporeflow.config.signing_keys import SigningSpec
from sporeflow.pipeline import BrokerError, Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.steps.signing import as_keys, signed

from .conformance.harness import AMQP_URL, Harness, wait_for
from .test_broker_untrusted import Calls, publish, recorder

pytestmark = pytest.mark.amqp

KEY_ONE, KEY_TWO = "key-one-" + "1" * 24, "key-two-" + "2" * 24



@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_KEY_ONE", KEY_ONE)
    monkeypatch.setenv("SF_KEY_TWO", KEY_TWO)


def organism_data(calls: Calls, *names: str, **signing: Any) -> dict[str, Any]:
    handler = recorder(calls)
    return {"organism": {"signing": signing or {"key_env": "SF_KEY_ONE"}},
            "agents": {name: {"handler": handler(name)} for name in names}}


class Tap:
    """An attacker's queue bound to ``#`` on the organism's exchange."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, topology: Topology) -> None:
        self.channel, self.topology = channel, topology
        self.queue: aio_pika.abc.AbstractQueue | None = None

    async def __aenter__(self) -> Tap:
        self.queue = await self.channel.declare_queue(exclusive=True)
        await self.queue.bind(self.topology.exchange, routing_key="#")
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.queue is not None
        await self.queue.delete(if_unused=False, if_empty=False)

    async def take(self) -> AbstractIncomingMessage:
        assert self.queue is not None
        deadline = time.monotonic() + 10
        while (message := await self.queue.get(fail=False, no_ack=True)) is None:
            assert time.monotonic() < deadline, "nothing crossed the exchange"
            await asyncio.sleep(0.01)
        return message


def copy_of(message: AbstractIncomingMessage, *, body: bytes | None = None,
            **change: Any) -> aio_pika.Message:
    """The captured message byte for byte, but for ``change`` (say another reply_to) and
    ``body``."""
    fields = {"headers": dict(message.headers), "reply_to": message.reply_to,
              "message_id": message.message_id, "priority": message.priority,
              "content_type": message.content_type, **change}
    return aio_pika.Message(message.body if body is None else body, **fields)


@pytest.fixture
async def channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        yield await connection.channel()


async def settled(harness: Harness, organism: Organism, letters: int) -> list[str]:
    await wait_for(lambda: len(organism.dead_letters) >= letters)
    await harness.quiet(organism)
    return [letter.reason for letter in organism.dead_letters]


def rewritten(token: str, extra: str) -> str:
    """``token`` with ``extra`` appended, or, when it ends in ``:``, put before the time."""
    if not extra.endswith(":"):
        return token + extra
    version, kid, rest = token.split(":", 2)  # sf2:<key id>:<time>:<signature>
    return f"{version}:{kid}:{extra[:-1]}{rest}"


@pytest.mark.parametrize(("junk", "reason"), [
    (("", "", ""), "replayed"),
    # Found by an attacker: the signature's base64 was decoded leniently (characters out
    # of the alphabet skipped) and the replay guard remembers the token's text, so each
    # copy with a character appended verified and was new to it: handled again.
    (("!", "!!", "."), "bad signature"),
    # Found by an attacker: the signing time was read by int(), so a 0 put before it (or
    # its digits in another script) verified and was new to the guard: handled again.
    (("0:", "00:", "\u0661:"), "bad signature"),
], ids=["as captured", "junk appended to the signature", "the time written otherwise"])
async def test_a_captured_spore_replayed_inside_the_window_is_refused(
        harness: Harness, channel: aio_pika.abc.AbstractChannel, junk: tuple[str, ...],
        reason: str) -> None:
    calls: Calls = []
    async with harness.running(organism_data(calls, "vault")) as org:
        topology = Topology.of(org.spec)
        exchange = await channel.get_exchange(topology.exchange)
        async with Tap(channel, topology) as tap:
            await org.send("vault", {"order": "open the vault"})
            captured = await tap.take()
            await wait_for(lambda: len(calls) == 1)
            for extra in junk:  # none: the captured bytes as they were
                body = json.loads(captured.body)
                body["metadata"]["signature"] = rewritten(body["metadata"]["signature"], extra)
                changed = json.dumps(body).encode() if extra else None
                await exchange.publish(copy_of(captured, body=changed),
                                       routing_key=captured.routing_key or "")
            reasons = await settled(harness, org, 3)
    assert reasons == [reason] * 3
    assert [name for name, _ in calls] == ["vault"]
    if reason == "replayed":
        assert "seen before within the 300 s window" in next(iter(org.dead_letters)).error


async def test_a_spore_signed_before_the_window_is_refused(
        harness: Harness, channel: aio_pika.abc.AbstractChannel) -> None:
    calls: Calls = []
    async with harness.running(organism_data(calls, "vault")) as org:
        topology = Topology.of(org.spec)
        assert org.spec.signing is not None
        old = signed(Spore(knowledge={"n": 1}, from_agent="teller", to_agent="vault"),
                     org.spec.signing, now=time.time() - 400)  # captured 400 s ago
        body, headers, properties = spore_to_amqp(old)
        exchange = await channel.get_exchange(topology.exchange)
        await exchange.publish(aio_pika.Message(body, headers=headers, **properties),
                               routing_key=topology.routing_key(old))
        reasons = await settled(harness, org, 1)
    assert reasons == ["replayed"]
    assert "outside the 300 s window" in next(iter(org.dead_letters)).error
    assert calls == []


async def test_a_request_retargeted_to_another_reply_queue_is_refused(
        harness: Harness, channel: aio_pika.abc.AbstractChannel) -> None:
    calls: Calls = []

    async def vault(spore: Spore, ctx: Any) -> dict[str, str]:
        calls.append(("vault", spore))
        return {"secret": "the combination"}

    data = {"organism": {"signing_key_env": "SF_KEY_ONE"}, "agents": {"vault": {
        "handler": vault}}}
    async with harness.running(data) as org:
        topology = Topology.of(org.spec)
        exchange = await channel.get_exchange(topology.exchange)
        mine = await channel.declare_queue(exclusive=True)
        async with Tap(channel, topology) as tap:
            answer = await org.request("vault", {"want": "secret"}, timeout=10)
            captured = await tap.take()
            assert captured.reply_to  # the requester's queue travels in AMQP reply_to
            await exchange.publish(copy_of(captured, reply_to=mine.name),
                                   routing_key=captured.routing_key or "")
            reasons = await settled(harness, org, 1)
        assert await mine.get(fail=False) is None  # no answer reached the attacker
    assert answer.knowledge == {"secret": "the combination"}
    assert reasons == ["bad signature"]
    assert "its reply queue too" in next(iter(org.dead_letters)).error
    assert len(calls) == 1


async def test_a_signed_spore_moved_into_another_agents_queue_is_refused(
        harness: Harness, channel: aio_pika.abc.AbstractChannel) -> None:
    calls: Calls = []
    async with harness.running(organism_data(calls, "public", "vault")) as org:
        topology = Topology.of(org.spec)
        async with Tap(channel, topology) as tap:
            await org.send("public", {"order": "open the vault"})
            captured = await tap.take()
            await wait_for(lambda: len(calls) == 1)
            await channel.default_exchange.publish(copy_of(captured),
                                                   routing_key=topology.queue("vault"))
            reasons = await settled(harness, org, 1)
    assert reasons == ["wrong queue"]
    assert [name for name, _ in calls] == ["public"]


async def test_forged_senders_and_retired_keys_are_refused(
        harness: Harness, channel: aio_pika.abc.AbstractChannel,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    private = ed25519.Ed25519PrivateKey.generate()
    monkeypatch.setenv("A_KEY", base64.b64encode(private.private_bytes_raw()).decode())
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    calls: Calls = []
    data = organism_data(calls, "a", "b", "vault", key_env="SF_KEY_TWO", agents={
        "a": {"public_key": public, "private_key_env": "A_KEY"}})
    async with harness.running(data) as org:
        topology, keys = Topology.of(org.spec), org.spec.signing
        assert keys is not None
        a_key = next(key for key in keys.keys if key.owner == "a")
        shared = next(key for key in keys.keys if key.owner is None)
        forgeries = [
            # a's key (a compromised process of a) signing as b
            signed(Spore(knowledge={}, from_agent="b", to_agent="vault"),
                   as_keys(dataclasses.replace(a_key, owner=None))),
            # the shared key signing as a, which signs with its own key
            signed(Spore(knowledge={}, from_agent="a", to_agent="vault"),
                   SigningSpec((shared,))),
            # the retired key one
            signed(Spore(knowledge={}, from_agent="teller", to_agent="vault"), KEY_ONE),
        ]
        exchange = await channel.get_exchange(topology.exchange)
        for forged in forgeries:
            body, headers, properties = spore_to_amqp(forged)
            await exchange.publish(aio_pika.Message(body, headers=headers, **properties),
                                   routing_key=topology.routing_key(forged))
        reasons = await settled(harness, org, 3)
        errors = sorted(letter.error for letter in org.dead_letters)
    assert reasons == ["bad signature"] * 3
    assert calls == []
    assert any("claims to be from 'b' but is signed with the key of agent 'a'" in e
               for e in errors)
    assert any("which signs with a key of its own, but is signed with the organism's "
               "shared key" in e for e in errors)
    assert any("which this organism does not know" in e for e in errors)


async def test_rotating_the_shared_key_passes_traffic_in_every_phase() -> None:
    """Two processes, one agent each, restarted one at a time through a rotation."""
    exchange = f"sf-rotation-{uuid.uuid4().hex[:10]}"
    calls: Calls = []
    handler = recorder(calls)
    phases = [("SF_KEY_ONE", None), ("SF_KEY_ONE", "SF_KEY_TWO"), ("SF_KEY_TWO", "SF_KEY_ONE"),
              ("SF_KEY_TWO", None)]

    def process(host: str, phase: tuple[str, str | None]) -> Organism:
        signing = {"key_env": phase[0], **({"accept_key_env": phase[1]} if phase[1] else {})}
        spec = organism_from_dict({
            "organism": {"name": "rotation", "broker": {"exchange": exchange},
                         "signing": signing},
            "agents": {"a": {"handler": handler("a")}, "b": {"handler": handler("b")}}})
        return Organism(spec, backend=AmqpBackend(AMQP_URL), hosted=[host])

    sent = 0
    try:
        async with AsyncExitStack() as stack:
            running: dict[str, Organism] = {}
            # The processes step through the phases in turn: a leads, b follows.
            steps = [("a", 0), ("b", 0)] + [(host, i) for i in range(1, 4)
                                            for host in ("a", "b")]
            for host, phase in steps:
                if host in running:
                    await running.pop(host).stop(drain_timeout=5)
                running[host] = await stack.enter_async_context(
                    _started(process(host, phases[phase])))
                if len(running) == 2:
                    await running["a"].send("b", {"n": sent})
                    await running["b"].send("a", {"n": sent + 1})
                    sent += 2
                    await wait_for(lambda n=sent: len(calls) == n)  # type: ignore[misc]
                    assert [letter.reason for org in running.values()
                            for letter in org.dead_letters] == []
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology(exchange=exchange,
                                                     subscriptions={"a": (), "b": ()}))
    assert sorted(spore.knowledge["n"] for _, spore in calls) == list(range(sent))
    assert sent == 14


class _started:
    """Start an organism; stop it on exit unless it was stopped already."""

    def __init__(self, organism: Organism) -> None:
        self.organism = organism

    async def __aenter__(self) -> Organism:
        await self.organism.start()
        return self.organism

    async def __aexit__(self, *_: object) -> None:
        if self.organism.state == "running":
            await self.organism.stop(drain_timeout=5)


async def test_a_process_without_the_key_cannot_join_a_signing_organism(
        harness: Harness) -> None:
    calls: Calls = []
    async with harness.running(organism_data(calls, "vault")) as org:
        exchange = Topology.of(org.spec).exchange
        spec = organism_from_dict({"organism": {"name": "keyless",
                                                "broker": {"exchange": exchange}},
                                   "agents": {"vault": {"handler": recorder(calls)("vault")}}})
        keyless = Organism(spec, backend=AmqpBackend(AMQP_URL))
        with pytest.raises(BrokerError, match=r"sign their spores \(the broker holds the "
                                              r"exchange '.*\.signed'\), but this process has "
                                              r"no signing key"):
            await keyless.start()
        assert keyless.state != "running"


async def test_a_spore_first_seen_as_a_redelivery_is_remembered_against_replays(
        harness: Harness, channel: aio_pika.abc.AbstractChannel) -> None:
    # Found by an attacker: a delivery that came first as a redelivery (its first
    # consumer died holding it) skipped the replay guard, unremembered, so a captured
    # copy published afterwards, inside the window, was handled again.
    calls: Calls = []
    async with harness.running(organism_data(calls, "vault")) as org:
        topology = Topology.of(org.spec)
        queue = await channel.get_queue(topology.queue("vault"))
        got: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop(
        ).create_future()

        async def dying(message: AbstractIncomingMessage) -> None:
            if not got.done():
                got.set_result(message)

        await channel.set_qos(prefetch_count=1)
        tag = await queue.consume(dying, arguments={"x-priority": 10})  # served first
        await org.send("vault", {"order": "open the vault"})
        captured = await asyncio.wait_for(got, 10)
        await queue.cancel(tag)
        await captured.nack(requeue=True)  # given back: redelivered to the organism
        await wait_for(lambda: len(calls) == 1)
        exchange = await channel.get_exchange(topology.exchange)
        await exchange.publish(copy_of(captured), routing_key=captured.routing_key or "")
        reasons = await settled(harness, org, 1)
    assert reasons == ["replayed"]
    assert len(calls) == 1


@pipable_operator
async def _stamp_each(source: AsyncIterable[list[Spore]], *, reject: Any,
                      ) -> AsyncIterator[list[Spore]]:
    """A user's stage before validate that passes on copies (a metadata stamp)."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield [dataclasses.replace(spore, metadata={**spore.metadata, "seen": True})
                   for spore in batch]


async def test_an_unsigned_spore_copied_by_a_stage_before_validate_is_still_refused(
        harness: Harness) -> None:
    # Found in review: what the bridge knows a broker's spore by (its mark) was not on a
    # copy a user's stage before validate passed on, so verify took the copy for one of
    # this organism's own and checked no signature: a forgery was handled.
    calls: Calls = []
    stage = StageSpec(operator=_stamp_each, before="validate")
    async with harness.running(organism_data(calls, "vault"), stages=[stage]) as org:
        forged = Spore(knowledge={"order": "open the vault"}, from_agent="teller",
                       to_agent="vault")
        await publish(Topology.of(org.spec), forged)
        await wait_for(lambda: len(org.dead_letters) > 0 or bool(calls))
        await harness.quiet(org)
        reasons = [letter.reason for letter in org.dead_letters]
    assert calls == []
    assert reasons == ["bad signature"]


@pipable_operator
async def _stamp_each_delivery(source: AsyncIterable[list[Any]], *, reject: Any,
                               ) -> AsyncIterator[list[Any]]:
    """A user's stage after route that passes on copies of the deliveries' spores."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield [(dataclasses.replace(spore, metadata={**spore.metadata, "seen": True}),
                    targets) for spore, targets in batch]


@pytest.mark.parametrize("where", ["before validate", "after route"])
async def test_a_send_a_users_stage_copies_is_handled_once_on_the_broker(
        harness: Harness, where: str) -> None:
    # Found in review: the copy's delivery is not known to the bridge; it is published
    # again as a new spore, consumed, copied, published again, and its deliveries are
    # never acked: the handler never runs and the agent's queue stalls.
    calls: Calls = []
    stage = (StageSpec(operator=_stamp_each, before="validate") if where == "before validate"
             else StageSpec(operator=_stamp_each_delivery, after="route"))
    async with harness.running(organism_data(calls, "vault"), stages=[stage]) as org:
        await org.send("vault", {"order": "count"})
        await wait_for(lambda: bool(calls), 5)
        await harness.quiet(org)
        assert org._bridge is not None
        assert org._bridge.counts["acked"] == 1
    assert [name for name, _ in calls] == ["vault"]
