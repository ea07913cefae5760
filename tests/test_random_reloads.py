"""A few seeds of ``tests/random_reloads.py``: hot reloads of an embedded organism under
traffic (README, Hot reload), and the books they must balance after the stop. The
seeds are some of those that found a defect; how long reloads and the stop take is
not checked here (``python -m tests.random_reloads 0 300`` does)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.pipeline import Spore
from sporeflow.pipeline.agents.sent import Sent

from .random_reloads import Book, run_seed


@pytest.mark.parametrize("seed", [0, 2, 11, 12, 14, 37, 122, 152])
async def test_random_reloads_under_traffic_lose_nor_double_any_spore(seed: int) -> None:
    result = await run_seed(seed, timed=False)
    assert result.problems == [], f"seed {seed}: {result.problems}"


async def test_the_book_knows_a_send_whose_await_a_timeout_cancelled() -> None:
    """``ctx.send`` is done at the call (``Sent``): a fan run cancelled while it awaits one
    (spores paged out, its timeout passing) has sent it, and its retry sends it again,
    same id. The book must know that run as the spore's parent, else two copies of one
    id, each handled once, read as one attempt completed twice (seed 152 under load)."""
    waiting, never = asyncio.Event(), asyncio.Event()

    async def paged_out() -> None:
        waiting.set()
        await never.wait()

    class Ctx:  # what Book.run asks of a handler's context
        agent, attempt = "a4", 1

        def send(self, to: str, knowledge: dict[str, Any]) -> Sent:
            spore = Spore(knowledge=knowledge, from_agent=self.agent, to_agent=to)
            return Sent(spore, pause=paged_out)  # the await waits

    book = Book(present=["a3"])
    parent = Spore(knowledge={"d": 0, "k": 1}, to_agent="a4")
    run = asyncio.ensure_future(book.run("fan", parent, Ctx()))
    await asyncio.wait_for(waiting.wait(), 10)  # the run awaits its send
    run.cancel()  # the timeout
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [(parent.id, "a4", 1)] == list(book.parent_of.values())
    assert book.tracked == set(book.parent_of)
