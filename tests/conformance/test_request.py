"""Request and response, from outside and between handlers, on every backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.pipeline import HandlerError, RequestTimeout, Spore, SporeType

from .harness import BACKSTOP, Harness, wait_for


async def square(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"square": spore.knowledge["n"] ** 2}


async def test_request_from_outside_is_answered_with_a_response(backend: Harness) -> None:
    async with backend.running({"agents": {"squarer": {"handler": square}}}) as org:
        answers = await asyncio.gather(*(org.request("squarer", {"n": n}, timeout=10)
                                         for n in range(10)))
    assert [a.knowledge["square"] for a in answers] == [n * n for n in range(10)]
    assert {(a.spore_type, a.from_agent, a.to_agent) for a in answers} == {
        (SporeType.RESPONSE, "squarer", "system")}
    assert org.stats()["totals"]["dead_letters"] == 0


async def test_handlers_request_each_other_with_concurrency_one_without_deadlock(
        backend: Harness) -> None:
    async def asker(spore: Spore, ctx: Any) -> dict[str, Any]:
        answer = await ctx.request("squarer", {"n": spore.knowledge["n"]}, timeout=10)
        return {"asked": spore.knowledge["n"], "square": answer.knowledge["square"]}

    async def countdown(spore: Spore, ctx: Any) -> dict[str, Any]:
        n = spore.knowledge["n"]
        if n == 0:
            return {"depth": 0}
        inner = await ctx.request("countdown", {"n": n - 1}, timeout=10)  # itself
        return {"depth": inner.knowledge["depth"] + 1}

    data = {"agents": {"asker": {"handler": asker}, "squarer": {"handler": square},
                       "countdown": {"handler": countdown}}}
    async with backend.running(data) as org:
        nested = await asyncio.gather(*(org.request("asker", {"n": n}, timeout=10)
                                        for n in range(5)))
        own = await org.request("countdown", {"n": 1}, timeout=10)
    assert [a.knowledge for a in nested] == [{"asked": n, "square": n * n} for n in range(5)]
    assert own.knowledge == {"depth": 1}


async def test_request_to_a_failing_handler_raises_handler_error_naming_the_cause(
        backend: Harness) -> None:
    async def broken(spore: Spore, ctx: Any) -> None:
        raise ValueError("no such thing")

    async with backend.running({"agents": {"broken": {"handler": broken}}}) as org:
        with pytest.raises(HandlerError, match="no such thing") as caught:
            await org.request("broken", {}, timeout=15)
    assert caught.value.agent == "broken"
    assert [d.reason for d in org.dead_letters] == ["handler failed"]


async def test_a_response_after_the_timeout_is_dead_lettered_as_late(backend: Harness) -> None:
    gate = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> dict[str, Any]:
        await gate.wait()
        return {"late": True}

    async with backend.running({"agents": {"slow": {"handler": slow}}}) as org:
        with pytest.raises(RequestTimeout, match="'slow'"):
            await org.request("slow", {}, timeout=0.2)
        gate.set()
        await backend.quiet(org)
        await wait_for(lambda: len(org.dead_letters) == 1)
    assert [d.reason for d in org.dead_letters] == ["late response"]


async def test_an_agent_with_concurrency_one_answers_requests_nested_deeper_than_two(
        backend: Harness) -> None:
    # Found by the random-organism stress test (tests/random_organisms.py): over a broker,
    # a hosted agent's queue was consumed with a fixed prefetch (2 x concurrency), so a
    # third nested request to the same agent stayed on the broker behind the unacked
    # deliveries whose handlers waited on it, until its timeout; embedded, it is answered.
    async def countdown(spore: Spore, ctx: Any) -> dict[str, Any]:
        n = spore.knowledge["n"]
        if n == 0:
            return {"depth": 0}
        inner = await ctx.request("countdown", {"n": n - 1}, timeout=BACKSTOP)
        return {"depth": inner.knowledge["depth"] + 1}

    data = {"agents": {"countdown": {"handler": countdown, "concurrency": 1}}}
    async with backend.running(data) as org:
        answer = await asyncio.wait_for(org.request("countdown", {"n": 4}, timeout=BACKSTOP),
                                        BACKSTOP / 2)
    assert answer.knowledge == {"depth": 4}
