"""Retries and dead letters, on every backend."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sporeflow.pipeline import Spore

from .harness import Harness


async def test_a_failing_handler_is_retried_then_dead_lettered_with_its_attempts(
        backend: Harness) -> None:
    tries: Counter[int] = Counter()

    async def flaky(spore: Spore, ctx: Any) -> None:
        n = spore.knowledge["n"]
        tries[n] += 1
        if n == 1 and ctx.attempt < 3:
            raise RuntimeError("not yet")
        if n == 2:
            raise RuntimeError("never")

    data = {"agents": {"flaky": {"handler": flaky,
                                 "retry": {"attempts": 3, "backoff": "1ms"}}}}
    async with backend.running(data) as org:
        for n in range(3):
            await org.send("flaky", {"n": n})
        await backend.quiet(org)
    assert tries == {0: 1, 1: 3, 2: 3}
    stats = org.stats()["agents"]["flaky"]
    assert (stats["handled"], stats["failed"], stats["retried"]) == (2, 1, 4)
    [letter] = org.dead_letters
    assert (letter.reason, letter.agent, letter.attempts, letter.spore.knowledge) == (
        "handler failed", "flaky", 3, {"n": 2})
    assert "RuntimeError: never" in letter.error


async def test_a_handler_exception_never_stops_the_others(backend: Harness) -> None:
    done: list[int] = []

    async def picky(spore: Spore, ctx: Any) -> None:
        if spore.knowledge["n"] % 3 == 0:
            raise ValueError(f"{spore.knowledge['n']} is a multiple of three")
        done.append(spore.knowledge["n"])

    async with backend.running({"agents": {"picky": {"handler": picky}}}) as org:
        for n in range(1, 31):
            await org.send("picky", {"n": n})
        await backend.quiet(org)
    assert done == [n for n in range(1, 31) if n % 3]
    assert sorted(d.spore.knowledge["n"] for d in org.dead_letters) == list(range(3, 31, 3))
    assert org.stats()["dead_letters"]["by_reason"] == {"handler failed": 10}
