"""The run's closing summary: a slow run's rate reads as what it is, not as 0."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.observe.summary import render_summary


@pytest.mark.parametrize(("elapsed", "rate"), [(33.56, "(0.48 spores/s)"),
                                                 (4.0, "(4 spores/s)"),
                                                 (0.004, "(4,000 spores/s)")])
async def test_the_rate_keeps_two_figures_below_ten(elapsed: float, rate: str) -> None:
    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"agents": {"sink": {"handler": sink}}})
    async with org.running():
        for n in range(16):
            await org.send("sink", {"n": n})
        await org.idle()
        stats = org.stats()
    last = render_summary(stats, elapsed).splitlines()[-1]
    assert last.startswith(f"16 spores handled in {elapsed:.2f}s {rate};")


async def test_a_process_hosting_some_agents_lists_only_those() -> None:
    # Found by a new user: with --agents, the summary listed every agent of the file, those
    # of other processes with zeros, which read as work lost.
    from sporeflow.pipeline.broker.memory_backend import MemoryBackend

    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"organism": {"name": "partly"},
                              "agents": {"here": {"handler": sink},
                                         "elsewhere": {"handler": sink}}},
                             backend=MemoryBackend(), hosted=["here"])
    async with org.running():
        await org.send("here", {"n": 1})
        await org.idle()
        stats = org.stats()
    names = [line.split()[0] for line in render_summary(stats, 1.0).splitlines()[2:]
             if line.strip() and not line[0].isdigit()]
    assert "here" in names
    assert "elsewhere" not in names
