"""The books: counts agree with what happened, balance, and never go down.

Each test drives one way a spore ends and checks what ``stats()`` (and so the
Prometheus scrape, the summary and the dashboard, which read it) report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from sporeflow.pipeline import Organism

SINK = """
async def sink(spore, ctx):
    return None
"""


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
