"""A steady pace for the latency workloads (W6): a step once a millisecond."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

TICK_S = 0.001


async def paced(ticks: int, step: Callable[[], Awaitable[None]]) -> None:
    """Await ``step()`` ``ticks`` times, one a millisecond on the loop's clock; a late
    step is followed at once by the next (the pace is kept on average, not bursts)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(ticks):
        await step()
        await asyncio.sleep(max(0.0, start + (i + 1) * TICK_S - loop.time()))
