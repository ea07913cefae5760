"""Peak memory under runaway output: a reply storm and a self-ticking source.

    python -m bench.memory [--leaves 1000000] [--items 1000000] [--max-in-memory N]

Each scenario runs in a fresh process and prints its peak RSS (``ru_maxrss``), its
wall time, how many spores were handled and how many were paged out to disk.

- storm: one root spore whose handler returns 100 children, each of which returns 100,
  and so on until ``--leaves`` leaves (1M: three levels of x100 under the root).
- source: an async-generator boot handler yielding ``--items`` items as fast as it
  can to a sink.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

FAN = 100


def _organism(agents: dict[str, Any], max_in_memory: int | None) -> Any:
    from sporeflow.pipeline import Organism

    limits: dict[str, Any] = {"max_hops": 64}
    if max_in_memory is not None:
        limits["max_in_memory"] = max_in_memory
    return Organism.from_dict({"agents": agents, "limits": limits})


async def storm(leaves: int, max_in_memory: int | None) -> dict[str, Any]:
    depth = round(math.log(leaves, FAN))

    def fan(spore: Any, ctx: Any) -> Any:
        level = spore.knowledge["level"]
        if level == depth:
            return None
        return [{"level": level + 1}] * FAN

    async def fan_async(spore: Any, ctx: Any) -> Any:
        return fan(spore, ctx)

    org = _organism({"fan": {"handler": fan_async, "emit": {"to": "fan"}}}, max_in_memory)
    async with org.running(drain_timeout=None):
        await org.send("fan", {"level": 0})
        await org.idle()
    return _outcome(org)


def _outcome(org: Any) -> dict[str, Any]:
    totals = org.stats()["totals"]
    # paged_out_total: None on a build without paging (a baseline run).
    return {"handled": totals["handled"], "paged_out": totals.get("paged_out_total")}


async def source(items: int, max_in_memory: int | None) -> dict[str, Any]:
    async def ticks(spore: Any, ctx: Any) -> AsyncIterator[dict[str, int]]:
        for n in range(items):
            yield {"n": n}

    async def sink(spore: Any, ctx: Any) -> None:
        return None

    org = _organism({"ticks": {"handler": ticks, "emit": {"to": "sink"}, "boot": {}},
                     "sink": {"handler": sink}}, max_in_memory)
    async with org.running(drain_timeout=None):
        await org.idle()
    return _outcome(org)


def one(scenario: str, size: int, max_in_memory: int | None) -> None:
    began = time.perf_counter()
    work = storm if scenario == "storm" else source
    result = asyncio.run(work(size, max_in_memory))
    result.update(scenario=scenario, size=size, seconds=round(time.perf_counter() - began, 1),
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                     1))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--max-in-memory", type=int, default=None)
    parser.add_argument("--one", nargs=2, metavar=("SCENARIO", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one[0], int(args.one[1]), args.max_in_memory)
        return
    extra = [] if args.max_in_memory is None else ["--max-in-memory", str(args.max_in_memory)]
    for scenario, size in (("storm", args.leaves), ("source", args.items)):
        subprocess.run([sys.executable, "-m", "bench.memory", "--one", scenario, str(size),
                        *extra], check=True)


if __name__ == "__main__":
    main()
