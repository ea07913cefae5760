"""Faults of RabbitMQ other than an outage (``test_broker_outage``): its memory alarm,
an operator closing a connection, a reload while the broker is away.

Every test runs against a RabbitMQ node of this module's own (``private_broker``): the
shared one on 5672 is never touched. What a test turns on in the node (an alarm) it
turns off in its ``finally``, whether it passed or not; the node stops after the module.
The tests wait on conditions, a backstop failing them, never on a clock.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .private_broker import PrivateBroker

pytestmark = pytest.mark.amqp

BACKSTOP = 30.0  # seconds: each step here takes well under one on a healthy node


async def wait_for(condition: Callable[[], bool], what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + BACKSTOP
    while not condition():
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise AssertionError(f"not within {BACKSTOP}s: {said}")
        await asyncio.sleep(0.02)


def url_of(broker: PrivateBroker) -> str:
    return f"{broker.url}?reconnect_interval=0.1"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connections(broker: PrivateBroker) -> list[str]:
    """The node's client connections now, by their Erlang pid."""
    lines = broker.ctl("list_connections", "pid", "--quiet", "--no-table-headers")
    return [line.split()[0] for line in lines.splitlines() if line.startswith("<")]


async def test_a_response_made_again_for_a_redelivered_request_is_a_copy_not_a_dead_letter(
        private_broker: PrivateBroker) -> None:
    """Found by a fault injector: a responder's connection closed by an operator
    (``rabbitmqctl close_connection``) while it handled a request; the request came
    again, was handled again, and the second response, the same spore as the first
    (same id), was dead-lettered 'unexpected response' ("which is no pending request"),
    here and on the broker's dead-letter queue: at-least-once delivery told as an error.
    """
    runs: list[str] = []
    release = asyncio.Event()

    async def oracle(spore: Spore, ctx: Any) -> dict[str, Any]:
        runs.append(spore.id)
        await release.wait()
        return {"square": spore.knowledge["n"] ** 2}

    spec = Organism.from_dict({"organism": {"name": unique("copies"),
                                            "broker": {"give_up_after": "1m"}},
                               "agents": {"oracle": {"handler": oracle, "concurrency": 2}}}).spec
    topology = Topology.of(spec)
    url = url_of(private_broker)
    responder = Organism(spec, backend=url, hosted=["oracle"])
    requester = Organism(spec, backend=url, hosted=[])
    await responder.start()
    try:
        # The responder's, alone so far.
        [its_connection] = await asyncio.to_thread(connections, private_broker)
        await requester.start()
        asking = asyncio.create_task(requester.request("oracle", {"n": 3}, timeout=BACKSTOP))
        await wait_for(lambda: len(runs) == 1, "the responder took the request")
        await asyncio.to_thread(private_broker.ctl, "close_connection", its_connection,
                                "an operator closed it")
        await wait_for(lambda: len(runs) == 2, "the request came again and runs again")
        assert runs[0] == runs[1]
        release.set()  # both runs answer, with the same response
        answer = await asking
        both = (requester, responder)

        def settled() -> int:
            return sum(org.stats()["totals"].get("duplicate_responses", 0)
                       + len(org.dead_letters) for org in both)

        await wait_for(lambda: settled() >= 1, "the second response was settled")
        await responder.idle()
        await requester.idle()
    finally:
        release.set()
        await requester.stop(drain_timeout=2)
        await responder.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)
    assert answer.knowledge == {"square": 9}
    assert [list(org.dead_letters) for org in both] == [[], []]
    assert sum(org.stats()["totals"]["duplicate_responses"] for org in both) == 1


HANDLERS = """
import asyncio

RUNNING = set()
GATE = []


async def gated(spore, ctx):
    RUNNING.add(spore.knowledge["n"])
    if not GATE:
        GATE.append(asyncio.Event())
    await GATE[0].wait()
"""


async def test_a_reload_during_an_outage_raising_concurrency_runs_that_many_once_back(
        private_broker: PrivateBroker, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a fault injector: over a broker, a reload raising an agent's concurrency
    from 1 to 4 said "changed worker (concurrency)", yet two ran at once: the consumer's
    prefetch stays what the start made of the old concurrency (twice it). Reloaded while
    the broker is away, the new prefetch is applied once it is back."""
    module = unique("faults_handlers").replace("-", "_")
    (tmp_path / f"{module}.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    handlers = importlib.import_module(module)
    file = tmp_path / "organism.yaml"
    text = (f"organism: {{name: {unique('reload')}, broker: {{give_up_after: 1m}}}}\n"
            f"agents:\n  worker: {{handler: '{module}:gated', concurrency: CONCURRENCY}}\n")
    file.write_text(text.replace("CONCURRENCY", "1"))
    org = Organism.from_file(file, backend=url_of(private_broker))
    topology = Topology.of(org.spec)
    await org.start()
    broker_down = False
    try:
        await asyncio.to_thread(private_broker.stop_app)
        broker_down = True
        await wait_for(lambda: org.stats()["broker"]["connection"]["state"] != "connected",
                       "the organism saw the broker go")
        file.write_text(text.replace("CONCURRENCY", "4"))
        report = await asyncio.wait_for(org.reload(), BACKSTOP)
        assert dict(report.changed) == {"worker": ("concurrency",)}
        await asyncio.to_thread(private_broker.start_app)
        broker_down = False
        await wait_for(lambda: org.stats()["broker"]["connection"]["state"] == "connected",
                       "the organism reconnected")
        for n in range(4):
            await org.send("worker", {"n": n})
        await wait_for(lambda: len(handlers.RUNNING) == 4,
                       lambda: f"four ran at once (running: {sorted(handlers.RUNNING)})")
    finally:
        if broker_down:
            await asyncio.to_thread(private_broker.start_app)
        if handlers.GATE:
            handlers.GATE[0].set()
        await org.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)


async def nothing(spore: Spore, ctx: Any) -> None:
    return None


async def test_a_stop_while_the_broker_blocks_the_connection_ends_by_its_drain_timeout(
        private_broker: PrivateBroker, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a fault injector: under RabbitMQ's memory alarm the broker blocks a
    publishing connection (it reads nothing from it, confirms nothing) though the
    connection stays up. ``stop(drain_timeout=1)`` then waited for the confirms of the
    spores sent meanwhile for as long as the alarm lasted (for ever, as far as the stop
    could tell), and so did ``sporeflow run`` on SIGTERM."""
    sent = 50
    org = Organism(Organism.from_dict({"organism": {"name": unique("blocked")},
                                       "agents": {"sink": {"handler": nothing}}}).spec,
                   backend=url_of(private_broker), hosted=[])
    topology = Topology.of(org.spec)
    await org.start()
    stopping: asyncio.Task[int] | None = None
    try:
        await org.send("sink", {"n": 0})
        await org.confirmed()
        with caplog.at_level(logging.WARNING, logger="aiormq.connection"):
            await asyncio.to_thread(private_broker.ctl, "set_vm_memory_high_watermark",
                                    "0.000001")  # the alarm
            for n in range(1, sent):
                await org.send("sink", {"n": n})
            await wait_for(lambda: "was blocked by" in caplog.text,
                           "the broker blocked the publishing connection")
        assert org.stats()["broker"]["published"] == 1  # the others wait for a confirm
        stopping = asyncio.create_task(org.stop(drain_timeout=1))
        done, _ = await asyncio.wait({stopping}, timeout=BACKSTOP)
        assert done, "the stop waited past its drain timeout for a broker reading nothing"
    finally:
        await asyncio.to_thread(private_broker.ctl, "set_vm_memory_high_watermark",
                                "0.4")  # RabbitMQ's default
        if stopping is not None:
            await stopping  # ends once the broker reads again, if not before
        elif org.state == "running":
            await org.stop(drain_timeout=2)
        await AmqpBackend(private_broker.url).destroy(topology)
    assert org.state == "stopped"
    published = org.stats()["broker"]["published"]
    letters = Counter(str(letter.reason) for letter in org.dead_letters)
    assert set(letters) <= {"broker error"}
    assert published + letters["broker error"] == sent  # each confirmed or dead-lettered
