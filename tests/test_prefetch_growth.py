"""A hosted agent's prefetch (``broker.prefetch``): room for the slots its handlers lend,
changed seldom, since on RabbitMQ each change restarts the queue's consumer."""

from __future__ import annotations

from types import SimpleNamespace

from sporeflow.config import organism_from_dict
from sporeflow.pipeline.broker.prefetch import Prefetches


def test_lending_grows_the_prefetch_by_doubling_and_returning_never_shrinks_it() -> None:
    # Found in review of the fix for nested requests: each ctx.request lent a slot and
    # gave it back, and each changed the prefetch, a consumer restarted twice per request.
    applied: list[tuple[str, int]] = []
    prefetches = Prefetches(lambda agent, count: applied.append((agent, count)))
    spec = organism_from_dict({"agents": {"a": {"handler": "operator:eq", "concurrency": 1}}})
    prefetches.configure(spec, {"a"})
    lane = SimpleNamespace(on_lent=None)  # what the bridge watches of a lane
    prefetches.watch({"a": lane})  # type: ignore[dict-item]
    prefetches.consumed("a")
    assert prefetches.of("a") == 2
    for _ in range(100):  # a request a handler makes and gets its answer to, each time
        lane.on_lent(1)
        lane.on_lent(-1)
    assert applied == [("a", 4)]  # once: room for one lent slot, doubled
    for _ in range(9):  # requests nested nine deep
        lane.on_lent(1)
    assert prefetches.of("a") >= 2 + 9
    assert [count for _, count in applied] == [4, 8, 16]  # doubling: few restarts
    for _ in range(9):
        lane.on_lent(-1)
    assert prefetches.of("a") == 16  # kept: the depth may come again
    prefetches.configure(organism_from_dict(
        {"agents": {"a": {"handler": "operator:eq", "concurrency": 2}}}), {"a"})
    assert prefetches.of("a") == 4  # a reload starts from the room again
    assert applied[-1] == ("a", 4)
