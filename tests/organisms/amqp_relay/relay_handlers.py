"""Handlers of the relay organism that tests/test_amqp_processes.py spreads over processes.

Each handler that ends a path appends a JSON line to ``$RELAY_OUT/<agent>-<pid>.jsonl``,
so the test sees what every process did.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

TICK_EVERY = 10


def _write(agent: str, record: dict[str, Any]) -> None:
    out = Path(os.environ["RELAY_OUT"]) / f"{agent}-{os.getpid()}.jsonl"
    with out.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


async def source(spore: Any, ctx: Any) -> dict[str, Any]:
    """Passes each number on to the worker (emit); every tenth is also broadcast."""
    n = spore.knowledge["n"]
    if n % TICK_EVERY == 0:
        await ctx.broadcast({"n": n}, channel="ticks")
    return {"n": n}


async def worker(spore: Any, ctx: Any) -> dict[str, Any]:
    """Asks the oracle (another process) for the square; the answer goes to the sink."""
    answer = await ctx.request("oracle", {"n": spore.knowledge["n"]}, timeout=20)
    return {"n": spore.knowledge["n"], "square": answer.knowledge["square"]}


async def oracle(spore: Any, ctx: Any) -> dict[str, Any]:
    return {"square": spore.knowledge["n"] ** 2}


async def sink(spore: Any, ctx: Any) -> None:
    _write("sink", {"n": spore.knowledge["n"], "square": spore.knowledge["square"],
                    "from": spore.from_agent})


async def tick(spore: Any, ctx: Any) -> None:
    _write(ctx.agent, {"n": spore.knowledge["n"]})


async def crunch(spore: Any, ctx: Any) -> None:
    """Some work per spore, so that a process is mid-stream when it is killed."""
    _write("crunch", {"n": spore.knowledge["n"]})
    await asyncio.sleep(0.002)
