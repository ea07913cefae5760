"""What a handler's many replies cost, by how it makes them: peak memory and time.

    python -m bench.returned [--items 200000] [--max-in-memory 1000]

Each case runs in a fresh process and prints its peak RSS (``ru_maxrss``), its wall
time, how many spores were handled and how many were paged out to disk:

- returned-generator: an async handler returns a generator of ``--items`` dicts of 1 KB;
- returned-list: the same, returned as a list (made whole by the handler);
- sync-generator: a plain ``def`` handler that yields them (it runs on its threads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

CASES = ("returned-generator", "returned-list", "sync-generator")
PAD = "x" * 1000


async def _returned_generator(spore: Any, ctx: Any) -> Iterator[dict[str, Any]]:
    return ({"i": i, "pad": PAD} for i in range(spore.knowledge["items"]))


async def _returned_list(spore: Any, ctx: Any) -> list[dict[str, Any]]:
    return [{"i": i, "pad": PAD} for i in range(spore.knowledge["items"])]


def _sync_generator(spore: Any, ctx: Any) -> Iterator[dict[str, Any]]:
    for i in range(spore.knowledge["items"]):
        yield {"i": i, "pad": PAD}


async def _sink(spore: Any, ctx: Any) -> None:
    return None


HANDLERS = {"returned-generator": _returned_generator, "returned-list": _returned_list,
            "sync-generator": _sync_generator}


async def run(case: str, items: int, max_in_memory: int) -> dict[str, Any]:
    from sporeflow.pipeline import Organism

    org = Organism.from_dict({
        "agents": {"maker": {"handler": HANDLERS[case], "emit": {"to": "sink"}},
                   "sink": {"handler": _sink, "concurrency": 4}},
        "limits": {"max_in_memory": max_in_memory}})
    async with org.running(drain_timeout=None):
        await org.send("maker", {"items": items})
        await org.idle()
    totals = org.stats()["totals"]
    return {"handled": totals["handled"], "paged_out": totals.get("paged_out_total")}


def one(case: str, items: int, max_in_memory: int) -> None:
    began = time.perf_counter()
    result = asyncio.run(run(case, items, max_in_memory))
    result.update(case=case, items=items, seconds=round(time.perf_counter() - began, 2),
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                     1))
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--max-in-memory", type=int, default=1000)
    parser.add_argument("--one", metavar="CASE", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.items, args.max_in_memory)
        return
    for case in CASES:
        subprocess.run([sys.executable, "-m", "bench.returned", "--one", case, "--items",
                        str(args.items), "--max-in-memory", str(args.max_in_memory)],
                       check=True)


if __name__ == "__main__":
    main()
