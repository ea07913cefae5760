"""Shared test helpers: a virtual-clock event loop, and small organism builders."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .conformance.harness import Harness, amqp_harness
from .private_broker import private_broker  # noqa: F401  (a fixture for every module)

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


@pytest.fixture
def handler_modules(tmp_path: Path) -> Iterator[Callable[[str, str | None], str]]:
    """Write handler modules beside a test's organism under unique names; forget them
    after, so that no test sees another's module in ``sys.modules``."""
    names: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"handlers_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def private_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test's own XDG_RUNTIME_DIR, where organisms' control sockets live: a run in
    one test (or on the developer's machine) is never another's "already running".
    Short, under /tmp: a Unix socket's path takes at most 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """An organism's world on the shared RabbitMQ: a unique exchange and queues, removed
    after the test (the RabbitMQ backend's tests)."""
    async with amqp_harness() as made:
        yield made


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``condition()`` holds; fail after ``timeout`` real seconds.

    Never use it for a condition that needs a timer on the virtual clock: a task that
    is always ready keeps that clock from jumping.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0)
