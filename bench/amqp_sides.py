"""The two sides of each system that ``bench.amqp_compare`` measures on RabbitMQ.

    plain       hand-written aio-pika: the limit for these guarantees
    plain-...   the same loop with one thing of sporeflow's each, to tell what the wire
                form and the topology cost from what sporeflow's code costs:
                -topic     through a topic exchange by sporeflow's routing key; on
                           request/reply the responses too, to a durable reply queue
                           bound by its key (sporeflow's, which outlives an outage)
                -headers   sporeflow's headers and properties (and user_id; one-way)
                -wire      both: what sporeflow publishes, byte for byte
                -batchack  the consumer acks every 8th delivery (one-way)
    sporeflow   an Organism hosting the agent in the consumer process, a client
                Organism (hosting nothing) sending from outside
    faststream  FastStream's RabbitBroker, a subscriber in the consumer process

Every system has the same guarantees: persistent messages to a durable queue with
sporeflow's queue arguments (x-max-priority, x-max-length, ...), publisher confirms,
mandatory publishing, a consumer that acks after its handler ran, prefetch 16 (twice
the agent's concurrency, what sporeflow gives it). Each side runs in a process of
its own (spawned: it starts clean), so the CPU time of each can be read apart.

A consumer counts its deliveries in the process and tells the producer through two
events: ``warm`` once the warm-up is through, ``done`` once the measured run is
(no shared counter to poll: polling would cost the producer CPU it is charged for).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

URL = "amqp://guest:guest@127.0.0.1:5672/"
CONCURRENCY = 8
PREFETCH = CONCURRENCY * 2  # what sporeflow gives an agent of this concurrency
WINDOW = 512  # publishes in flight (unconfirmed) for the plain loop and FastStream
PAYLOAD = {"text": "a short line of text to count", "n": 0}
KEY_ENV = "SPOREFLOW_BENCH_KEY"  # the signing key's variable with --signed
SPAWN = mp.get_context("spawn")
WAIT = 600.0  # seconds a run may take at most


@dataclass
class Signals:
    """What the orchestrator, the producer and the consumer of one run share."""

    ready: Any = field(default_factory=SPAWN.Event)  # the consumer is consuming
    warm: Any = field(default_factory=SPAWN.Event)  # the consumer took the warm-up
    done: Any = field(default_factory=SPAWN.Event)  # ... and the measured messages
    stop: Any = field(default_factory=SPAWN.Event)  # the consumer may go


@dataclass(frozen=True)
class Setup:
    """One run: which system, which workload, and the names it uses on the broker."""

    system: str  # plain | sporeflow | faststream
    mode: str  # oneway | rr
    url: str
    name: str  # the queue (plain, FastStream) or the organism (sporeflow)
    arguments: dict[str, Any]  # the queue's, as sporeflow declares its agents' queues
    warmup: int
    count: int
    signed: bool = False
    profile: str | None = None  # a cProfile output file for this side (bench.amqp_profile)
    path: str | None = None  # sporeflow-base: where its sporeflow package is


class Tally:
    """A consumer's count of deliveries; sets ``warm`` and ``done`` as it passes them."""

    __slots__ = ("n", "warmup", "total", "signals")

    def __init__(self, setup: Setup, signals: Signals) -> None:
        self.n, self.warmup, self.total = 0, setup.warmup, setup.warmup + setup.count
        self.signals = signals

    def __call__(self) -> None:
        self.n += 1
        if self.n == self.warmup:
            self.signals.warm.set()
        if self.n == self.total:
            self.signals.done.set()


async def _wait(event: Any, what: str) -> None:
    """Wait for a process-shared event in a thread (no polling: it costs nothing)."""
    if not await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT):
        raise RuntimeError(f"{what} did not happen within {WAIT}s")


def body(n: int) -> bytes:
    return json.dumps({**PAYLOAD, "n": n}).encode()


async def windowed(publish: Callable[[int], Awaitable[Any]], first: int, count: int,
                   window: int = WINDOW) -> None:
    """Publish ``first .. first+count-1`` with up to ``window`` awaiting their confirm."""
    room = asyncio.Semaphore(window)

    async def one(n: int) -> None:
        try:
            await publish(n)
        finally:
            room.release()

    tasks = []
    for n in range(first, first + count):
        await room.acquire()
        tasks.append(asyncio.ensure_future(one(n)))
    await asyncio.gather(*tasks)


# -- plain aio-pika -----------------------------------------------------------------------


async def plain_consumer(setup: Setup, tally: Tally, signals: Signals) -> None:
    import aio_pika

    connection = await aio_pika.connect(setup.url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        replies = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(setup.name, passive=True)
        echo = setup.mode == "rr"
        exchange = replies.default_exchange
        if echo and setup.system in TOPIC_VARIANTS:
            exchange = await replies.get_exchange(topic_exchange(setup))
        answer = reply_form(setup)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            knowledge = json.loads(message.body)
            if echo and message.reply_to:  # answered (and confirmed) before the ack
                await exchange.publish(answer(knowledge["n"], message.correlation_id),
                                       routing_key=reply_key(setup, message.reply_to),
                                       mandatory=True)
            tally()
            if not batched:
                await message.ack()
            elif tally.n % 8 == 0 or tally.n in (tally.warmup, tally.total):
                await message.ack(multiple=True)  # the handler never awaits: in order

        batched = setup.system == "plain-batchack"
        await queue.consume(on_message)
        signals.ready.set()
        await _wait(signals.stop, "the end of the run")


async def plain_oneway(setup: Setup, signals: Signals, meter: Any) -> dict[str, Any]:
    import aio_pika

    connection = await aio_pika.connect(setup.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange, key = channel.default_exchange, setup.name
        if setup.system in ("plain-topic", "plain-wire"):
            exchange, key = await channel.get_exchange(topic_exchange(setup)), TOPIC_KEY
        wire = wire_form(setup) if setup.system in ("plain-headers", "plain-wire") else None

        def publish(n: int) -> Awaitable[Any]:
            if wire is None:
                message = aio_pika.Message(body(n), priority=5,
                                           delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            else:
                message = wire(n)
            return exchange.publish(message, routing_key=key, mandatory=True)

        return await _metered(publish, setup, signals, meter)


async def _metered(publish: Callable[[int], Awaitable[Any]], setup: Setup,
                   signals: Signals, meter: Any) -> dict[str, Any]:
    """Warm up, then meter the run: publish through the confirm window, wait for the
    consumer's word."""
    await windowed(publish, 0, setup.warmup)
    await _wait(signals.warm, "the warm-up")
    meter.start()
    await windowed(publish, setup.warmup, setup.count)
    await _wait(signals.done, "the run")
    result: dict[str, Any] = meter.stop()
    return result


async def plain_rr(setup: Setup, signals: Signals, meter: Any) -> dict[str, Any]:
    import aio_pika

    connection = await aio_pika.connect(setup.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange, key = channel.default_exchange, setup.name
        if setup.system in TOPIC_VARIANTS:  # sporeflow's reply queue: durable, x-expires
            exchange, key = await channel.get_exchange(topic_exchange(setup)), TOPIC_KEY
            replies = await channel.declare_queue(f"{setup.name}.reply.1", durable=True,
                                                  arguments={"x-expires": 600_000})
            await replies.bind(exchange, routing_key=reply_key(setup, replies.name))
        else:
            replies = await channel.declare_queue("", exclusive=True, auto_delete=True)
        wire = wire_form(setup) if setup.system == "plain-wire" else None
        waiting: dict[str, asyncio.Future[bytes]] = {}
        loop = asyncio.get_running_loop()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None:
                future.set_result(message.body)

        await replies.consume(on_reply, no_ack=True)

        async def request(n: int) -> None:
            asked = f"{setup.name}-{n}"
            answer = waiting[asked] = loop.create_future()
            message = aio_pika.Message(
                body(n), priority=5, delivery_mode=aio_pika.DeliveryMode.PERSISTENT) if (
                wire is None) else wire(n)
            message.correlation_id, message.reply_to = asked, replies.name
            await exchange.publish(message, routing_key=key, mandatory=True)
            if json.loads(await answer)["n"] != n:
                raise RuntimeError(f"request {n} got another's answer")

        try:
            return await _round_trips(request, setup, meter)
        finally:
            if setup.system in TOPIC_VARIANTS:
                await replies.delete(if_unused=False, if_empty=False)


def reply_key(setup: Setup, reply_queue: str) -> str:
    """The key a response goes by: the queue's name, or through the topic exchange the
    key its queue is bound by (as sporeflow's ``Topology.reply_key``)."""
    if setup.system not in TOPIC_VARIANTS:
        return reply_queue
    return f"reply.{reply_queue.rsplit('.', 1)[1]}"


def reply_form(setup: Setup) -> Callable[[int, str | None], Any]:
    """A response: the plain loop's, or with sporeflow's headers and properties."""
    import aio_pika
    from yarl import URL as Address

    if setup.system != "plain-wire":
        return lambda n, asked: aio_pika.Message(
            json.dumps({"n": n}).encode(), correlation_id=asked,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
    from sporeflow.steps import Spore, SporeType

    _, headers, properties = spore_to_amqp(Spore(
        knowledge={"n": 0}, spore_type=SporeType.RESPONSE, from_agent="echo",
        to_agent="system", reply_to="0" * 32))
    user = Address(setup.url).user or "guest"
    return lambda n, asked: aio_pika.Message(
        json.dumps({"n": n}).encode(), headers={**headers, "reply_to": asked},
        correlation_id=asked, user_id=user, **properties)


TOPIC_KEY = "agent.sink.knowledge"  # what sporeflow's direct_key makes of a spore to sink
TOPIC_BINDING = "agent.sink.*"


def topic_exchange(setup: Setup) -> str:
    return f"{setup.name}.x"


def wire_form(setup: Setup) -> Callable[[int], Any]:
    """Messages as sporeflow publishes them (its codec's headers and properties, user_id),
    built from one template: the broker's cost of the wire form without sporeflow's."""
    import aio_pika
    from yarl import URL as Address

    from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
    from sporeflow.steps import Spore

    _, headers, properties = spore_to_amqp(Spore(knowledge=dict(PAYLOAD),
                                                 from_agent="system", to_agent="sink"))
    user = Address(setup.url).user or "guest"
    stem = headers["spore_id"].rsplit("-", 1)[0]  # ids are <process>-<counter>

    def message(n: int) -> Any:
        spore_id = f"{stem}-{n + 1}"
        return aio_pika.Message(body(n), headers={**headers, "spore_id": spore_id},
                                user_id=user, **{**properties, "message_id": spore_id})

    return message


async def _round_trips(request: Callable[[int], Awaitable[None]], setup: Setup,
                       meter: Any) -> dict[str, Any]:
    for n in range(setup.warmup):
        await request(n)
    took = []
    meter.start()
    for n in range(setup.warmup, setup.warmup + setup.count):
        started = time.perf_counter()
        await request(n)
        took.append(time.perf_counter() - started)
    return {**meter.stop(), "took": took}


# -- sporeflow ----------------------------------------------------------------------------


def _spec(setup: Setup, tally: Tally | None) -> Any:
    from sporeflow.config import organism_from_dict

    async def sink(spore: Any, ctx: Any) -> None:
        if tally is not None:
            tally()

    async def echo(spore: Any, ctx: Any) -> dict[str, Any]:
        if tally is not None:
            tally()
        return {"n": spore.knowledge["n"]}

    organism: dict[str, Any] = {"name": setup.name}
    if setup.signed:
        organism["signing_key_env"] = KEY_ENV
    return organism_from_dict({
        "organism": organism,
        "agents": {"sink": {"handler": sink, "concurrency": CONCURRENCY},
                   "echo": {"handler": echo, "concurrency": CONCURRENCY}}})


async def sporeflow_consumer(setup: Setup, tally: Tally, signals: Signals) -> None:
    from sporeflow.pipeline import Organism

    agent = "echo" if setup.mode == "rr" else "sink"
    organism = Organism(_spec(setup, tally), backend=setup.url, hosted=[agent])
    async with organism.running(drain_timeout=5):
        signals.ready.set()
        await _wait(signals.stop, "the end of the run")


async def sporeflow_oneway(setup: Setup, signals: Signals, meter: Any) -> dict[str, Any]:
    from sporeflow.pipeline import Organism

    client = Organism(_spec(setup, None), backend=setup.url, hosted=[])
    await client.start()
    try:
        # send() returns once the spore is admitted (the chain publishes it and waits for
        # its confirm meanwhile): up to limits.max_in_flight (10,000) are unconfirmed at
        # once, so a plain loop of sends is as many in flight as the API allows.
        send = client.send
        for n in range(setup.warmup):
            await send("sink", {**PAYLOAD, "n": n})
        await _wait(signals.warm, "the warm-up")
        meter.start()
        for n in range(setup.warmup, setup.warmup + setup.count):
            await send("sink", {**PAYLOAD, "n": n})
        await _wait(signals.done, "the run")
        result = meter.stop()
        result["bridge"] = _bridge_counts(client)
        return result
    finally:
        await client.stop()


def _bridge_counts(client: Any) -> dict[str, Any]:
    try:
        broker = client.stats().get("broker") or {}
    except Exception:  # noqa: BLE001 - a statistic, not the measurement
        return {}
    return {k: v for k, v in broker.items() if isinstance(v, int)}


async def sporeflow_rr(setup: Setup, signals: Signals, meter: Any) -> dict[str, Any]:
    from sporeflow.pipeline import Organism

    client = Organism(_spec(setup, None), backend=setup.url, hosted=[])
    await client.start()

    async def request(n: int) -> None:
        answer = await client.request("echo", {**PAYLOAD, "n": n}, timeout=30)
        if answer.knowledge["n"] != n:
            raise RuntimeError(f"request {n} got another's answer")

    try:
        return await _round_trips(request, setup, meter)
    finally:
        await client.stop()


# -- FastStream ---------------------------------------------------------------------------


def _faststream_broker(url: str) -> Any:
    from faststream.rabbit import RabbitBroker
    from faststream.rabbit.schemas import Channel

    # logger=None: FastStream logs every message at INFO otherwise, which sporeflow and
    # the plain loop do not; confirms are on (Channel's default), prefetch as the others.
    return RabbitBroker(url, logger=None, default_channel=Channel(
        prefetch_count=PREFETCH, publisher_confirms=True, on_return_raises=True))


async def faststream_consumer(setup: Setup, tally: Tally, signals: Signals) -> None:
    from faststream import AckPolicy
    from faststream.rabbit import RabbitQueue

    broker = _faststream_broker(setup.url)
    queue = RabbitQueue(setup.name, durable=True, arguments=setup.arguments)  # type: ignore[call-overload]

    if setup.mode == "rr":
        @broker.subscriber(queue, ack_policy=AckPolicy.ACK)
        async def echo(knowledge: dict[str, Any]) -> dict[str, Any]:
            tally()
            return {"n": knowledge["n"]}
    else:
        @broker.subscriber(queue, ack_policy=AckPolicy.ACK)
        async def sink(knowledge: dict[str, Any]) -> None:
            tally()

    await broker.start()
    try:
        signals.ready.set()
        await _wait(signals.stop, "the end of the run")
    finally:
        await broker.stop()


async def faststream_oneway(setup: Setup, signals: Signals, meter: Any) -> dict[str, Any]:
    broker = _faststream_broker(setup.url)
    await broker.connect()
    try:
        def publish(n: int) -> Awaitable[Any]:
            return broker.publish({**PAYLOAD, "n": n}, queue=setup.name, persist=True,
                                  priority=5, mandatory=True)

        return await _metered(publish, setup, signals, meter)
    finally:
        await broker.stop()


async def faststream_rr(setup: Setup, signals: Signals, meter: Any) -> dict[str, Any]:
    broker = _faststream_broker(setup.url)
    await broker.connect()

    async def request(n: int) -> None:
        answer = await broker.request({**PAYLOAD, "n": n}, queue=setup.name, persist=True,
                                      priority=5, timeout=30)
        if (await answer.decode())["n"] != n:
            raise RuntimeError(f"request {n} got another's answer")

    try:
        return await _round_trips(request, setup, meter)
    finally:
        await broker.stop()


VARIANTS = ("plain-topic", "plain-headers", "plain-wire", "plain-batchack")
TOPIC_VARIANTS = ("plain-topic", "plain-wire")
CONSUMERS = {"plain": plain_consumer, "sporeflow": sporeflow_consumer,
             "sporeflow-base": sporeflow_consumer,
             "faststream": faststream_consumer, **dict.fromkeys(VARIANTS, plain_consumer)}
PRODUCERS = {**{(variant, "oneway"): plain_oneway for variant in VARIANTS},
             **{(variant, "rr"): plain_rr for variant in TOPIC_VARIANTS},
             ("plain", "oneway"): plain_oneway, ("plain", "rr"): plain_rr,
             ("sporeflow", "oneway"): sporeflow_oneway, ("sporeflow", "rr"): sporeflow_rr,
             ("sporeflow-base", "oneway"): sporeflow_oneway,
             ("sporeflow-base", "rr"): sporeflow_rr,
             ("faststream", "oneway"): faststream_oneway, ("faststream", "rr"): faststream_rr}
