"""Instructions per spore, counted by callgrind: a measure the machine's noise leaves alone.

    python -m bench.instructions [--python PY ...] [--workloads W1,W2] [--count 20000]
                                 [--journal]

For each interpreter (a venv with a build of sporeflow) and workload, runs the workload
twice under ``valgrind --tool=callgrind`` (10 spores, then 10 + ``count``) with a fixed
hash seed, and prints (second - first) / count: the instructions one more spore costs,
start-up left out. Compare two builds by naming both venvs' interpreters.

``--journal``: the same workloads with a journal (a fresh file) and pipelined outside
sends (``confirm=False``, then one ``confirmed()``); the writer thread is counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
JOURNAL_ENV = "SPOREFLOW_BENCH_JOURNAL"  # set (to a folder) inside valgrind by --journal


def _built(spec: dict[str, Any]) -> Any:
    """The organism of ``spec``, with a journal when --journal asked for one."""
    from sporeflow.pipeline import Organism

    folder = os.environ.get(JOURNAL_ENV)
    if not folder:
        return Organism.from_dict(spec)
    return Organism(Organism.from_dict(spec).spec, journal=Path(folder) / "journal.db")


# With a journal: pipelined sends (older builds, without confirm=, run without --journal).
PIPELINED: dict[str, bool] = {"confirm": False} if os.environ.get(JOURNAL_ENV) else {}


async def _w1(n: int) -> None:

    async def count(spore: Any, ctx: Any) -> None:
        return None

    org = _built({"agents": {"a": {"handler": count}}})
    async with org.running():
        for i in range(n):
            await org.send("a", {"i": i}, **PIPELINED)
        if PIPELINED:
            await org.confirmed()
        await org.idle()


async def _w2(n: int) -> None:

    async def count(spore: Any, ctx: Any) -> None:
        return None

    org = _built({"channels": {"news": {}}, "agents": {
        f"s{i}": {"handler": count, "subscribe": ["news"]} for i in range(50)}})
    async with org.running():
        for i in range(n // 50):
            await org.broadcast({"i": i}, channel="news", **PIPELINED)
        if PIPELINED:
            await org.confirmed()
        await org.idle()


async def _w3(n: int) -> None:

    async def echo(spore: Any, ctx: Any) -> dict[str, int]:
        return {"ok": 1}

    org = _built({"agents": {"e": {"handler": echo}}})
    async with org.running():
        for i in range(n):
            await org.request("e", {"i": i}, timeout=5)


async def _w4(n: int) -> None:

    async def count(spore: Any, ctx: Any) -> None:
        return None

    org = _built({"agents": {f"a{i}": {"handler": count} for i in range(1000)}})
    async with org.running():
        for i in range(n):
            await org.send(f"a{i % 1000}", {"i": i}, **PIPELINED)
        if PIPELINED:
            await org.confirmed()
        await org.idle()


async def _w5(n: int) -> None:

    async def hop(spore: Any, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"]}

    async def end(spore: Any, ctx: Any) -> None:
        return None

    agents: dict[str, Any] = {f"h{i}": {"handler": hop, "emit": {"to": f"h{i + 1}"}}
                              for i in range(9)}
    agents["h9"] = {"handler": end}
    org = _built({"agents": agents})
    async with org.running():
        for i in range(n // 10):  # n hops in all
            await org.send("h0", {"n": i}, **PIPELINED)
        if PIPELINED:
            await org.confirmed()
        await org.idle()


async def _w7(n: int) -> None:
    async def count(spore: Any, ctx: Any) -> None:
        await asyncio.sleep(0)

    org = _built({"agents": {"a": {"handler": count, "timeout": "5s"}}})
    async with org.running():
        for i in range(n):
            await org.send("a", {"i": i}, expires_in=60.0, **PIPELINED)
        if PIPELINED:
            await org.confirmed()
        await org.idle()


RUNNERS: dict[str, Callable[[int], Awaitable[None]]] = {
    "W1": _w1, "W2": _w2, "W3": _w3, "W4": _w4, "W5": _w5, "W7": _w7}


def _instructions(python: str, workload: str, count: int, journal: bool) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/cg.out",
             python, "-m", "bench.instructions", "--run", workload, str(count)],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONHASHSEED": "0", JOURNAL_ENV: folder if journal else ""})
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"callgrind printed no count:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", help="interpreter(s) to measure")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--journal", action="store_true",
                        help="with a journal and pipelined sends")
    parser.add_argument("--run", nargs=2, metavar=("WORKLOAD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:  # inside valgrind
        asyncio.run(RUNNERS[args.run[0]](int(args.run[1])))
        return
    pythons = args.python or [sys.executable]
    print("| workload | " + " | ".join(pythons) + " |")
    print("|---" * (len(pythons) + 1) + "|")
    for workload in args.workloads.split(","):
        cells = []
        for python in pythons:
            base = _instructions(python, workload, 10, args.journal)
            full = _instructions(python, workload, 10 + args.count, args.journal)
            cells.append(f"{(full - base) / args.count:,.0f}")
        print(f"| {workload} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
