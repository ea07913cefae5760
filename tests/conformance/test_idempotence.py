"""Idempotent ids and the dedupe window, on every backend.

A spore handled again (a broker's redelivery, a journal's replay, a retry) gives what
its handler produces the same ids as the first time; an agent with ``dedupe`` drops a
copy of a spore it handled within the window. See ``sporeflow.steps.ids``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Spore
from sporeflow.steps.ids import derived_id

from .harness import Harness, wait_for


class Clock:
    """The organism's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def sink_of(seen: list[tuple[str, str]]) -> Any:
    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append((spore.knowledge["kind"], spore.id))

    return sink


async def test_a_spore_handled_again_gives_its_output_the_same_ids(backend: Harness) -> None:
    seen: list[tuple[str, str]] = []
    asked: list[str] = []
    answers: list[str] = []

    async def maker(spore: Spore, ctx: Any) -> list[dict[str, Any]]:
        await ctx.send("sink", {"kind": "sent"})
        await ctx.broadcast({"kind": "broadcast"}, channel="news")
        answers.append((await ctx.request("echo", {"kind": "asked"}, timeout=10)).id)
        return [{"kind": "returned-0"}, {"kind": "returned-1"}]

    async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
        asked.append(spore.id)
        return {"kind": "answer"}

    data = {"channels": {"news": {}},
            "agents": {"maker": {"handler": maker, "emit": {"to": "sink"}},
                       "echo": {"handler": echo},
                       "sink": {"handler": sink_of(seen), "subscribe": ["news"]}}}
    async with backend.running(data) as org:
        for _ in range(2):  # the same spore twice, as a redelivery brings it again
            await org.send("maker", {"n": 1}, id="parent-1")
            await backend.quiet(org)
    first, again = sorted(seen[:4]), sorted(seen[4:])
    assert first == again
    assert dict(first) == {"sent": derived_id("parent-1", "maker", "s0"),
                           "broadcast": derived_id("parent-1", "maker", "s1"),
                           "returned-0": derived_id("parent-1", "maker", 0),
                           "returned-1": derived_id("parent-1", "maker", 1)}
    # Requests keep unguessable ids; their responses are derived from them.
    assert len(set(asked)) == 2
    assert answers == [derived_id(request, "echo", 0) for request in asked]
    assert org.stats()["totals"]["dead_letters"] == 0


async def test_a_retried_attempt_sends_with_the_ids_of_the_first(backend: Harness) -> None:
    seen: list[tuple[str, str]] = []

    async def flaky(spore: Spore, ctx: Any) -> dict[str, Any]:
        await ctx.send("sink", {"kind": f"try {ctx.attempt}"})
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return {"kind": "returned"}

    data = {"agents": {"flaky": {"handler": flaky, "emit": {"to": "sink"},
                                 "retry": {"attempts": 2, "backoff": "1ms"}},
                       "sink": {"handler": sink_of(seen)}}}
    async with backend.running(data) as org:
        parent = await org.send("flaky", {})
        await backend.quiet(org)
    assert sorted(seen) == [("returned", derived_id(parent.id, "flaky", 0)),
                            ("try 1", derived_id(parent.id, "flaky", "s0")),
                            ("try 2", derived_id(parent.id, "flaky", "s0"))]


async def test_a_successor_handling_what_a_dead_process_left_repeats_its_ids(
        backend: Harness, tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    first_life = [True]

    async def streamer(spore: Spore, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"kind": "yielded-0"}
        await ctx.send("sink", {"kind": "sent"})
        if first_life[0]:
            await asyncio.Event().wait()  # the process dies here
        yield {"kind": "yielded-1"}

    data = {"agents": {"streamer": {"handler": streamer, "emit": {"to": "sink"}},
                       "sink": {"handler": sink_of(seen)}}}
    org = backend.organism(data, journal=tmp_path / "journal.db")
    await org.start()
    parent = await org.send("streamer", {})
    await wait_for(lambda: len(seen) == 2)
    await org.stop(drain_timeout=0)  # its parent is left unacked, or pending in the journal
    first_life[0] = False
    successor = backend.successor(org)
    async with successor.running():
        await wait_for(lambda: len(seen) == 5)
        await backend.quiet(successor)
    yielded, sent = ("yielded-0", derived_id(parent.id, "streamer", 0)), (
        "sent", derived_id(parent.id, "streamer", "s0"))
    assert sorted(seen) == sorted([yielded, sent, yielded, sent,
                                   ("yielded-1", derived_id(parent.id, "streamer", 1))])


async def test_a_copy_within_the_dedupe_window_is_dropped_counted_and_acked(
        backend: Harness) -> None:
    clock = Clock()
    handled: list[str] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        handled.append(spore.id)

    data = {"agents": {"sink": {"handler": sink, "dedupe": "10m"}}}
    async with backend.running(data, now=clock) as org:
        for _ in range(2):  # two copies back to back, as a redelivery after a crash
            await org.send("sink", {"n": 1}, id="copy-1")
        await backend.quiet(org)
        clock.advance(9 * 60)
        await org.send("sink", {"n": 1}, id="copy-1")
        await backend.quiet(org)
        assert handled == ["copy-1"]
        clock.advance(2 * 60)  # 11 minutes after it was handled: no longer a copy
        await org.send("sink", {"n": 1}, id="copy-1")
        await backend.quiet(org)
        await org.send("sink", {"n": 2}, id="other")
        await backend.quiet(org)
    assert handled == ["copy-1", "copy-1", "other"]
    stats = org.stats()
    agent = stats["agents"]["sink"]
    assert (agent["received"], agent["handled"], agent["deduplicated"]) == (5, 3, 2)
    assert stats["totals"]["dead_letters"] == 0
    assert stats["totals"]["held"] == 0
    if backend.brokered:  # every copy is acked, the dropped ones too
        assert stats["broker"]["acked"] == 5
