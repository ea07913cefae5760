"""Handlers of the journal crash-test organism: a checkable result, one line per item."""

from __future__ import annotations

import os
import sys
from typing import Any


async def spawn(spore: Any, ctx: Any) -> list[dict[str, int]]:
    """Make the items; note which spore asked, in $SPOREFLOW_SPAWN_FILE if set."""
    if "SPOREFLOW_SPAWN_FILE" in os.environ:
        _append(os.environ["SPOREFLOW_SPAWN_FILE"], f"{spore.id}\n")
    return [{"item": i} for i in range(spore.knowledge["count"])]


async def square(spore: Any, ctx: Any) -> dict[str, int]:
    item = spore.knowledge["item"]
    return {"item": item, "square": item * item}


async def record(spore: Any, ctx: Any) -> None:
    line = f"{spore.knowledge['item']} {spore.knowledge['square']}\n"
    _append(os.environ["SPOREFLOW_SINK_FILE"], line)
    sys.stdout.write(line)
    sys.stdout.flush()


def _append(path: str, line: str) -> None:
    # One O_APPEND write per line: a kill never leaves half a line behind.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
