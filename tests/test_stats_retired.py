"""Totals count what every agent did, those a reload or ``remove_agent`` took away too."""

from __future__ import annotations

import asyncio
from typing import Any

from sporeflow.pipeline import Organism


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
