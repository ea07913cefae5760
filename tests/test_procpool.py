"""cpu_bound agents: handlers in worker processes, JSON across, crashed workers replaced."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import ConfigError, Organism, Spore
from sporeflow.pipeline.agents.procpool import decode_result, encode_result

FIXTURES = Path(__file__).parent / "fixtures"


async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
    return dict(spore.knowledge)


async def test_cpu_bound_handler_leaves_the_event_loop_responsive() -> None:
    organism = Organism.from_dict({
        "agents": {"cruncher": {"handler": "procpool_handlers:burn", "cpu_bound": True,
                                "concurrency": 2},
                   "echo": {"handler": echo}},
        "limits": {"process_pool": 2}}, base_dir=FIXTURES)
    async with organism.running():
        warm = await organism.request("cruncher", {"ms": 1}, timeout=60)  # start the workers
        for _ in range(8):  # about 1.6 s of pure-Python work, two spores at a time
            await organism.send("cruncher", {"ms": 200})
        round_trips = []
        for i in range(20):
            started = time.perf_counter()
            answer = await organism.request("echo", {"i": i}, timeout=5)
            round_trips.append(time.perf_counter() - started)
            assert answer.knowledge == {"i": i}
        burning_meanwhile = organism.stats()["agents"]["cruncher"]["handled"] < 9
        await organism.idle()
    assert warm.knowledge["pid"] != os.getpid()
    assert warm.knowledge["agent"] == "cruncher"
    assert burning_meanwhile  # the round trips overlapped the work
    # A responsiveness check, not a benchmark: the loop answered while the workers burned.
    assert statistics.median(round_trips) < 0.1
    pids = {spore.knowledge["pid"] for spore in organism.outbox}
    assert os.getpid() not in pids
    assert len(pids) <= 2  # limits.process_pool
    assert organism.stats()["agents"]["cruncher"]["handled"] == 9


async def test_crashed_worker_is_replaced_and_the_spore_retried() -> None:
    organism = Organism.from_dict({
        "agents": {"fragile": {"handler": "procpool_handlers:crash_first", "cpu_bound": True,
                               "retry": {"attempts": 2, "backoff": "10ms"}},
                   "once": {"handler": "procpool_handlers:crash_first", "cpu_bound": True}},
        "limits": {"process_pool": 1}}, base_dir=FIXTURES)
    async with organism.running():
        answer = await organism.request("fragile", {}, timeout=60)
        await organism.send("once", {})
        await organism.idle()
        replaced = organism._procpool.replaced
    assert answer.knowledge["attempt"] == 2
    assert replaced == 2
    stats = organism.stats()["agents"]
    assert (stats["fragile"]["retried"], stats["fragile"]["handled"]) == (1, 1)
    [letter] = list(organism.dead_letters)
    assert (letter.agent, letter.reason) == ("once", "handler failed")
    assert "the worker process running agent 'once'" in letter.error
    assert "died" in letter.error


async def test_results_cross_the_process_boundary_as_json() -> None:
    async def collect(spore: Spore, ctx: Any) -> None:
        ctx.state.setdefault("got", []).append((spore.metadata.get("kind"), spore.knowledge))

    organism = Organism.from_dict({
        "agents": {"fan": {"handler": "procpool_handlers:fan_out", "cpu_bound": True,
                           "emit": {"to": "sink"}},
                   "sink": {"handler": collect}},
        "limits": {"process_pool": 1}}, base_dir=FIXTURES)
    async with organism.running():
        await organism.send("fan", {})
        await organism.idle()
        got = organism.wiring().agents["sink"].state["got"]
    assert len(got) == 2
    assert got[0] == (None, {"n": 1})
    assert got[1][0] == "note"


def test_encoded_results_round_trip() -> None:
    spore = Spore(knowledge={"a": 1}, to_agent="x")
    for result in (None, {"a": [1, 2]}, "<a/>", [{"b": 1}, None]):
        assert decode_result(encode_result(result, "agent")) == result
    decoded = decode_result(encode_result(spore, "agent"))
    assert (decoded.id, decoded.knowledge, decoded.to_agent) == (spore.id, {"a": 1}, "x")
    with pytest.raises(Exception, match="returned a set"):
        encode_result({1, 2}, "agent")


class Stateful:
    def handle(self, spore: Spore, ctx: Any) -> None:
        return None


@pytest.mark.parametrize(("handler", "message"), [
    (echo, "must be a plain (not async) module-level function"),
    (lambda spore, ctx: None, "must be a plain (not async) module-level function"),
    (Stateful, "cannot be cpu_bound: a worker process keeps no agent instance"),
])
def test_handlers_a_worker_cannot_run_are_config_problems(handler: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="agents.a.handler: ") as caught:
        Organism.from_dict({"agents": {"a": {"handler": handler, "cpu_bound": True}}})
    assert message in str(caught.value)
