"""The copies a process waits for in ``idle()`` over a broker (``broker.expected``): known
by id, bounded, and let go only when the hosted queues say they left."""

from __future__ import annotations

from sporeflow.pipeline.broker import expected
from sporeflow.pipeline.broker.expected import ExpectedBack


async def test_the_record_is_bounded_and_what_it_forgot_is_looked_for_in_the_queues(
        ) -> None:
    # Found by a reviewer: with two processes on one agent's queue and nobody calling
    # idle(), each copy the other process took stayed recorded for ever ("no state grows
    # with input"). Past the bound the oldest are forgotten, and then only the queues
    # (empty, twice) let idle() return: forgetting never makes it return early.
    book = ExpectedBack()
    for n in range(expected.MAX_EXPECTED + 5):
        book.published(f"s-{n}", 1)
    assert book.total == expected.MAX_EXPECTED
    for n in range(5, expected.MAX_EXPECTED + 5):
        book.came_back(f"s-{n}")
    assert book.total == 0
    assert book  # some were forgotten: still waiting, for the queues to say
    looked: list[str] = []

    async def holding(queue: str) -> int:
        looked.append(queue)
        return 1

    assert not await book.gone_elsewhere(["q"], holding, lambda: True)
    assert book

    async def empty(queue: str) -> int:
        return 0

    assert await book.gone_elsewhere(["q"], empty, lambda: True)
    assert not book
    assert looked == ["q"]
