from __future__ import annotations

import asyncio
import random
from typing import Any

from sporeflow.config import Retry
from sporeflow.steps import AgentLane, LanePolicy, Spore, backoff_delay, dispatch
from sporeflow.steps.runners import RunnerPool

from .conftest import aiter_of, collect


def lane(invoke: Any, policy: LanePolicy | None = None, *, name: str = "a",
         pool: RunnerPool | None = None, **hooks: Any) -> AgentLane:
    return AgentLane(name, invoke, lambda result, spore: [result], policy or LanePolicy(),
                     on_done=hooks.get("on_done", lambda spore, replies, seconds: None),
                     on_failed=hooks.get("on_failed", lambda *args: None), pool=pool)


async def test_quick_handlers_share_one_worker_task_per_burst() -> None:
    tasks: set[asyncio.Task[Any] | None] = set()

    async def invoke(spore: Spore, attempt: int) -> Any:
        tasks.add(asyncio.current_task())
        return spore.knowledge

    done: list[Any] = []
    agent = lane(invoke, on_done=lambda spore, replies, seconds: done.extend(replies))
    for i in range(100):
        agent.deliver(Spore(knowledge={"i": i}))
    await agent.wait_quiet()
    assert [d["i"] for d in done] == list(range(100))
    assert len(tasks) == 1
    assert (agent.received, agent.handled, agent.busy) == (100, 100, 0)


async def test_concurrency_caps_running_handlers() -> None:
    running, peak = 0, 0
    gate, three_running = asyncio.Event(), asyncio.Event()

    async def invoke(spore: Spore, attempt: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        await gate.wait()
        running -= 1

    agent = lane(invoke, LanePolicy(concurrency=3))
    for _ in range(10):
        agent.deliver(Spore(knowledge={}))
    assert agent.queued == 10
    await asyncio.wait_for(three_running.wait(), 5)
    assert (agent.busy, agent.queued) == (3, 7)
    gate.set()
    await agent.wait_quiet()
    assert peak == 3
    assert agent.handled == 10


async def test_lent_slot_lets_another_spore_run() -> None:
    first_waiting = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def invoke(spore: Spore, attempt: int) -> None:
        name = spore.knowledge["name"]
        if name == "first":
            async def waiting() -> None:
                first_waiting.set()
                await release.wait()

            await agent.lent_while(waiting())
        else:
            release.set()
        order.append(name)

    agent = lane(invoke, LanePolicy(concurrency=1))
    agent.deliver(Spore(knowledge={"name": "first"}))
    await first_waiting.wait()
    agent.deliver(Spore(knowledge={"name": "second"}))
    await agent.wait_quiet()
    assert order == ["second", "first"]
    assert agent.busy == 0


async def test_last_failure_goes_to_on_failed_with_attempts() -> None:
    async def invoke(spore: Spore, attempt: int) -> None:
        raise ValueError(f"bad {attempt}")

    failures: list[tuple[str, str, int]] = []
    agent = lane(invoke, on_failed=lambda spore, reason, error, attempts: failures.append(
        (reason, str(error), attempts)))
    agent.deliver(Spore(knowledge={}))
    await agent.wait_quiet()
    assert failures == [("handler failed", "bad 1", 1)]
    assert agent.failed == 1


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    retry = Retry(attempts=10, backoff=1.0, max_backoff=5.0)
    rng = random.Random(7)
    delays = [backoff_delay(retry, attempt, rng) for attempt in range(1, 6)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(5.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling


async def test_dispatch_operator_hands_deliveries_to_lanes_and_rejects_unknown() -> None:
    handled: list[str] = []

    async def invoke(spore: Spore, attempt: int) -> None:
        handled.append(spore.knowledge["to"])

    lanes = {"a": lane(invoke)}
    rejected: list[str] = []
    a, b = Spore(knowledge={"to": "a"}), Spore(knowledge={"to": "b"})
    out = await collect(dispatch.raw(aiter_of([(a, ("a",)), (b, ("b",))]), lanes=lambda: lanes,
                                     on_reject=lambda spore, reason, error: rejected.append(
                                         reason)))
    await lanes["a"].wait_quiet()
    assert len(out) == 1
    assert handled == ["a"]
    assert rejected == ["unknown agent"]


def _no_reject(spore: Spore, reason: str, error: BaseException) -> None:
    raise AssertionError(f"{spore.id} refused: {reason}")


async def test_a_handler_that_waits_holds_up_neither_the_chain_nor_other_lanes() -> None:
    pool = RunnerPool()
    gate, b_done = asyncio.Event(), asyncio.Event()

    async def waits(spore: Spore, attempt: int) -> None:
        await gate.wait()

    async def quick(spore: Spore, attempt: int) -> None:
        b_done.set()

    lanes = {"a": lane(waits, pool=pool), "b": lane(quick, name="b", pool=pool)}
    batch = [(Spore(knowledge={}), ("a",)), (Spore(knowledge={}), ("b",))]
    out = await collect(dispatch.raw(aiter_of(batch), lanes=lambda: lanes,
                                     on_reject=_no_reject))
    assert out == [batch]  # the chain went on while a's handler waits
    await asyncio.wait_for(b_done.wait(), 5)
    assert lanes["a"].busy == 1
    gate.set()
    await asyncio.wait_for(lanes["a"].wait_quiet(), 5)
    assert (lanes["a"].handled, lanes["b"].handled) == (1, 1)
    await pool.close()
