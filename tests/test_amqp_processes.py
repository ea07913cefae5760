"""One organism over RabbitMQ in several ``sporeflow run --agents ...`` processes.

The relay organism (tests/organisms/amqp_relay) is copied under a unique name, so
that each test has its own exchange and queues, deleted after. The test process
itself sends through the broker with an organism hosting no agent. It waits on
the processes' output files, never on a clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology

from .conformance.harness import AMQP_URL, broker_reachable

pytestmark = pytest.mark.amqp

RELAY = Path(__file__).parent / "organisms" / "amqp_relay"
BACKSTOP = 25.0
SPORES = 1000  # each makes five spores on the broker (a request and its response too)
CRUNCHED = 2000


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the relay organism under a unique name; its output folder in RELAY_OUT."""
    why = broker_reachable()
    if why is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why}); start it "
                    f"(rabbitmq-server -detached, as .ci/run does)")
    name = f"relay-{uuid.uuid4().hex[:10]}"
    text = (RELAY / "organism.yaml").read_text().replace("{name: relay}", f"{{name: {name}}}")
    (tmp_path / "organism.yaml").write_text(text)
    shutil.copy(RELAY / "relay_handlers.py", tmp_path / "relay_handlers.py")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("RELAY_OUT", str(out))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "organism.yaml"


@pytest.fixture
async def client(relay: Path) -> AsyncIterator[Organism]:
    """The relay in this process, hosting no agent: it only sends (and awaits responses)."""
    organism = Organism.from_file(relay, backend=AMQP_URL, hosted=[])
    await organism.start()
    try:
        yield organism
    finally:
        await organism.stop(drain_timeout=5)
        await AmqpBackend(AMQP_URL).destroy(Topology.of(organism.spec))


def spawn(relay: Path, agents: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(relay), "--quiet",
         "--backend", AMQP_URL, "--agents", agents, "--drain-timeout", "10"],
        cwd=relay.parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def records(relay: Path, agent: str) -> list[dict[str, Any]]:
    """The complete lines the agents' processes wrote so far (a line still being
    written, or cut by a kill, has no newline yet and is left for later)."""
    lines = []
    for file in sorted((relay.parent / "out").glob(f"{agent}-*.jsonl")):
        text = file.read_text()
        complete = text[:text.rfind("\n") + 1]
        lines += [json.loads(line) for line in complete.splitlines() if line]
    return lines


async def wait_for(condition: Callable[[], bool], processes: list[subprocess.Popen[bytes]],
                   what: str) -> None:
    """Poll ``condition`` (the output files); fail at once if a process died."""
    deadline = time.monotonic() + BACKSTOP
    while not condition():
        for process in processes:
            if process.poll() is not None:
                _, err = process.communicate()
                raise AssertionError(f"a process exited with {process.returncode} before "
                                     f"{what}: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BACKSTOP}s: {what}")
        await asyncio.sleep(0.02)


def stop(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=BACKSTOP)
    return process.returncode, err.decode()


async def test_two_processes_exchange_spores_broadcasts_and_requests_as_embedded(
        relay: Path, client: Organism) -> None:
    processes = [spawn(relay, "source,oracle,sink,tick_a"), spawn(relay, "worker,tick_b")]
    try:
        for n in range(SPORES):
            await client.send("source", {"n": n})
        answer = await client.request("oracle", {"n": 12}, timeout=BACKSTOP)
        await wait_for(lambda: len(records(relay, "sink")) >= SPORES
                       and len(records(relay, "tick_b")) >= SPORES // 10, processes,
                       "every spore reached the sink and every tick both listeners")
    finally:
        results = [stop(process) for process in processes]
    assert [code for code, _ in results] == [0, 0], results
    distributed = {agent: records(relay, agent) for agent in ("sink", "tick_a", "tick_b")}

    # The same organism embedded, in this process, for comparison.
    for file in (relay.parent / "out").iterdir():
        file.unlink()
    embedded_org = Organism.from_file(relay, backend="memory")
    async with embedded_org.running():
        for n in range(SPORES):
            await embedded_org.send("source", {"n": n})
        await embedded_org.idle()
    embedded = {agent: records(relay, agent) for agent in ("sink", "tick_a", "tick_b")}

    assert answer.knowledge == {"square": 144}
    for agent in ("sink", "tick_a", "tick_b"):
        assert Counter(map(json.dumps, distributed[agent])) == Counter(
            map(json.dumps, embedded[agent])), agent
    assert sorted(r["n"] for r in distributed["sink"]) == list(range(SPORES))
    assert all(r["square"] == r["n"] ** 2 for r in distributed["sink"])


async def test_a_worker_killed_mid_stream_loses_nothing_its_twin_finishes(
        relay: Path, client: Organism) -> None:
    doomed, survivor = spawn(relay, "crunch"), spawn(relay, "crunch")
    try:
        for n in range(CRUNCHED):
            await client.send("crunch", {"n": n})
        lines = relay.parent / "out" / f"crunch-{doomed.pid}.jsonl"
        await wait_for(lambda: lines.exists() and len(lines.read_text().splitlines()) >= 100,
                       [doomed, survivor], "the doomed process handled 100 spores")
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=BACKSTOP)
        everything = set(range(CRUNCHED))
        await wait_for(lambda: {r["n"] for r in records(relay, "crunch")} >= everything,
                       [survivor], "every spore was handled by one process or the other")
    finally:
        code, err = stop(survivor)
        if doomed.returncode is None:
            doomed.kill()
            doomed.communicate()
    assert code == 0, err
    handled_by_doomed = len(lines.read_text().splitlines())
    assert 100 <= handled_by_doomed < CRUNCHED
    assert {r["n"] for r in records(relay, "crunch")} == set(range(CRUNCHED))
