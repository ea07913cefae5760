"""A brokered stop that times out: dead_letters, stats() and ``dlq list`` tell one story.

What the stop interrupts goes back to RabbitMQ unacked, for the next consumer: it is no
dead letter in the process either (it counted 'shutdown' letters the broker never had).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import load_organism
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, broker_reachable
from .test_broker_bounds import queue_depth
from .test_broker_dlq import Made, dlq, eventually, made  # noqa: F401 (made: a fixture)

pytestmark = pytest.mark.amqp


async def test_a_brokered_stop_that_timed_out_agrees_in_memory_in_stats_and_dlq_list(
        made: Callable[[str], Made]) -> None:  # noqa: F811 (the fixture)
    org = made("")
    first = Organism.from_file(org.path)
    await first.start()
    for n in range(4):  # one runs for ever, the others wait
        await first.send("stuck", {"n": n})
    await eventually(lambda: len(org.lines("started.txt")) == 1, "the first one started")
    left = await first.stop(drain_timeout=0.5)  # the drain times out
    assert left >= 1
    stats = first.stats()
    assert list(first.dead_letters) == []
    assert stats["dead_letters"]["total"] == 0 == stats["totals"]["dead_letters"]
    assert stats["totals"]["unfinished_kept"] == left
    code, out, err = await dlq("list", str(org.path))
    assert (code, out) == (0, ""), err
    # All four are on the broker again, for the next consumer; none is dead there.
    await eventually(lambda: queue_depth(org.topology.queue("stuck")), "requeued")
    assert await queue_depth(org.topology.queue("stuck")) == 4
    assert await queue_depth(org.topology.dead_letter_queue) == 0


HANDLERS = '''
import asyncio


def start(spore, ctx):
    return [{"n": 1}, {"n": 2}]


async def hang(spore, ctx):
    await asyncio.Event().wait()
'''


async def test_sporeflow_run_says_what_went_back_to_the_broker(tmp_path: Path) -> None:
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it")
    module = f"stopw_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{module}.py").write_text(HANDLERS)
    path = tmp_path / "organism.yaml"
    path.write_text(f"organism: {{name: stopb-{uuid.uuid4().hex[:10]}, backend: '{AMQP_URL}'}}\n"
                    f"agents:\n"
                    f"  starter: {{handler: {module}:start, boot: {{}}, emit: {{to: stuck}}}}\n"
                    f"  stuck: {{handler: {module}:hang}}\n")
    topology = Topology.of(load_organism(path))
    try:
        run = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(path), "--quiet",
            "--no-control", "--max-duration", "2s", "--drain-timeout", "0.5s"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "could not finish: " in run.stderr
        line = next(line for line in run.stderr.splitlines() if "could not finish" in line)
        assert line.endswith("went back to the broker for the next consumer, 0 were "
                             "dead-lettered as 'shutdown'")
        assert await queue_depth(topology.queue("stuck")) == 2
    finally:
        await AmqpBackend(AMQP_URL).destroy(topology)


async def test_over_a_broker_a_handler_whose_task_is_cancelled_does_not_stall_its_agent(
) -> None:
    # Before: its spore was a 'shutdown' letter though nothing stopped, which leaves the
    # delivery unacked: with concurrency 1 (prefetch 2), two of them held the agent for
    # good, and came back to stall it again at the next start.
    handled: list[Any] = []

    async def bad(spore: Spore, ctx: Any) -> None:
        if spore.knowledge.get("cancel"):
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0.1)
        handled.append(spore.knowledge)

    name = f"fixhandlers-{uuid.uuid4().hex[:10]}"
    org = Organism.from_dict({"organism": {"name": name},
                              "agents": {"bad": {"handler": bad, "concurrency": 1}}},
                             backend=AMQP_URL)
    try:
        async with org.running(drain_timeout=3):
            for i in range(2):
                await org.send("bad", {"cancel": True, "i": i})
            for i in range(3):
                await org.send("bad", {"n": i})
            await eventually(lambda: len(handled) >= 3, "the three others handled")
            await eventually(lambda: len(org.dead_letters) >= 2, "two dead letters")
        assert [k.get("n") for k in handled] == [0, 1, 2]
        assert [d.reason for d in org.dead_letters] == ["handler failed"] * 2
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(org.spec))
