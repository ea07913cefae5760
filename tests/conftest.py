"""Shared test helpers: a virtual-clock event loop, and small organism builders."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready.

    Timeouts, backoffs and expiry then take no real time, and tests never sleep.
    Only for tests whose handlers are async (a worker thread would not be waited for).
    """

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        ready: Any = self._ready  # type: ignore[attr-defined]
        scheduled: Any = self._scheduled  # type: ignore[attr-defined]
        if not ready and scheduled:
            self._now = max(self._now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]

    def wall(self) -> datetime:
        """The virtual time as a UTC datetime, for an organism's ``now``."""
        return EPOCH + timedelta(seconds=self._now)


@pytest.fixture
def virtual() -> Callable[[Callable[[VirtualClockLoop], Coroutine[Any, Any, T]]], T]:
    """Run ``main(loop)`` to completion on a fresh virtual-clock loop."""

    def run(main: Callable[[VirtualClockLoop], Coroutine[Any, Any, T]]) -> T:
        loop = VirtualClockLoop()
        try:
            return loop.run_until_complete(asyncio.wait_for(main(loop), 3600))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return run


async def collect(source: Any) -> list[Any]:
    """Drain an async iterable into a list."""
    return [item async for item in source]


async def aiter_of(*batches: Any) -> Any:
    """An async iterable of the given batches: a stage's input in tests."""
    for batch in batches:
        yield batch
