"""Scaling curves: sporeflow's cost per spore and its memory as one dimension grows.

    python -m bench.scaling [--runs 3] [--curves agents,payload,fanout,queued] [--quick]

Each point runs in a fresh process (peak RSS is per process) with default limits
otherwise, and prints the median of ``--runs``:

- agents: 10 / 1k / 10k / 100k agents, spores sent round-robin (one per agent a round);
- payload: knowledge of 100 B / 10 KiB / 1 MiB (records of five fields), to one agent;
- fanout: broadcasts to 10 / 100 / 1,000 subscribers (cost per delivery);
- queued: memory per spore held in a mailbox (1k / 10k / 100k spores queued behind a
  handler that waits), RSS after minus before, divided by the spores.

A curve is linear when the cost per unit stays flat as the size grows; the last column
gives each point's cost per unit against the smallest point's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import perf_counter
from typing import Any

CURVES: dict[str, tuple[int, ...]] = {
    "agents": (10, 1_000, 10_000, 100_000),
    "payload": (100, 10 * 1024, 1024 * 1024),
    "fanout": (10, 100, 1_000),
    "queued": (1_000, 10_000, 100_000),
}
UNITS = {"agents": "us/spore", "payload": "us/spore", "fanout": "us/delivery",
         "queued": "bytes/spore"}
SPORES = 100_000  # per point (payload: fewer, see _payload)


def _rss_kib() -> int:
    """The current resident set, in KiB (from /proc: ru_maxrss is the peak only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _organism(agents: dict[str, Any], **head: Any) -> Any:
    from sporeflow.pipeline import Organism

    return Organism.from_dict({"agents": agents, **head})


async def _count(spore: Any, ctx: Any) -> None:
    return None


async def _timed(org: Any, send: Callable[[], Awaitable[None]]) -> float:
    async with org.running():
        start = perf_counter()
        await send()
        await org.idle()
        return perf_counter() - start


async def _agents(size: int, spores: int) -> float:
    names = [f"a{i}" for i in range(size)]
    org = _organism({name: {"handler": _count} for name in names})
    rounds = max(1, spores // size)

    async def send() -> None:
        for _ in range(rounds):
            for name in names:
                await org.send(name, {"n": 1})

    return await _timed(org, send) / (rounds * size) * 1e6


def _records(size: int) -> dict[str, Any]:
    record = {"id": 1, "name": "item-1", "price": 1.25, "tags": ["a", "b"], "note": "note"}
    one = len(json.dumps(record)) + 1
    return {"rows": [dict(record, id=n) for n in range(max(1, size // one))]}


async def _payload(size: int, spores: int) -> float:
    knowledge = _records(size)
    count = max(100, min(spores, 50_000_000 // size))  # about 50 MB through in all
    org = _organism({"sink": {"handler": _count}}, limits={"max_spore_bytes": "4MiB"})

    async def send() -> None:
        for _ in range(count):
            await org.send("sink", knowledge)

    return await _timed(org, send) / count * 1e6


async def _fanout(size: int, spores: int) -> float:
    org = _organism({f"s{i}": {"handler": _count, "subscribe": ["news"]}
                     for i in range(size)}, channels={"news": {}})
    count = max(10, spores // size)

    async def send() -> None:
        for _ in range(count):
            await org.broadcast({"n": 1}, channel="news")

    return await _timed(org, send) / (count * size) * 1e6


async def _queued(size: int, spores: int) -> float:
    release = asyncio.Event()

    async def hold(spore: Any, ctx: Any) -> None:
        await release.wait()

    org = _organism({"sink": {"handler": hold}},
                    channels={"main": {"capacity": size + 10}},
                    limits={"max_in_flight": size + 10})
    async with org.running():
        await org.send("sink", {"n": 0})  # the handler now holds; the rest queue
        before = _rss_kib()
        for n in range(size):
            await org.send("sink", {"n": n})
        after = _rss_kib()
        release.set()
        await org.idle()
    return (after - before) * 1024 / size


POINTS: dict[str, Callable[[int, int], Awaitable[float]]] = {
    "agents": _agents, "payload": _payload, "fanout": _fanout, "queued": _queued}


def _one(curve: str, size: int, spores: int) -> dict[str, float]:
    """Run one point in a fresh process; its cost per unit and peak RSS."""
    out = subprocess.run([sys.executable, "-m", "bench.scaling", "--point", curve, str(size),
                          str(spores)], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).parent.parent)
    if out.returncode != 0:
        raise RuntimeError(f"{curve}={size} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--curves", default=",".join(CURVES))
    parser.add_argument("--quick", action="store_true", help="a tenth of the spores")
    parser.add_argument("--point", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:  # one point, in this fresh process
        curve, size, spores = args.point[0], int(args.point[1]), int(args.point[2])
        cost = asyncio.run(POINTS[curve](size, spores))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"cost": cost, "peak_rss_mib": round(peak, 1)}))
        return 0
    spores = SPORES // 10 if args.quick else SPORES
    print(f"Medians of {args.runs} run(s), {spores:,} spores a point.\n")
    print("| curve | size | cost | peak RSS MiB | cost against the smallest |")
    print("|---|---|---|---|---|")
    for curve in args.curves.split(","):
        if curve not in CURVES:
            parser.error(f"unknown curve {curve!r}; choose from {','.join(CURVES)}")
        first: float | None = None
        for size in CURVES[curve]:
            results = [_one(curve, size, spores) for _ in range(args.runs)]
            cost = statistics.median(r["cost"] for r in results)
            peak = statistics.median(r["peak_rss_mib"] for r in results)
            first = cost if first is None else first
            print(f"| {curve} | {size:,} | {cost:,.2f} {UNITS[curve]} | {peak:,.1f} | "
                  f"{cost / first:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
