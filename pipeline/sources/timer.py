"""A ``timer`` source: a spore every ``every`` seconds, ``count`` in all.

Each tick sends the declared knowledge with ``tick`` (1, 2, ...) and ``at`` (the
organism's clock, ISO 8601) added. Ticks are not queued behind a full organism: a tick
waits for admission, and the ticks that fell due meanwhile are skipped (counted as
``skipped``), so a slow organism gets one tick per interval at most, never a burst.
"""

from __future__ import annotations

import asyncio

from sporeflow.config.sources import TimerSource
from sporeflow.pipeline.sources.port import Feed, Source

__all__ = ["Timer"]


class Timer(Source):
    def __init__(self, feed: Feed, spec: TimerSource) -> None:
        super().__init__(feed)
        self.spec = spec

    async def run(self) -> None:
        spec, feed = self.spec, self.feed
        loop = asyncio.get_running_loop()
        due = loop.time() + spec.every
        tick = 0
        while spec.count is None or tick < spec.count:
            await asyncio.sleep(max(0.0, due - loop.time()))
            tick += 1
            await feed.send({**spec.knowledge, "tick": tick,
                             "at": feed.port.now().isoformat()})
            due += spec.every
            late = loop.time() - due
            if late >= 0:  # the send waited past the next tick(s): skip them, do not burst
                missed = int(late // spec.every) + 1
                self.stats.counts["skipped"] += missed
                due += missed * spec.every
