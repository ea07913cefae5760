"""Slots lent around ``ctx.request`` stay consistent under timeouts, retries and stops.

The property test drives random handlers (working, waiting on a request with their
slot lent) against random timeouts and retries on the virtual clock, and checks the
lane's books after every turn of the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sporeflow.config import Retry
from sporeflow.steps import AgentLane, LanePolicy, Spore

from .conftest import VirtualClockLoop

Step = tuple[str, float]
# 0.1 and 0.7 are no binary fractions: sums of them round (a timer set to a + b must
# still find a due at a + b).
_durations = st.sampled_from([0.0, 0.1, 0.5, 0.7, 1.0, 1.5, 2.5])
_steps = st.lists(st.tuples(st.sampled_from(["work", "request"]), _durations), max_size=3)


class CheckedLoop(VirtualClockLoop):
    """Calls ``check`` after every turn of the loop."""

    check: Any = None

    def _run_once(self) -> None:
        super()._run_once()
        if self.check is not None:
            self.check()


def books(lane: AgentLane) -> tuple[int, int]:
    """(received, everything it became): the two sides of the lane's ledger."""
    settled = lane.handled + lane.failed + lane.in_flight + lane.queued + len(lane._timers)
    return lane.received, settled


def run_scenario(scripts: list[list[Step]], concurrency: int, timeout: float | None,
                 attempts: int, stop_at: float | None) -> tuple[AgentLane, list[Any]]:
    loop = CheckedLoop()
    errors: list[Any] = []
    violations: list[str] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def invoke(spore: Spore, attempt: int) -> None:
        for kind, seconds in spore.knowledge["steps"]:
            if kind == "work":
                await asyncio.sleep(seconds)
            else:  # what Context.request does around waiting for the response
                await lane.lent_while(asyncio.sleep(seconds))

    settled = asyncio.Event()
    total = len(scripts)

    def on_end(*_: Any) -> None:
        if lane.handled + lane.failed == total:
            settled.set()

    lane = AgentLane("a", invoke, lambda result, spore: [],
                     LanePolicy(concurrency, timeout, Retry(attempts=attempts, backoff=0.5)),
                     on_done=on_end, on_failed=on_end)

    def check() -> None:
        received, accounted = books(lane)
        if lane.in_flight < 0 or lane.busy < 0 or received != accounted:
            violations.append(f"t={loop.time()}: in_flight={lane.in_flight} busy={lane.busy}"
                              f" received={received} accounted={accounted}")

    async def main() -> None:
        for script in scripts:
            lane.deliver(Spore(knowledge={"steps": script}))
        if stop_at is not None:
            await asyncio.sleep(stop_at)
            lane.pause()
            await lane.cancel("shutdown")
            # What a real stop dead-letters: counted as the organism's ledger would.
            lane.failed += len(lane.drain_queue()) + len(lane.cancel_timers())
            on_end()
        try:
            await asyncio.wait_for(settled.wait(), 10_000)
        finally:
            lane.pause()
            await lane.cancel("shutdown")
            await lane.pool.close()

    loop.check = check
    try:
        loop.run_until_complete(main())
    finally:
        loop.check = None
        loop.close()
    return lane, errors + violations


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts=st.lists(_steps, min_size=1, max_size=8), concurrency=st.integers(1, 3),
       timeout=st.sampled_from([None, 1.0, 2.0]), attempts=st.integers(1, 3),
       stop_at=st.sampled_from([None, None, 1.0, 2.5]))
def test_lent_slots_keep_the_books_under_timeouts_retries_and_stops(
        scripts: list[list[Step]], concurrency: int, timeout: float | None, attempts: int,
        stop_at: float | None) -> None:
    lane, problems = run_scenario(scripts, concurrency, timeout, attempts, stop_at)
    assert problems == []
    assert (lane.in_flight, lane.busy, lane.lent) == (0, 0, 0)
    assert lane.handled + lane.failed == len(scripts)


def test_a_cancelled_reclaim_is_never_handed_the_slot() -> None:
    """Found by the property test: a timed-out handler waiting for its slot, whose
    sibling ends in the same turn of the loop, was handed the slot after cancellation
    (InvalidStateError in the runner, ValueError in the handler, in_flight < 0)."""
    for stop_at in (None, 1.0):
        scripts: list[list[Step]] = [[("request", 0.5), ("work", 0.25)], [("work", 1.0)]]
        lane, problems = run_scenario(scripts, 1, 1.0, 1, stop_at)
        assert problems == []
        assert lane.in_flight == lane.busy == 0
        assert (lane.handled, lane.failed) == ((1, 1) if stop_at is None else (0, 2))


def test_the_wait_for_a_slot_after_a_request_is_not_the_handlers_running_time() -> None:
    # The request returns at 0.5 s; the sibling holds the only slot until 0.9 s; then
    # 0.25 s of work: 0.75 s of the handler's own time, within its 1 s timeout.
    scripts: list[list[Step]] = [[("request", 0.5), ("work", 0.25)], [("work", 0.9)]]
    lane, problems = run_scenario(scripts, 1, 1.0, 1, None)
    assert problems == []
    assert (lane.handled, lane.failed) == (2, 0)
