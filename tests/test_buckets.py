from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sporeflow.steps import PriorityBuckets


@given(st.lists(st.integers(1, 10), max_size=60))
def test_pop_order_is_priority_then_fifo(priorities: list[int]) -> None:
    buckets: PriorityBuckets[tuple[int, int]] = PriorityBuckets()
    for index, priority in enumerate(priorities):
        buckets.push(priority, (priority, index))
    popped = [buckets.pop() for _ in range(len(buckets))]
    assert popped == sorted(popped, key=lambda item: (-item[0], item[1]))
    assert len(buckets) == 0
    assert buckets.top() == 0


def test_take_moves_a_run_of_one_priority() -> None:
    buckets: PriorityBuckets[str] = PriorityBuckets()
    for item in "abc":
        buckets.push(5, item)
    buckets.push(9, "z")
    into: list[str] = []
    buckets.take(5, 2, into)
    assert into == ["a", "b"]
    assert len(buckets) == 2
    assert buckets.clear() == ["z", "c"]
