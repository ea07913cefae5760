"""A keyed lane on its own (``steps.keyed``): never two runs of one key at once, and its
books balance at every turn of the loop, under lent slots, timeouts, retries and stops.

As ``test_slots.py`` does for the plain lane, a property test drives random handlers on
the virtual clock and checks after every turn; here each spore also has a random key.
"""

from __future__ import annotations

import asyncio
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sporeflow.config import Retry
from sporeflow.config.errors import DeliveryError
from sporeflow.steps import LanePolicy, Spore
from sporeflow.steps.keyed import KeyedLane, key_reader
from sporeflow.steps.keytable import KeyTable

from .test_slots import CheckedLoop, Step, _steps


class Plain:
    """Holders that are plain dicts."""

    def make(self, key: str, state: Any) -> dict[str, Any]:
        return dict(state or {})

    def save(self, holder: dict[str, Any]) -> Any:
        return holder

    def load(self, holder: dict[str, Any], state: Any) -> None:
        holder.update(state)


def run_keyed(scripts: list[tuple[str, list[Step]]], concurrency: int,
              timeout: float | None, attempts: int, stop_at: float | None,
              idle: float = 1.0) -> tuple[KeyedLane, list[Any], list[tuple[str, int]]]:
    loop = CheckedLoop()
    problems: list[Any] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    running: set[str] = set()
    started: list[tuple[str, int]] = []

    async def invoke(spore: Spore, attempt: int) -> None:
        key = spore.knowledge["user"]
        if key in running:
            problems.append(f"two runs of key {key!r} at once")
        running.add(key)
        started.append((key, spore.knowledge["n"]))
        try:
            for kind, seconds in spore.knowledge["steps"]:
                if kind == "work":
                    await asyncio.sleep(seconds)
                else:  # what Context.request does around waiting for the response
                    await lane.lent_while(asyncio.sleep(seconds))
        finally:
            running.discard(key)

    settled = asyncio.Event()

    def on_end(*_: Any) -> None:
        if lane.handled + lane.failed == len(scripts):
            settled.set()

    keys = KeyTable("a", Plain(), idle=idle, limit=100)
    lane = KeyedLane("a", invoke, lambda result, spore: [],
                     LanePolicy(concurrency, timeout, Retry(attempts=attempts, backoff=0.5)),
                     on_done=on_end, on_failed=on_end, key_of=key_reader("knowledge.user", "a"),
                     keys=keys)

    def check() -> None:
        settled_count = (lane.handled + lane.failed + lane.in_flight + lane.queued
                         + len(lane._timers))
        if lane.in_flight < 0 or lane.busy < 0 or lane.parked < 0 or (
                lane.received != settled_count) or lane.backlog.size != lane.queued:
            problems.append(f"t={loop.time()}: in_flight={lane.in_flight} busy={lane.busy} "
                            f"parked={lane.parked} received={lane.received} "
                            f"accounted={settled_count}")

    async def main() -> None:
        for n, (key, script) in enumerate(scripts):
            lane.deliver(Spore(knowledge={"user": key, "n": n, "steps": script}))
        if stop_at is not None:
            await asyncio.sleep(stop_at)
            lane.pause()
            await lane.cancel("shutdown")
            lane.failed += len(lane.drain_queue()) + len(lane.cancel_timers())
            on_end()
        try:
            await asyncio.wait_for(settled.wait(), 10_000)
        finally:
            lane.pause()
            await lane.cancel("shutdown")
            await lane.pool.close()
            keys.close()

    loop.check = check
    try:
        loop.run_until_complete(main())
    finally:
        loop.check = None
        loop.close()
    return lane, problems, started


_keyed_scripts = st.lists(st.tuples(st.sampled_from("xyz"), _steps), min_size=1, max_size=10)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts=_keyed_scripts, concurrency=st.integers(1, 3),
       timeout=st.sampled_from([None, 1.0, 2.0]), attempts=st.integers(1, 3),
       stop_at=st.sampled_from([None, None, 1.0, 2.5]), idle=st.sampled_from([0.3, 0.5, 1.0]))
def test_one_run_per_key_and_the_books_balance_under_timeouts_retries_and_stops(
        scripts: list[tuple[str, list[Step]]], concurrency: int, timeout: float | None,
        attempts: int, stop_at: float | None, idle: float) -> None:
    lane, problems, _ = run_keyed(scripts, concurrency, timeout, attempts, stop_at, idle)
    assert problems == []
    assert (lane.in_flight, lane.busy, lane.lent, lane.parked) == (0, 0, 0, 0)
    assert lane.handled + lane.failed == len(scripts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts=_keyed_scripts, concurrency=st.integers(1, 4))
def test_without_failures_each_key_runs_its_spores_in_arrival_order(
        scripts: list[tuple[str, list[Step]]], concurrency: int) -> None:
    lane, problems, started = run_keyed(scripts, concurrency, None, 1, None)
    assert problems == []
    for key in "xyz":
        order = [n for k, n in started if k == key]
        assert order == sorted(order)
    assert lane.handled == len(scripts)


def test_the_key_is_read_as_plain_text_and_anything_else_is_refused_with_why() -> None:
    class Plan(StrEnum):
        GOLD = "gold"

    class Level(IntEnum):
        HIGH = 3

    read = key_reader("knowledge.user.id", "a")
    assert read(Spore(knowledge={"user": {"id": "u1"}})) == "u1"
    assert read(Spore(knowledge={"user": {"id": 7}})) == "7"
    assert read(Spore(knowledge={"user": {"id": Plan.GOLD}})) == "gold"
    assert read(Spore(knowledge={"user": {"id": Level.HIGH}})) == "3"
    for knowledge, why in (({"user": "u1"}, "it has no knowledge.user.id"),
                           ({"user": ["id"]}, "it has no knowledge.user.id"),
                           ({}, "it has no knowledge.user"),
                           ({"user": {"id": None}}, "the key is a NoneType"),
                           ({"user": {"id": 1.5}}, "the key is a float"),
                           ({"user": {"id": ""}}, "0 characters long")):
        with pytest.raises(DeliveryError, match=why) as caught:
            read(Spore(knowledge=knowledge))
        assert caught.value.reason == "no key"
    assert key_reader("from_agent", "a")(Spore(knowledge={}, from_agent="bob")) == "bob"


def test_an_idle_key_is_evicted_when_its_timer_fires_whatever_the_rounding(
        virtual: Any) -> None:
    # Released at 0.1 with idle 0.5: the timer fires at 0.1 + 0.5 = 0.6, where
    # 0.6 - 0.5 < 0.1 in floating point. The sweep judged the key by the second form,
    # found it not yet due, and armed the same timer again: on a virtual clock, which
    # moves only when nothing is ready, forever.
    async def main(loop: Any) -> tuple[int, float, dict[str, int]]:
        keys = KeyTable("a", Plain(), idle=0.5, limit=10)
        fired = 0
        settled = asyncio.Event()
        on_timer = keys._on_timer

        def counted() -> None:
            nonlocal fired
            fired += 1
            if fired > 100:  # the bug: give up rather than spin forever
                keys.close()
            else:
                on_timer()
            if fired > 100 or not keys.live:
                settled.set()

        keys._on_timer = counted  # type: ignore[method-assign]
        await asyncio.sleep(0.1)  # the virtual clock's time of release
        keys.acquire("k")["n"] = 1
        keys.release("k")
        await asyncio.wait_for(settled.wait(), 10)
        return fired, loop.time(), keys.stats()

    fired, now, stats = virtual(main)
    assert fired == 1
    assert now == pytest.approx(0.6, abs=0.02)
    assert (stats["live"], stats["kept"], stats["evicted"]) == (0, 1, 1)
