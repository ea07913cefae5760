"""Totals count what every agent did, those a reload or ``remove_agent`` took away too."""

from __future__ import annotations

import asyncio
from typing import Any

from sporeflow.pipeline import Organism, Spore


async def _fine(spore: Any, ctx: Any) -> None:
    return None


async def _broken(spore: Any, ctx: Any) -> None:
    raise ValueError("broken")


def test_totals_keep_the_counts_of_a_removed_agent() -> None:
    async def scenario() -> None:
        organism = Organism.from_dict({"agents": {
            "kept": {"handler": _fine},
            "gone": {"handler": _fine},
            "bad": {"handler": _broken, "retry": {"attempts": 2, "backoff": "1ms"}},
        }})
        async with organism.running():
            for n in range(3):
                await organism.send("kept", {"n": n})
            for n in range(4):
                await organism.send("gone", {"n": n})
            await organism.send("bad", {"n": 0})
            await organism.idle()
            before = organism.stats()["totals"]
            assert (before["received"], before["handled"], before["failed"],
                    before["retried"]) == (8, 7, 1, 1)
            report = await organism.remove_agent("gone")
            assert report.ok
            assert list(report.removed) == ["gone"]
            report = await organism.remove_agent("bad")
            assert report.ok
            await organism.send("kept", {"n": 3})
            await organism.idle()
            totals = organism.stats()["totals"]
            assert "gone" not in organism.stats()["agents"]  # labels: declared agents only
            # What the removed agents did stays counted: totals never go down.
            assert (totals["received"], totals["handled"], totals["failed"],
                    totals["retried"]) == (9, 8, 1, 1)
            assert totals["received"] == (totals["handled"] + totals["failed"]
                                          + totals["deduplicated"])

    asyncio.run(scenario())


def test_a_new_run_counts_from_zero_after_a_removal() -> None:
    async def scenario() -> None:
        organism = Organism.from_dict({"agents": {"kept": {"handler": _fine},
                                                  "gone": {"handler": _fine}}})
        async with organism.running():
            await organism.send("gone", {"n": 0})
            await organism.idle()
            assert (await organism.remove_agent("gone")).ok
            assert organism.stats()["totals"]["handled"] == 1
        async with organism.running():
            await organism.send("kept", {"n": 1})
            await organism.idle()
            totals = organism.stats()["totals"]
            assert (totals["received"], totals["handled"]) == (1, 1)

    asyncio.run(scenario())


def test_a_removed_agents_lane_is_not_kept_once_it_has_settled() -> None:
    """Found by review: ``Retired`` keeps each removed agent's whole AgentLane (its
    handler and what it closes over, its mailbox, its dedupe window) for the rest of the
    run, to read five counters off it. A program that adds and removes agents as it goes
    (``add_agent``/``remove_agent`` per job) holds every lane it ever had: memory grows
    without bound. Once a lane has settled what it held, its counts suffice."""
    import gc
    import weakref

    class Job:  # a handler holding a job's state, as a program's would
        async def __call__(self, spore: Any, ctx: Any) -> None:
            return None

    async def scenario() -> list[weakref.ref[Any]]:
        organism = Organism.from_dict({"agents": {"kept": {"handler": _fine}}})
        lanes: list[weakref.ref[Any]] = []
        async with organism.running():
            for job in range(5):
                handler = Job()
                await organism.add_agent("job", {"handler": handler})
                await organism.send("job", {"n": job})
                await organism.idle()
                lanes.append(weakref.ref(handler))
                del handler
                assert (await organism.remove_agent("job")).ok
                await organism.idle()
            gc.collect()
            assert organism.stats()["totals"]["handled"] == 5  # the counts stay
            return [lane for lane in lanes if lane() is not None]

    # A parked runner's last ``lane`` local may hold one or two for a while (at most
    # RunnerPool.max_idle): a bound. Retired holds all of them, 5 here, and more each job.
    assert len(asyncio.run(scenario())) <= 2


def test_a_copy_dropped_once_is_counted_once_after_remove_add_remove() -> None:
    """Found by review: an agent's Dedupe is shared by name across its lanes in a run
    (AgentBuilder.dedupes), and Retired.count skips a retired lane's 'deduplicated' only
    while its name is back in the wiring. Removed, added back, removed again: two retired
    lanes share one Dedupe, and both are summed; totals.deduplicated goes from 1 to 2
    with no copy dropped since."""

    async def scenario() -> list[int]:
        organism = Organism.from_dict({"agents": {
            "kept": {"handler": _fine}, "job": {"handler": _fine, "dedupe": "10m"}}})
        counts = []
        async with organism.running():
            for _ in range(2):  # the second is a copy, dropped
                await organism.submit(Spore(knowledge={}, to_agent="job", id="same-id"))
                await organism.idle()
            counts.append(organism.stats()["totals"]["deduplicated"])
            assert (await organism.remove_agent("job")).ok
            assert (await organism.add_agent("job", {"handler": _fine, "dedupe": "10m"})).ok
            assert (await organism.remove_agent("job")).ok
            await organism.idle()
            counts.append(organism.stats()["totals"]["deduplicated"])
        return counts

    assert asyncio.run(scenario()) == [1, 1]
