"""Hand-written asyncio, the limit: one asyncio.Queue and one task per agent, nothing else.

This is what a careful engineer writes without a framework: `send` is `put_nowait`,
each agent's task awaits its queue and awaits its handler, a returned dict goes to
the next agent, a request carries a future, `idle` waits for a pending count to reach
zero. No validation, routing table, stats or back-pressure: the upper bound for a
framework on the same event loop with the same delivery model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter, perf_counter_ns
from types import TracebackType
from typing import Any

from bench.outcome import Outcome, WorkloadRun
from bench.pacing import paced
from bench.workloads import LOAD_PER_MS, Workload, records_10k, text_200k

Knowledge = dict[str, Any]
Handler = Callable[[Knowledge], Awaitable[Knowledge | None]]
Item = tuple[Knowledge, "asyncio.Future[Knowledge | None] | None"]


class Hive:
    """A minimal in-process agent runtime: mailboxes, channels, replies, idle."""

    def __init__(self) -> None:
        self._boxes: dict[str, asyncio.Queue[Item]] = {}
        self._channels: dict[str, list[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pending = 0
        self._idle: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Hive:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(
        self,
        name: str,
        handler: Handler,
        *,
        emit_to: str | None = None,
        subscribe: Iterable[str] = (),
    ) -> None:
        box: asyncio.Queue[Item] = asyncio.Queue()
        self._boxes[name] = box
        for channel in subscribe:
            self._channels.setdefault(channel, []).append(name)
        self._tasks.append(asyncio.create_task(self._serve(box, handler, emit_to)))

    def send(
        self,
        to: str,
        knowledge: Knowledge,
        reply: asyncio.Future[Knowledge | None] | None = None,
    ) -> None:
        self._pending += 1
        self._boxes[to].put_nowait((knowledge, reply))

    def broadcast(self, knowledge: Knowledge, channel: str) -> None:
        for name in self._channels[channel]:
            self.send(name, knowledge)

    async def request(self, to: str, knowledge: Knowledge) -> Knowledge | None:
        reply: asyncio.Future[Knowledge | None] = asyncio.get_running_loop().create_future()
        self.send(to, knowledge, reply)
        return await reply

    async def idle(self) -> None:
        if self._pending:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle

    async def _serve(self, box: asyncio.Queue[Item], handler: Handler, emit_to: str | None) -> None:
        while True:
            knowledge, reply = await box.get()
            out = await handler(knowledge)
            if reply is not None:
                reply.set_result(out)
            elif out is not None and emit_to is not None:
                self.send(emit_to, out)
            # Decrement after the reply was queued, so a chain never looks idle midway.
            self._pending -= 1
            if not self._pending and self._idle is not None:
                self._idle.set_result(None)
                self._idle = None


async def broadcast(w: Workload) -> Outcome:
    handled = 0

    async def count(knowledge: Knowledge) -> None:
        nonlocal handled
        handled += 1

    async with Hive() as hive:
        for k in range(w.width):
            hive.add(f"sub{k}", count, subscribe=["news"])
        start = perf_counter()
        for i in range(w.count):
            hive.broadcast({"i": i}, "news")
        await hive.idle()
        elapsed = perf_counter() - start
    return Outcome(handled, elapsed)


async def request_reply(w: Workload) -> Outcome:
    handled = 0

    async def echo(knowledge: Knowledge) -> Knowledge:
        nonlocal handled
        handled += 1
        return {"i": knowledge["i"]}

    latencies: list[float] = []
    async with Hive() as hive:
        hive.add("echo", echo)
        start = perf_counter()
        for i in range(w.count):
            sent = perf_counter_ns()
            answer = await hive.request("echo", {"i": i})
            latencies.append((perf_counter_ns() - sent) / 1000)
            assert answer == {"i": i}, answer
        elapsed = perf_counter() - start
    return Outcome(handled, elapsed, latencies)


async def many_agents(w: Workload) -> Outcome:
    handled = 0

    async def count(knowledge: Knowledge) -> None:
        nonlocal handled
        handled += 1

    names = [f"agent{k}" for k in range(w.width)]
    async with Hive() as hive:
        for name in names:
            hive.add(name, count)
        start = perf_counter()
        for r in range(w.count):
            for name in names:
                hive.send(name, {"r": r})
        await hive.idle()
        elapsed = perf_counter() - start
    return Outcome(handled, elapsed)


async def reply_chain(w: Workload) -> Outcome:
    hops = 0

    async def step(knowledge: Knowledge) -> Knowledge:
        nonlocal hops
        hops += 1
        return {"n": knowledge["n"] + 1}

    async def last(knowledge: Knowledge) -> None:
        nonlocal hops
        hops += 1

    names = [f"a{k + 1}" for k in range(w.width)]
    async with Hive() as hive:
        for name, nxt in zip(names, names[1:], strict=False):
            hive.add(name, step, emit_to=nxt)
        hive.add(names[-1], last)
        start = perf_counter()
        for _ in range(w.count):
            hive.send(names[0], {"n": 0})
        await hive.idle()
        elapsed = perf_counter() - start
    return Outcome(hops, elapsed)


async def awaiting_handler(w: Workload) -> Outcome:
    """W7: each call under its own 5 s timeout, each spore dropped once past its expiry,
    as one writes it by hand."""
    handled = 0
    loop = asyncio.get_running_loop()

    async def count(knowledge: Knowledge) -> None:
        nonlocal handled
        if loop.time() > knowledge["deadline"]:
            return  # expired: dropped
        async with asyncio.timeout(5.0):
            await asyncio.sleep(0)
            handled += 1

    async with Hive() as hive:
        hive.add("sink", count)
        start = perf_counter()
        for i in range(w.count):
            hive.send("sink", {"i": i, "deadline": loop.time() + 60.0})
        await hive.idle()
        elapsed = perf_counter() - start
    return Outcome(handled, elapsed)


def latency_under_load(probe: str) -> WorkloadRun:
    """W6, as sporeflow's runner runs it (see there)."""

    async def run(w: Workload) -> Outcome:
        latencies: list[float] = []

        async def worker(knowledge: Knowledge) -> None:
            if "t0" in knowledge:
                latencies.append((perf_counter_ns() - knowledge["t0"]) / 1000)

        async def echo(knowledge: Knowledge) -> Knowledge:
            return {"ok": 1}

        async def load() -> None:
            for n in range(LOAD_PER_MS):
                hive.broadcast({"n": n}, "load")

        async def send_probe() -> None:
            if probe == "r":
                sent = perf_counter_ns()
                await hive.request("echo", {"x": 1})
                latencies.append((perf_counter_ns() - sent) / 1000)
            else:
                hive.broadcast({"t0": perf_counter_ns()}, "load" if probe == "s" else "quiet")

        async with Hive() as hive:
            hive.add("worker", worker, subscribe=["load"])
            hive.add("other", worker, subscribe=["quiet"])
            hive.add("echo", echo)
            start = perf_counter()
            await asyncio.gather(paced(w.count, load), paced(w.count, send_probe))
            await hive.idle()
            elapsed = perf_counter() - start
        return Outcome(len(latencies), elapsed, latencies)

    return run


def payloads(make: Callable[[int], Knowledge]) -> WorkloadRun:
    """W1 (and W8): count spores sent to one handler, with the knowledge ``make`` builds."""

    async def run(w: Workload) -> Outcome:
        handled = 0

        async def count(knowledge: Knowledge) -> None:
            nonlocal handled
            handled += 1

        async with Hive() as hive:
            hive.add("sink", count)
            start = perf_counter()
            for i in range(w.count):
                hive.send("sink", make(i))
            await hive.idle()
            elapsed = perf_counter() - start
        return Outcome(handled, elapsed)

    return run


RUNS: dict[str, WorkloadRun] = {
    "W1": payloads(lambda i: {"i": i}),
    "W2": broadcast,
    "W3": request_reply,
    "W4": many_agents,
    "W5": reply_chain,
    "W6s": latency_under_load("s"),
    "W6o": latency_under_load("o"),
    "W6r": latency_under_load("r"),
    "W7": awaiting_handler,
    "W8a": payloads(records_10k),
    "W8b": payloads(text_200k),
}
