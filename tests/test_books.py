"""The books: counts agree with what happened, balance, and never go down.

Each test drives one way a spore ends and checks what ``stats()`` (and so the
Prometheus scrape, the summary and the dashboard, which read it) report.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Organism, Spore

from .conformance.harness import wait_for

SINK = """
async def sink(spore, ctx):
    return None
"""


def balanced(row: dict[str, Any]) -> bool:
    """An agent's row at rest: each spore it received ended one way."""
    return row["received"] == (row["handled"] + row["failed"] + row["deduplicated"]
                               + row["in_flight"] + row["queued"])


def test_the_other_channel_never_goes_down_when_a_channel_comes_back(
        tmp_path: Path, handler_modules: Callable[[str, str | None], str]) -> None:
    mod = handler_modules(SINK, None)
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"organism: {{name: books}}\nchannels: {{news: {{}}}}\n"
                     f"agents: {{a: {{handler: '{mod}:sink', subscribe: [news]}}}}\n")
    second.write_text(f"organism: {{name: books}}\nchannels: {{sport: {{}}}}\n"
                      f"agents: {{a: {{handler: '{mod}:sink', subscribe: [sport]}}}}\n")

    async def scenario() -> None:
        organism = Organism.from_file(first)
        async with organism.running():
            for n in range(3):
                await organism.broadcast({"n": n}, channel="news")
            await organism.idle()
            with_news = organism.stats()["channels"]
            assert (await organism.reload(second)).ok
            await organism.broadcast({"n": 9}, channel="sport")
            await organism.idle()
            without_news = organism.stats()["channels"]
            assert (await organism.reload(first)).ok
            news_again = organism.stats()["channels"]
        assert with_news["news"]["broadcasts"] == 3
        # A counter of a label that stays is never lower than it was.
        for before, after in ((with_news, without_news), (without_news, news_again)):
            for name in before.keys() & after.keys():
                for count, value in before[name].items():
                    assert after[name][count] >= value, (name, count, before, after)
        assert news_again["news"]["broadcasts"] == 3  # its series goes on where it was

    asyncio.run(scenario())


def test_what_a_stop_takes_out_of_a_mailbox_stays_in_the_agents_books() -> None:
    gate = asyncio.Event()

    async def blocked(spore: Spore, ctx: Any) -> None:
        await gate.wait()

    async def flaky(spore: Spore, ctx: Any) -> None:
        raise ValueError("again later")

    async def scenario() -> None:
        organism = Organism.from_dict({"agents": {
            "slow": {"handler": blocked},
            "flaky": {"handler": flaky, "retry": {"attempts": 3, "backoff": "1h"}},
        }})
        await organism.start()
        for n in range(4):
            await organism.send("slow", {"n": n})
        await organism.send("flaky", {"n": 0})
        await wait_for(lambda: organism.stats()["agents"]["flaky"]["retried"] == 1
                       and organism.stats()["agents"]["slow"]["queued"] == 3)
        await organism.stop(drain_timeout=0.2)
        stats = organism.stats()
        slow, flaky_row = stats["agents"]["slow"], stats["agents"]["flaky"]
        assert stats["dead_letters"]["by_reason"] == {"shutdown": 5}
        assert balanced(slow), slow
        assert balanced(flaky_row), flaky_row
        totals = stats["totals"]
        assert totals["received"] == totals["handled"] + totals["failed"]

    asyncio.run(scenario())


GATED = """
import asyncio
import sys

GATE = asyncio.Event()


async def gated(spore, ctx):
    if spore.knowledge.get("block"):
        await GATE.wait()
"""


def test_held_spores_a_new_schema_refuses_stay_in_the_agents_books(
        tmp_path: Path, handler_modules: Callable[[str, str | None], str]) -> None:
    mod = handler_modules(GATED, None)
    (tmp_path / "must.json").write_text('{"type": "object", "required": ["must"]}')
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"agents: {{a: {{handler: '{mod}:gated'}}}}\n")
    second.write_text(f"agents: {{a: {{handler: '{mod}:gated', schema: must.json}}}}\n")

    async def scenario() -> None:
        organism = Organism.from_file(first)
        async with organism.running():
            await organism.send("a", {"block": True})
            for n in range(3):
                await organism.send("a", {"n": n})
            await wait_for(lambda: organism.stats()["agents"]["a"]["queued"] == 3)
            assert (await organism.reload(second)).ok
            sys.modules[mod].GATE.set()
            await organism.idle()
        stats = organism.stats()
        assert stats["dead_letters"]["by_reason"] == {"schema": 3}
        row = stats["agents"]["a"]
        assert (row["received"], row["handled"]) == (4, 1)
        assert balanced(row), row

    asyncio.run(scenario())
