"""A brokered stop that times out: dead_letters, stats() and ``dlq list`` tell one story.

What the stop interrupts goes back to RabbitMQ unacked, for the next consumer: it is no
dead letter in the process either (it counted 'shutdown' letters the broker never had).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sporeflow.pipeline import Organism

from .test_broker_bounds import queue_depth
from .test_broker_dlq import Made, dlq, eventually, made  # noqa: F401 (made: a fixture)

pytestmark = pytest.mark.amqp


async def test_a_brokered_stop_that_timed_out_agrees_in_memory_in_stats_and_dlq_list(
        made: Callable[[str], Made]) -> None:  # noqa: F811 (the fixture)
    org = made("")
    first = Organism.from_file(org.path)
    await first.start()
    for n in range(4):  # one runs for ever, the others wait
        await first.send("stuck", {"n": n})
    await eventually(lambda: len(org.lines("started.txt")) == 1, "the first one started")
    left = await first.stop(drain_timeout=0.5)  # the drain times out
    assert left >= 1
    stats = first.stats()
    assert list(first.dead_letters) == []
    assert stats["dead_letters"]["total"] == 0 == stats["totals"]["dead_letters"]
    assert stats["totals"]["unfinished_kept"] == left
    code, out, err = await dlq("list", str(org.path))
    assert (code, out) == (0, ""), err
    # All four are on the broker again, for the next consumer; none is dead there.
    await eventually(lambda: queue_depth(org.topology.queue("stuck")), "requeued")
    assert await queue_depth(org.topology.queue("stuck")) == 4
    assert await queue_depth(org.topology.dead_letter_queue) == 0
