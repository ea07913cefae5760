"""sporeflow: an Organism built with from_dict, default limits, as users run it.

Handlers are the plain `async def handler(spore, ctx)` of the handler contract;
wiring (subscriptions, `emit`) is declared, not coded. Completion is `org.idle()`.
Every run checks its own count against the organism's per-agent `handled` stats.

`variant(journal=True)` and `variant(live=True)` give the same workloads with the
durable journal on (a fresh SQLite file per run) or with the live view redrawing
into an in-memory terminal, so their costs show side by side with the plain run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any

from bench.outcome import Outcome, WorkloadRun
from bench.pacing import paced
from bench.workloads import LOAD_PER_MS, Workload, records_10k, text_200k
from sporeflow.pipeline import Context, Organism, Spore

Knowledge = dict[str, Any]


@dataclass
class Tally:
    handled: int = 0

    async def count(self, spore: Spore, ctx: Context) -> None:
        self.handled += 1


@dataclass
class Options:
    journal: bool = False
    live: bool = False
    # Outside sends with confirm=False, and one `confirmed()` (all on disk) at the end:
    # the journal groups a single sender's spores into few commits.
    pipelined: bool = False


OPTIONS = Options()


def sending() -> dict[str, bool]:
    """The outside sends' options of the variant: pipelined ones take confirm=False (none
    for the others, so that a baseline build without it runs them too)."""
    return {"confirm": False} if OPTIONS.pipelined else {}


def organism(agents: dict[str, dict[str, Any]], channels: Iterable[str] = ()) -> Organism:
    head: dict[str, Any] = {"name": "bench"}
    if OPTIONS.journal:
        folder = tempfile.mkdtemp(prefix="sporeflow-bench-")
        atexit.register(shutil.rmtree, folder, True)  # each run is a process of its own
        head["journal"] = str(Path(folder) / "journal.db")
    return Organism.from_dict(
        {
            "organism": head,
            "channels": {name: {} for name in channels},
            "agents": agents,
            "limits": {},
        },
        base_dir=".",
    )


@contextlib.asynccontextmanager
async def running(org: Organism) -> AsyncIterator[Organism]:
    """`org.running()`, with the live view around it when the variant asks for one."""
    async with org.running():
        if not OPTIONS.live:
            yield org
            return
        from rich.console import Console

        from sporeflow.pipeline import LiveView

        console = Console(file=io.StringIO(), force_terminal=True, width=120)
        async with LiveView(org, console=console):
            yield org


def check_stats(org: Organism, tally: Tally, names: Iterable[str]) -> None:
    """Fail unless the organism's stats agree with the handlers' own count."""
    agents = org.stats()["agents"]
    reported = sum(agents[name]["handled"] for name in names)
    if reported != tally.handled:
        raise RuntimeError(f"stats() reports {reported} handled, handlers counted {tally.handled}")


async def send_timed(
    org: Organism, tally: Tally, names: list[str], send: Callable[[], Awaitable[None]]
) -> Outcome:
    """Run the organism, time ``send()`` until the organism is idle, check the counts."""
    async with running(org):
        start = perf_counter()
        await send()
        if OPTIONS.pipelined:  # every spore sent is (or was) on disk
            await org.confirmed()
        await org.idle()
        elapsed = perf_counter() - start
        check_stats(org, tally, names)
    return Outcome(tally.handled, elapsed)


async def broadcast(w: Workload) -> Outcome:
    tally = Tally()
    names = [f"sub{k}" for k in range(w.width)]
    org = organism(
        {name: {"handler": tally.count, "subscribe": ["news"]} for name in names},
        channels=["news"],
    )

    async def send() -> None:
        for i in range(w.count):
            await org.broadcast({"i": i}, channel="news", **sending())

    return await send_timed(org, tally, names, send)


async def request_reply(w: Workload) -> Outcome:
    tally = Tally()

    async def echo(spore: Spore, ctx: Context) -> Knowledge:
        tally.handled += 1
        return {"i": spore.knowledge["i"]}

    org = organism({"echo": {"handler": echo}})
    latencies: list[float] = []
    async with running(org):
        start = perf_counter()
        for i in range(w.count):
            sent = perf_counter_ns()
            answer = await org.request("echo", {"i": i}, timeout=5.0)
            latencies.append((perf_counter_ns() - sent) / 1000)
            assert answer.knowledge == {"i": i}, answer
        elapsed = perf_counter() - start
        await org.idle()
        check_stats(org, tally, ["echo"])
    return Outcome(tally.handled, elapsed, latencies)


async def many_agents(w: Workload) -> Outcome:
    tally = Tally()
    names = [f"agent{k}" for k in range(w.width)]
    org = organism({name: {"handler": tally.count} for name in names})

    async def send() -> None:
        for r in range(w.count):
            for name in names:
                await org.send(name, {"r": r}, **sending())

    return await send_timed(org, tally, names, send)


async def reply_chain(w: Workload) -> Outcome:
    tally = Tally()

    async def step(spore: Spore, ctx: Context) -> Knowledge:
        tally.handled += 1
        return {"n": spore.knowledge["n"] + 1}

    names = [f"a{k + 1}" for k in range(w.width)]
    # a1..a4 emit to the next; the last one only counts (returning a dict without
    # `emit` would send it back to its sender).
    agents: dict[str, dict[str, Any]] = {
        name: {"handler": step, "emit": {"to": nxt}}
        for name, nxt in zip(names, names[1:], strict=False)
    }
    agents[names[-1]] = {"handler": tally.count}
    org = organism(agents)

    async def send() -> None:
        for _ in range(w.count):
            await org.send(names[0], {"n": 0}, **sending())

    return await send_timed(org, tally, names, send)


async def awaiting_handler(w: Workload) -> Outcome:
    """W7: the handler awaits once, under `timeout: 5s`; each spore expires in 60 s."""
    tally = Tally()

    async def count(spore: Spore, ctx: Context) -> None:
        await asyncio.sleep(0)
        tally.handled += 1

    org = organism({"sink": {"handler": count, "timeout": "5s"}})

    async def send() -> None:
        for i in range(w.count):
            await org.send("sink", {"i": i}, expires_in=60.0, **sending())

    return await send_timed(org, tally, ["sink"], send)


def payloads(make: Callable[[int], Knowledge]) -> WorkloadRun:
    """W1 (and W8): count spores sent to one handler, with the knowledge ``make`` builds."""

    async def run(w: Workload) -> Outcome:
        tally = Tally()
        org = organism({"sink": {"handler": tally.count}})

        async def send() -> None:
            for i in range(w.count):
                await org.send("sink", make(i), **sending())

        return await send_timed(org, tally, ["sink"], send)

    return run


def latency_under_load(probe: str) -> WorkloadRun:
    """W6: LOAD_PER_MS broadcasts a millisecond on 'load' to one agent, and a probe a
    millisecond: on 'load' too (``s``), on 'quiet' to another agent (``o``), or a
    request to a third (``r``); each probe's latency from its send."""

    async def run(w: Workload) -> Outcome:
        latencies: list[float] = []

        def arrived(spore: Spore) -> None:
            latencies.append((perf_counter_ns() - spore.knowledge["t0"]) / 1000)

        async def worker(spore: Spore, ctx: Context) -> None:
            if "t0" in spore.knowledge:
                arrived(spore)

        async def other(spore: Spore, ctx: Context) -> None:
            arrived(spore)

        async def echo(spore: Spore, ctx: Context) -> Knowledge:
            return {"ok": 1}

        org = organism({"worker": {"handler": worker, "subscribe": ["load"]},
                        "other": {"handler": other, "subscribe": ["quiet"]},
                        "echo": {"handler": echo}}, channels=["load", "quiet"])

        async def load() -> None:
            for n in range(LOAD_PER_MS):
                await org.broadcast({"n": n}, channel="load")

        async def send_probe() -> None:
            if probe == "r":
                sent = perf_counter_ns()
                await org.request("echo", {"x": 1}, timeout=30.0)
                latencies.append((perf_counter_ns() - sent) / 1000)
            else:
                await org.broadcast({"t0": perf_counter_ns()},
                                    channel="load" if probe == "s" else "quiet")

        async with running(org):
            start = perf_counter()
            await asyncio.gather(paced(w.count, load), paced(w.count, send_probe))
            await org.idle()
            elapsed = perf_counter() - start
        return Outcome(len(latencies), elapsed, latencies)

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


def variant(**options: bool) -> dict[str, WorkloadRun]:
    """The workloads with ``Options(**options)`` in force (one variant per process)."""
    OPTIONS.__init__(**options)  # type: ignore[misc]
    return RUNS
