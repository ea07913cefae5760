"""The conformance harness: organisms on one backend, and waiting for their work.

Every test of the conformance suite runs once per backend:

    embedded       backend: memory, the default: lanes fed in-process (no broker)
    memory-broker  the broker path (pipeline.bridge) over the in-process MemoryBackend
    amqp           the broker path over RabbitMQ at 127.0.0.1:5672, marked ``amqp``

The amqp runs use a fresh exchange and fresh queues per test and delete them after.
They never skip: without a reachable broker they fail, saying how to start one.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import OrganismSpec, StageSpec, organism_from_dict
from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.backend import Backend, Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BACKSTOP = 20.0  # seconds: a healthy test here takes well under one


def broker_reachable(host: str = "127.0.0.1", port: int = 5672) -> str | None:
    """None when something listens on the broker's port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return str(exc)


class Harness:
    """Builds organisms on one backend and waits for their work to settle."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._made: list[tuple[Organism, Backend | None]] = []

    def organism(self, data: dict[str, Any], *, now: Callable[[], datetime] | None = None,
                 journal: Path | None = None, stages: Sequence[StageSpec] = ()) -> Organism:
        """An organism of ``data`` (a dict as in organism.yaml) on this backend, uniquely
        named so that its exchange and queues are its own. ``journal``: the embedded
        path's durable journal (see :meth:`successor`); the broker paths have the broker.
        ``stages``: the user's, in their places."""
        head = {**data.get("organism", {}), "name": f"conf-{uuid.uuid4().hex[:12]}"}
        spec = organism_from_dict({**data, "organism": head})
        return self._made_on(spec, None, now, journal if not self.brokered else None, stages)

    def successor(self, organism: Organism, *,
                  now: Callable[[], datetime] | None = None) -> Organism:
        """The next process of ``organism`` after it died: the same organism on the same
        broker, whose queues give it what the dead one left unacked; on the embedded path,
        the same organism on the same journal, which replays what was unfinished."""
        broker = next((backend for made, backend in self._made if made is organism), None)
        journal = organism.journal.path if organism.journal is not None else None
        return self._made_on(organism.spec, broker, now, journal)

    def _made_on(self, spec: OrganismSpec, previous: Backend | None,
                 now: Callable[[], datetime] | None, journal: Path | None,
                 stages: Sequence[StageSpec] = ()) -> Organism:
        backend: Backend | None = None
        if self.kind == "memory-broker":
            backend = MemoryBackend(previous.broker if isinstance(previous, MemoryBackend)
                                    else None)
        elif self.kind == "amqp":
            from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
            backend = AmqpBackend(AMQP_URL)
        extra: dict[str, Any] = {"now": now} if now is not None else {}
        organism = Organism(spec, backend=backend, journal=journal, stages=stages, **extra)
        self._made.append((organism, backend))
        return organism

    @asynccontextmanager
    async def running(self, data: dict[str, Any], *,
                      now: Callable[[], datetime] | None = None,
                      stages: Sequence[StageSpec] = ()) -> AsyncIterator[Organism]:
        organism = self.organism(data, now=now, stages=stages)
        async with organism.running(drain_timeout=BACKSTOP):
            yield organism

    @property
    def brokered(self) -> bool:
        return self.kind != "embedded"

    async def quiet(self, organism: Organism) -> None:
        """Wait until all the organism's work is done (on a broker: came back and done)."""
        await asyncio.wait_for(organism.idle(), BACKSTOP)

    async def published(self, organism: Organism, count: int) -> None:
        """Wait until ``count`` spores left the chain: in a mailbox, or on the broker."""
        bridge = organism._bridge
        if bridge is None:
            await wait_for(lambda: sum(a["received"] for a in organism.stats()["agents"]
                                       .values()) >= count)
        else:
            await wait_for(lambda: bridge.counts["published"] >= count)

    async def cleanup(self) -> None:
        destroyed: set[str] = set()  # a successor shares its predecessor's topology
        for organism, backend in self._made:
            if organism.state in ("running", "failed"):
                await organism.stop(drain_timeout=1)
            topology = Topology.of(organism.spec)
            if backend is not None and topology.exchange not in destroyed:
                destroyed.add(topology.exchange)
                await backend.destroy(topology)


async def wait_for(condition: Callable[[], bool], timeout: float = BACKSTOP) -> None:
    """Poll ``condition`` while the loop runs other work; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.002)


@asynccontextmanager
async def amqp_harness() -> AsyncIterator[Harness]:
    """A harness on the real broker; fails (never skips) when it is unreachable."""
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    made = Harness("amqp")
    try:
        yield made
    finally:
        await made.cleanup()


async def broker_dead_letters(topology: Topology) -> list[tuple[dict[str, Any], bytes]]:
    """Take what the broker's dead-letter queue holds: (headers, body) each."""
    import aio_pika  # the amqp extra: only the RabbitMQ tests call this

    connection = await aio_pika.connect(AMQP_URL)
    letters = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
        while (message := await queue.get(fail=False)) is not None:
            letters.append((dict(message.headers), message.body))
            await message.ack()
    return letters
