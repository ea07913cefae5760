"""Spores from RabbitMQ are untrusted input and pass the chain's checks (issue 15).

Without signing, anyone who may publish on the broker can put a spore on an agent's
queue. Each test here publishes a crafted spore with a plain aio-pika client, as such
an intruder would, and expects the organism to refuse it as it refuses the same spore
from any other sender: dead-lettered with the chain's reason, the handler never called.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from click.testing import CliRunner
from pamqp import commands, encode

from sporeflow.config import load_organism
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.dead_letter_queue import DeadLetterQueue
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.core.deadletters import LetterChoice

from .conformance.harness import (
    AMQP_URL,
    Harness,
    broker_dead_letters,
    wait_for,
)

pytestmark = pytest.mark.amqp

Calls = list[tuple[str, Spore]]
Handler = Callable[[Spore, Any], Coroutine[Any, Any, None]]



def recorder(calls: Calls) -> Callable[[str], Handler]:
    """Handlers that append ``(agent, spore)`` to ``calls`` and return nothing."""

    def handler(name: str) -> Handler:
        async def handle(spore: Spore, ctx: Any) -> None:
            calls.append((name, spore))
        return handle

    return handler


async def publish(topology: Topology, spore: Spore, *, queue: str | None = None,
                  headers: dict[str, Any] | None = None) -> None:
    """Publish ``spore`` in its wire form as a plain client would: on the organism's
    exchange by the spore's own routing key, or, given ``queue``, straight into that
    queue through the default exchange. ``headers`` override the encoded ones."""
    body, wire_headers, properties = spore_to_amqp(spore)
    message = aio_pika.Message(body, headers={**wire_headers, **(headers or {})},
                               **properties)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        if queue is None:
            exchange = await channel.get_exchange(topology.exchange)
            await exchange.publish(message, routing_key=topology.routing_key(spore))
        else:
            await channel.default_exchange.publish(message, routing_key=queue)


async def outcome(harness: Harness, organism: Organism, calls: Calls
                  ) -> tuple[list[str], list[str]]:
    """Wait until the organism refused the spore or a handler took it, and all settled;
    return (the reasons dead-lettered, the agents whose handler ran)."""
    await wait_for(lambda: len(organism.dead_letters) > 0 or bool(calls))
    await harness.quiet(organism)
    return [letter.reason for letter in organism.dead_letters], [name for name, _ in calls]


async def inject(harness: Harness, agents: dict[str, dict[str, Any]], spore: Spore, *,
                 channels: dict[str, Any] | None = None,
                 into: str | None = None) -> tuple[list[str], list[str]]:
    """Run an organism whose agents (name -> their settings) record what they handle,
    publish ``spore`` as a plain client would (straight into agent ``into``'s queue when
    given); return (the reasons dead-lettered, the agents whose handler ran)."""
    calls: Calls = []
    handler = recorder(calls)
    data: dict[str, Any] = {"channels": channels or {}, "agents": {
        name: {"handler": handler(name), **settings} for name, settings in agents.items()}}
    async with harness.running(data) as org:
        topology = Topology.of(org.spec)
        await publish(topology, spore, queue=topology.queue(into) if into else None)
        return await outcome(harness, org, calls)


async def test_spore_posing_as_a_peer_restricted_agent_is_dead_lettered_as_not_a_peer(
        harness: Harness) -> None:
    agents = {"editor": {"peers": ["reporter"]}, "reporter": {}, "vault": {}}
    spore = Spore(knowledge={"open": "sesame"}, from_agent="editor", to_agent="vault")
    assert await inject(harness, agents, spore) == (["not a peer"], [])


async def test_spore_breaking_the_recipients_schema_is_dead_lettered_as_schema(
        harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "orders.json").write_text(json.dumps({
        "type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer"}}}))
    monkeypatch.chdir(tmp_path)  # the organism's base_dir: schema paths are relative to it
    spore = Spore(knowledge={"qty": "x"}, to_agent="orders")
    assert await inject(harness, {"orders": {"schema": "orders.json"}}, spore) == (
        ["schema"], [])


async def test_broadcast_from_a_sender_off_the_channels_publish_list_is_dead_lettered(
        harness: Harness) -> None:
    agents = {"editor": {}, "reporter": {}, "reader": {"subscribe": ["news"]}}
    spore = Spore(knowledge={"headline": "fake"}, from_agent="reporter", channel="news",
                  spore_type=SporeType.BROADCAST)
    assert await inject(harness, agents, spore,
                        channels={"news": {"publish": ["editor"]}}) == (["not a peer"], [])


async def test_a_broadcast_addressed_to_an_agent_off_its_channel_is_dead_lettered(
        harness: Harness) -> None:
    """A broadcast's delivery (one replayed) goes only to a subscriber of its channel."""
    agents = {"boss": {}, "director": {"subscribe": ["board"]}, "intern": {}}
    spore = Spore(knowledge={"memo": "salaries"}, from_agent="boss", channel="board",
                  spore_type=SporeType.BROADCAST, to_agent="intern")
    assert await inject(harness, agents, spore,
                        channels={"board": {"publish": ["boss"]}}) == (["not a peer"], [])


async def test_response_to_no_pending_request_is_dead_lettered_as_unexpected(
        harness: Harness) -> None:
    spore = Spore(knowledge={"answer": 42}, spore_type=SporeType.RESPONSE, from_agent="helper",
                  to_agent="asker", reply_to=uuid.uuid4().hex)
    assert await inject(harness, {"asker": {}, "helper": {}}, spore) == (
        ["unexpected response"], [])


async def test_spore_for_one_agent_put_into_anothers_queue_is_dead_lettered(
        harness: Harness) -> None:
    spore = Spore(knowledge={"take": "all"}, to_agent="vault")
    assert await inject(harness, {"vault": {}, "clerk": {}}, spore, into="clerk") == (
        ["wrong queue"], [])


async def test_broadcast_on_an_unsubscribed_channel_put_into_a_queue_is_dead_lettered(
        harness: Harness) -> None:
    agents = {"reader": {"subscribe": ["news"]}, "clerk": {"subscribe": ["chores"]}}
    spore = Spore(knowledge={"headline": "psst"}, channel="news",
                  spore_type=SporeType.BROADCAST)
    assert await inject(harness, agents, spore, channels={"news": {}, "chores": {}},
                        into="clerk") == (["wrong queue"], [])


@pytest.mark.parametrize(("headers", "reason"), [
    ({"priority": "high"}, "invalid"),
    ({"created_at": "yesterday"}, "invalid"),
    ({"to_agent": 5}, "invalid"),
    ({"hops": "999"}, "limit exceeded"),
], ids=["priority-text", "created_at-no-timestamp", "to_agent-number", "hops-over-limit"])
async def test_spore_with_a_wrongly_typed_field_is_dead_lettered_and_the_rest_flow(
        harness: Harness, headers: dict[str, Any], reason: str) -> None:
    calls: Calls = []
    async with harness.running({"agents": {"sink": {"handler": recorder(calls)("sink")}}}
                               ) as org:
        topology = Topology.of(org.spec)
        await publish(topology, Spore(knowledge={"n": 1}, to_agent="sink"), headers=headers)
        await publish(topology, Spore(knowledge={"n": 2}, to_agent="sink"))
        await wait_for(lambda: bool(calls))
        await harness.quiet(org)
        organism_reasons = [letter.reason for letter in org.dead_letters]
    # A message that decodes to no spore cannot be a DeadLetter (it holds a spore): then
    # the broker's dead-letter queue is the record of the refusal.
    refused = set(organism_reasons) | {str(headers.get("x-sporeflow-reason")) for headers, _
                                       in await broker_dead_letters(topology)}
    assert (refused, [spore.knowledge for _, spore in calls]) == ({reason}, [{"n": 2}])


async def test_a_priority_out_of_range_is_refused_as_a_limit_here_as_from_any_sender(
        harness: Harness) -> None:
    """The priority range is one rule, the validate stage's: a message whose priority
    header is out of range is the organism's ``limit exceeded`` dead letter (its
    dead_letters, its stats), as the same spore submitted in the process is, not a
    message refused as no spore and seen only on the broker."""
    calls: Calls = []
    async with harness.running({"agents": {"sink": {"handler": recorder(calls)("sink")}}}
                               ) as org:
        topology = Topology.of(org.spec)
        await publish(topology, Spore(knowledge={"n": 1}, to_agent="sink"),
                      headers={"priority": "11"})
        await publish(topology, Spore(knowledge={"n": 2}, to_agent="sink"))
        await wait_for(lambda: bool(calls) and len(org.dead_letters) > 0)
        await harness.quiet(org)
        [letter] = org.dead_letters
        refused = org.stats()["dead_letters"]["by_reason"]
    assert (letter.reason, letter.spore.knowledge, letter.spore.priority) == (
        "limit exceeded", {"n": 1}, 11)
    assert "priority 11 is out of range" in letter.error
    assert refused == {"limit exceeded": 1}
    assert [spore.knowledge for _, spore in calls] == [{"n": 2}]


async def test_well_formed_spore_from_a_plain_client_to_a_peer_is_handled(
        harness: Harness) -> None:
    calls: Calls = []
    handler = recorder(calls)
    data = {"agents": {"editor": {"handler": handler("editor"), "peers": ["reporter"]},
                       "reporter": {"handler": handler("reporter")},
                       "vault": {"handler": handler("vault")}}}
    async with harness.running(data) as org:
        await publish(Topology.of(org.spec), Spore(knowledge={"story": 1},
                                                   from_agent="editor", to_agent="reporter"))
        reasons, handled = await outcome(harness, org, calls)
    assert (reasons, handled) == ([], ["reporter"])
    assert calls[0][1].knowledge == {"story": 1}


# -- headers the AMQP library reads but cannot write back: found by a fault injector -------

class _Raw(bytes):
    """A header value written as it is (type tag and payload): what pamqp never writes."""


def _written_as_is(original: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        return bytes(value) if isinstance(value, _Raw) else original(value)
    return encode


@pytest.mark.parametrize("odd", [
    _Raw(b"S" + (2).to_bytes(4, "big") + b"\xff\xfe"),  # a long string that is no UTF-8
    _Raw(b"d" + __import__("struct").pack(">d", 1e300)),  # a double past a float's range
], ids=["text-not-utf8", "double-past-float"])
async def test_a_refused_message_whose_headers_cannot_be_written_back_is_dead_lettered(
        harness: Harness, odd: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """pamqp decodes these two header values as bytes and as a float, and cannot encode
    them again: dead-lettering the refused message with its headers raised, the delivery
    was never acked, and two such messages stalled the agent for good."""
    from pamqp import encode

    monkeypatch.setattr(encode, "encode_table_value",
                        _written_as_is(encode.encode_table_value))
    calls: Calls = []
    async with harness.running({"agents": {"sink": {"handler": recorder(calls)("sink")}}}
                               ) as org:
        topology = Topology.of(org.spec)
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for n in range(2):  # as many as the prefetch... and more
                await channel.default_exchange.publish(
                    aio_pika.Message(b"not json", headers={"spore_id": f"odd-{n}",
                                                           "note": odd}),
                    routing_key=topology.queue("sink"))
        for n in range(5):
            await publish(topology, Spore(knowledge={"n": n}, to_agent="sink"))
        await wait_for(lambda: len(calls) == 5)
        await harness.quiet(org)
    letters = await broker_dead_letters(topology)
    assert sorted(str(headers.get("x-sporeflow-headers-dropped")) for headers, _
                  in letters) == ["2", "2"]
    assert {str(headers.get("x-sporeflow-reason")) for headers, _ in letters} == {"invalid"}


async def test_a_forged_requests_reply_queue_never_gets_the_response(
        harness: Harness) -> None:
    """Found by a fault injector: a request naming any queue as its AMQP reply_to had its
    response published there by the default exchange, which reaches any queue by name."""
    calls: Calls = []

    async def oracle(spore: Spore, ctx: Any) -> dict[str, Any]:
        calls.append(("oracle", spore))
        return {"secret": "answer from oracle"}

    victim = f"victim-{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(victim, auto_delete=False)
        try:
            async with harness.running({"agents": {"oracle": {"handler": oracle}}}) as org:
                topology = Topology.of(org.spec)
                request = Spore(knowledge={"q": 1}, from_agent="mallory", to_agent="oracle",
                                spore_type=SporeType.REQUEST)
                body, headers, properties = spore_to_amqp(request)
                exchange = await channel.get_exchange(topology.exchange)
                await exchange.publish(
                    aio_pika.Message(body, headers=headers, reply_to=victim, **properties),
                    routing_key=topology.routing_key(request))
                await wait_for(lambda: bool(calls))
                await harness.quiet(org)
            queue = await channel.declare_queue(victim, passive=True)
            assert queue.declaration_result.message_count == 0
        finally:
            await channel.queue_delete(victim)


@pytest.mark.parametrize("where", ["header", "property"])
async def test_a_timestamp_past_the_year_9999_never_closes_the_connection(
        harness: Harness, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a fault injector: pamqp reads an AMQP timestamp (64 bits of seconds, which
    RabbitMQ passes on unchecked: a millisecond epoch is one) with
    datetime.fromtimestamp, which raises past the year 9999. The frame could not be
    read, the connection closed, the message came back at the reconnection and closed it
    again, for ever: the agent consumed nothing more. As a property, on a message that
    is no spore, it is dead-lettered too (aio-pika cannot write such a timestamp)."""
    far = (2**63).to_bytes(8, "big")
    monkeypatch.setattr(encode, "encode_table_value",
                        _written_as_is(encode.encode_table_value))
    original = encode.METHODS["timestamp"]
    monkeypatch.setitem(encode.METHODS, "timestamp",
                        lambda value: far if value == "far" else original(value))
    calls: Calls = []
    async with harness.running({"agents": {"sink": {"handler": recorder(calls)("sink")}}}
                               ) as org:
        topology = Topology.of(org.spec)
        body, headers, _ = spore_to_amqp(Spore(knowledge={"n": -1}, to_agent="sink"))
        if where == "header":  # on a spore: handled
            properties = commands.Basic.Properties(headers={**headers,
                                                            "sent_at": _Raw(b"T" + far)})
        else:  # on a message that is no spore: dead-lettered
            body, properties = b"not json", commands.Basic.Properties(timestamp="far")
        connection = await aiormq.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.basic_publish(body, routing_key=topology.queue("sink"),
                                        properties=properties)
        finally:
            await connection.close()
        for n in range(3):
            await publish(topology, Spore(knowledge={"n": n}, to_agent="sink"))
        await wait_for(lambda: len(calls) == (4 if where == "header" else 3))
        await harness.quiet(org)
    handled = sorted(spore.knowledge["n"] for _, spore in calls)
    assert handled == ([-1, 0, 1, 2] if where == "header" else [0, 1, 2])
    letters = await broker_dead_letters(topology)
    assert [str(h.get("x-sporeflow-reason")) for h, _ in letters] == (
        [] if where == "header" else ["invalid"])


def worker_organism(folder: Path, prefix: str, module: str) -> tuple[Path, Topology]:
    """An organism file in ``folder`` on the shared broker, named ``prefix-<random>``,
    with one agent, worker, whose handler (``module``, beside it) does nothing."""
    (folder / f"{module}.py").write_text("def work(spore, ctx):\n    return None\n")
    path = folder / "organism.yaml"
    path.write_text(f"organism: {{name: {prefix}-{uuid.uuid4().hex[:8]}, "
                    f"backend: '{AMQP_URL}'}}\nagents:\n  worker: {{handler: {module}:work}}\n")
    return path, Topology.of(load_organism(path))


async def test_a_dead_letter_with_a_far_timestamp_can_be_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: a timestamp past the year 9999 read as an int (77da0be) made
    aio-pika's IncomingMessage raise, so `dlq list` failed on the broker's dead-letter
    queue while such a letter was in it (RabbitMQ's own dead-lettering keeps the
    original timestamp)."""
    far = (2**63).to_bytes(8, "big")
    path, topology = worker_organism(tmp_path, "review-ts", "rvts_handlers")
    try:
        org = Organism.from_file(path)
        async with org.running(drain_timeout=5):
            pass  # declares the exchange, the queues and the dead-letter queue
        original = encode.METHODS["timestamp"]
        monkeypatch.setitem(encode.METHODS, "timestamp",
                            lambda value: far if value == "far" else original(value))
        connection = await aiormq.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.basic_publish(
                b"not json", exchange=topology.dead_letter_exchange, routing_key="",
                properties=commands.Basic.Properties(timestamp="far",
                                                     headers={"x-sporeflow-reason": "invalid"}))
        finally:
            await connection.close()
        monkeypatch.setitem(encode.METHODS, "timestamp", original)

        # What a user sees: `sporeflow dlq list` on the organism.
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["dlq", "list", str(path)])
        assert result.exit_code == 0, (result.output, repr(result.exception))

        async with DeadLetterQueue(AMQP_URL, topology) as reader:
            letters = await reader.read(LetterChoice())
        assert len(letters) == 1
    finally:
        await AmqpBackend(AMQP_URL).destroy(topology)


# -- properties pamqp cannot read at all: found by a tester ---------------------------------

class _RawText(str):
    """Text written on the wire as these bytes (pamqp encodes only valid UTF-8)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> _RawText:
        made = super().__new__(cls, "raw")
        made.raw = raw
        return made

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return self.raw


def _nested_tables(depth: int) -> _Raw:
    value = b"V"
    for _ in range(depth):
        content = b"\x01a" + value
        value = b"F" + len(content).to_bytes(4, "big") + content
    return _Raw(value)


_UNREADABLE: dict[str, Callable[[dict[str, Any]], commands.Basic.Properties]] = {
    "header-key-not-utf8": lambda h: commands.Basic.Properties(
        headers={**h, _RawText(b"\xff\xfe"): "x"}),
    "content-type-not-utf8": lambda h: commands.Basic.Properties(
        headers=h, content_type=_RawText(b"\xff\xfe")),
    "message-id-not-utf8": lambda h: commands.Basic.Properties(
        headers=h, message_id=_RawText(b"\xc3")),
    "tables-nested-500-deep": lambda h: commands.Basic.Properties(
        headers={**h, "deep": _nested_tables(500)}),
}


async def _publish_raw(monkeypatch: pytest.MonkeyPatch, body: bytes,
                       properties: commands.Basic.Properties, *, exchange: str = "",
                       routing_key: str) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(encode, "encode_table_value",
                        _written_as_is(encode.encode_table_value))
        connection = await aiormq.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                        properties=properties)
        finally:
            await connection.close()


@pytest.mark.parametrize("poison", list(_UNREADABLE))
async def test_a_message_whose_properties_pamqp_cannot_read_is_dead_lettered_and_the_rest_flow(
        harness: Harness, poison: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a tester: a header key or a short-string property that is no UTF-8, or
    tables nested past Python's recursion limit (RabbitMQ passes all of them on), made
    pamqp's reader raise: the connection closed, the unacked message came back at each
    reconnection and closed it again, and the process consumed nothing until it gave
    up. Such a message is read as one whose properties could not be read."""
    calls: Calls = []
    async with harness.running({"agents": {"sink": {"handler": recorder(calls)("sink")}}}
                               ) as org:
        topology = Topology.of(org.spec)
        _, headers, _ = spore_to_amqp(Spore(knowledge={"n": -1}, to_agent="sink"))
        await _publish_raw(monkeypatch, b'{"n": -1}', _UNREADABLE[poison](headers),
                           routing_key=topology.queue("sink"))
        for n in range(3):
            await publish(topology, Spore(knowledge={"n": n}, to_agent="sink"))
        await wait_for(lambda: len(calls) == 3)
        await harness.quiet(org)
        assert org.stats()["broker"]["connection"]["state"] == "connected"
    assert sorted(spore.knowledge["n"] for _, spore in calls) == [0, 1, 2]
    letters = await broker_dead_letters(topology)
    assert [(str(h.get("x-sporeflow-reason")), "could not be read" in str(
        h.get("x-sporeflow-error"))) for h, _ in letters] == [("invalid", True)]


async def test_dlq_list_survives_a_letter_whose_properties_pamqp_cannot_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a tester: such a message in the dead-letter queue (anyone who may
    dead-letter may publish it) made `dlq list`, `show` and `purge` fail: no letter could
    be listed or purged with sporeflow."""
    path, topology = worker_organism(tmp_path, "unreadable", "unread_handlers")
    try:
        async with Organism.from_file(path).running(drain_timeout=5):
            pass  # declares the exchange, the queues and the dead-letter queue
        for headers in ({"x-sporeflow-reason": "invalid"},
                        {"x-sporeflow-reason": "invalid", _RawText(b"\xff"): "x"}):
            await _publish_raw(monkeypatch, b"not json",
                               commands.Basic.Properties(headers=headers),
                               exchange=topology.dead_letter_exchange, routing_key="")
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["dlq", "list", str(path)])
        assert result.exit_code == 0, (result.output, repr(result.exception))
        assert "could not be read" in result.output
        purged = await asyncio.to_thread(CliRunner().invoke, cli,
                                         ["dlq", "purge", str(path), "--all"])
        assert purged.exit_code == 0, (purged.output, repr(purged.exception))
        async with DeadLetterQueue(AMQP_URL, topology) as reader:
            assert await reader.read(LetterChoice()) == []
    finally:
        await AmqpBackend(AMQP_URL).destroy(topology)
