"""The amqp backend against a plain aio-pika loop, on the same broker, in the same run.

    python -m bench.amqp_bench [--spores 20000] [--requests 2000] [--url amqp://...]
                               [--json-out FILE]

Measured, for sporeflow (an organism whose agents run in consumer processes) and for
hand-written aio-pika (publisher confirms, persistent messages, x-max-priority
queues, manual acks with the same prefetch: the same guarantees):

- point-to-point throughput: N spores published from this process to a sink agent
  hosted by 1, then by 2 consumer processes (competing consumers), timed from the
  first publish to the last ack;
- request/reply round trip: sequential requests from this process to an agent in a
  consumer process, through a reply queue; p50 and p99 latency.

Consumers count into shared memory; this process waits on that count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import aio_pika

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore, Topology
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend

URL = "amqp://guest:guest@127.0.0.1:5672/"
CONCURRENCY = 8
PREFETCH = CONCURRENCY * 2  # what sporeflow gives an agent of this concurrency
PAYLOAD = {"text": "a short line of text to count", "n": 0}

Counter = Synchronized  # a multiprocessing.Value('q')
SPAWN = mp.get_context("spawn")  # consumers start clean, not as forks of this loop


# -- sporeflow ------------------------------------------------------------------------


def _spec(name: str, count: Counter | None) -> Any:
    async def sink(spore: Spore, ctx: Any) -> None:
        if count is not None:
            with count.get_lock():
                count.value += 1

    async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"]}

    return organism_from_dict({
        "organism": {"name": name},
        "agents": {"sink": {"handler": sink, "concurrency": CONCURRENCY},
                   "echo": {"handler": echo, "concurrency": CONCURRENCY}}})


def _sporeflow_consumer(name: str, url: str, agents: list[str], count: Counter,
                        ready: Any, stop: Any) -> None:
    async def main() -> None:
        organism = Organism(_spec(name, count), backend=url, hosted=agents)
        async with organism.running(drain_timeout=5):
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(main())


async def sporeflow_throughput(url: str, spores: int, consumers: int) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    client = Organism(_spec(name, None), backend=url, hosted=[])
    count: Counter = SPAWN.Value("q", 0)
    async with _processes(_sporeflow_consumer, consumers, name, url, ["sink"], count) as _:
        await client.start()
        started = time.perf_counter()
        for n in range(spores):
            await client.send("sink", {**PAYLOAD, "n": n})
        await _until(lambda: count.value >= spores)
        elapsed = time.perf_counter() - started
        await client.stop()
    await AmqpBackend(url).destroy(Topology.of(client.spec))
    return spores / elapsed


async def sporeflow_round_trips(url: str, requests: int) -> list[float]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    client = Organism(_spec(name, None), backend=url, hosted=[])
    count: Counter = SPAWN.Value("q", 0)
    took: list[float] = []
    async with _processes(_sporeflow_consumer, 1, name, url, ["echo"], count) as _:
        await client.start()
        for n in range(requests):
            started = time.perf_counter()
            await client.request("echo", {**PAYLOAD, "n": n}, timeout=30)
            took.append(time.perf_counter() - started)
        await client.stop()
    await AmqpBackend(url).destroy(Topology.of(client.spec))
    return took


# -- plain aio-pika -----------------------------------------------------------------------


def _plain_consumer(queue_name: str, url: str, mode: str, count: Counter, ready: Any,
                    stop: Any) -> None:
    async def main() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(queue_name, passive=True)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                json.loads(message.body)
                if mode == "echo" and message.reply_to:
                    await channel.default_exchange.publish(
                        aio_pika.Message(message.body, correlation_id=message.correlation_id),
                        routing_key=message.reply_to)
                await message.ack()
                with count.get_lock():
                    count.value += 1

            await queue.consume(on_message)
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(main())


async def _plain_queue(url: str) -> tuple[aio_pika.abc.AbstractConnection, str]:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    name = f"bench-plain-{uuid.uuid4().hex[:8]}"
    await channel.declare_queue(name, durable=True, arguments={"x-max-priority": 10})
    return connection, name


async def plain_throughput(url: str, spores: int, consumers: int) -> float:
    connection, name = await _plain_queue(url)
    count: Counter = SPAWN.Value("q", 0)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        async with _processes(_plain_consumer, consumers, name, url, "sink", count):
            started = time.perf_counter()
            batch = 512  # as many in flight as sporeflow's intake hands the chain at once
            for first in range(0, spores, batch):
                await asyncio.gather(*(channel.default_exchange.publish(
                    aio_pika.Message(json.dumps({**PAYLOAD, "n": n}).encode(), priority=5,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=name) for n in range(first, min(first + batch, spores))))
            await _until(lambda: count.value >= spores)
            elapsed = time.perf_counter() - started
        await channel.queue_delete(name)
    return spores / elapsed


async def plain_round_trips(url: str, requests: int) -> list[float]:
    connection, name = await _plain_queue(url)
    count: Counter = SPAWN.Value("q", 0)
    took: list[float] = []
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        async with _processes(_plain_consumer, 1, name, url, "echo", count):
            replies = await channel.declare_queue("", exclusive=True, auto_delete=True)
            waiting: dict[str, asyncio.Future[bytes]] = {}

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                future = waiting.pop(message.correlation_id or "", None)
                if future is not None:
                    future.set_result(message.body)

            await replies.consume(on_reply, no_ack=True)
            loop = asyncio.get_running_loop()
            for n in range(requests):
                started = time.perf_counter()
                key = uuid.uuid4().hex
                answer = waiting[key] = loop.create_future()
                await channel.default_exchange.publish(aio_pika.Message(
                    json.dumps({**PAYLOAD, "n": n}).encode(), correlation_id=key,
                    reply_to=replies.name, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=name)
                json.loads(await answer)
                took.append(time.perf_counter() - started)
        await channel.queue_delete(name)
    return took


# -- plumbing ---------------------------------------------------------------------------


class _processes:
    """Start ``count`` consumer processes; stop them on exit."""

    def __init__(self, target: Callable[..., None], count: int, *args: Any) -> None:
        self.stop = SPAWN.Event()
        self.ready = [SPAWN.Event() for _ in range(count)]
        self.processes = [SPAWN.Process(target=target, args=(*args, ready, self.stop))
                          for ready in self.ready]

    async def __aenter__(self) -> _processes:
        for process in self.processes:
            process.start()
        loop = asyncio.get_running_loop()
        for ready in self.ready:
            if not await loop.run_in_executor(None, ready.wait, 60):
                raise RuntimeError("a consumer process did not start within 60s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        for process in self.processes:
            process.join(30)


async def _until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Poll a count other processes write (shared memory has no event to await)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the consumers did not finish within {timeout}s")
        await asyncio.sleep(0.001)


def _percentiles(took: list[float]) -> dict[str, float]:
    ordered = sorted(took)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spores", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--url", default=URL)
    parser.add_argument("--json-out")
    options = parser.parse_args(argv)
    # Pass the options on: multiprocessing's spawn re-imports this module.
    url, spores, requests = options.url, options.spores, options.requests
    runs: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
        ("plain aio-pika, 1 consumer: spores/s", lambda: plain_throughput(url, spores, 1)),
        ("sporeflow amqp, 1 consumer: spores/s", lambda: sporeflow_throughput(url, spores, 1)),
        ("plain aio-pika, 2 consumers: spores/s", lambda: plain_throughput(url, spores, 2)),
        ("sporeflow amqp, 2 consumers: spores/s",
         lambda: sporeflow_throughput(url, spores, 2)),
        ("plain aio-pika, request/reply", lambda: plain_round_trips(url, requests)),
        ("sporeflow amqp, request/reply", lambda: sporeflow_round_trips(url, requests)),
    ]
    results: dict[str, Any] = {}
    for label, run in runs:
        value = asyncio.run(run())
        results[label] = _percentiles(value) if isinstance(value, list) else round(value)
        print(f"{label:<42} {results[label]}", flush=True)
    if options.json_out:
        with open(options.json_out, "w", encoding="utf-8") as file:
            json.dump({"spores": spores, "requests": requests, "concurrency": CONCURRENCY,
                       "prefetch": PREFETCH, "python": sys.version.split()[0],
                       "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
