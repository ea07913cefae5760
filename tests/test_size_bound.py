"""The size check of the validate stage: a bound that is never below a spore's JSON size,
exact for long strings, so that a long text is not measured by serialising the whole
spore at every check (issue 20: a 200 KB string cost 127x a small spore)."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporeflow.config.errors import LimitExceeded, SporeError
from sporeflow.config.model import Limits
from sporeflow.pipeline.core.deadletters import DeadLetter, DeadLetterStore
from sporeflow.steps import Spore, check_spore
from sporeflow.steps.sizebound import _EXACT, _SHORT, _bound, _string_bytes


def json_bytes(value: Any) -> int:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


@given(st.text())
def test_a_strings_json_size_is_exact(text: str) -> None:
    assert _string_bytes(text) == json_bytes(text)


KNOWLEDGE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.text(min_size=60, max_size=300)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(st.dictionaries(st.text(), KNOWLEDGE, max_size=6))
def test_the_bound_is_never_below_the_json_size(knowledge: dict[str, Any]) -> None:
    for short in (_SHORT, _EXACT):
        assert _bound(knowledge, 64, 1, short, 1 << 62) >= json_bytes(knowledge)


def test_a_long_text_is_checked_without_serialising_the_spore(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spore = Spore(knowledge={"text": "plain words, " * 16_000})  # 208 KB
    def serialised(self: Spore) -> str:
        raise AssertionError("measured by to_json")

    monkeypatch.setattr(Spore, "to_json", serialised)
    check_spore(spore, Limits())  # the default 1 MiB: a 6x bound (1.2 MB) was over it


def test_many_short_strings_near_the_limit_are_bounded_exactly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spore = Spore(knowledge={"words": ["word"] * 40_000})  # 280 KB; 6x: 1.7 MB
    def serialised(self: Spore) -> str:
        raise AssertionError("measured by to_json")

    monkeypatch.setattr(Spore, "to_json", serialised)
    check_spore(spore, Limits())


def test_a_spore_over_the_limit_is_still_refused_with_its_exact_size() -> None:
    spore = Spore(knowledge={"text": "x" * 2_000_000})
    with pytest.raises(LimitExceeded, match=r"is 2000\d{3} bytes as JSON"):
        check_spore(spore, Limits())


def test_a_big_int_and_a_str_subclass_are_bounded_by_their_size() -> None:
    """Found by the property test: an int past 24 digits and a string subclass (bounded
    at 24 bytes whatever its length) were under-counted."""
    class Text(str):
        pass

    for knowledge in ({"n": -10**24}, {"n": [10**40]}, {"t": Text("x" * 5000)},
                      {"t": [Text("y" * 5000)]}):
        assert _bound(knowledge, 64, 1, _SHORT, 1 << 62) >= json_bytes(knowledge), knowledge
    with pytest.raises(LimitExceeded):
        check_spore(Spore(knowledge={"t": [Text("z" * 2_000_000)]}), Limits())


# -- shared references: found by an attacker ------------------------------------------------
# An object referred to many times is written as many times: a spore of a few objects may
# stand for any size of JSON. The size check used to walk (and then write out) all of it.

def test_a_tower_of_shared_lists_is_refused_without_walking_it() -> None:
    tower: list[Any] = [1]
    for _ in range(20):  # 10**20 lists as JSON; before, the walk never ended
        tower = [tower] * 10
    with pytest.raises(LimitExceeded, match=r"is more than 1048576 bytes as JSON, over "
                                            r"limits.max_spore_bytes=1048576"):
        check_spore(Spore(knowledge={"l": tower}), Limits())


class _Looked:
    """An int to the walk, counting how often it was looked at."""

    looked = 0

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: PLW3201
        _Looked.looked += 1
        return int

    def __lt__(self, other: object) -> bool:  # within any bound
        return True

    def __gt__(self, other: object) -> bool:
        return True


def test_a_long_list_of_one_shared_value_is_walked_no_further_than_the_budget() -> None:
    # Found in review: the walk checked its budget only after containers, so a list of
    # 20 million references to one int (160 MB) was walked whole, twice: 8 s.
    _Looked.looked = 0
    with pytest.raises(LimitExceeded):
        check_spore(Spore(knowledge={"l": [_Looked()] * 1_000_000}),
                    Limits(max_spore_bytes=1024))
    assert _Looked.looked < 5_000  # a few per byte of the budget, not a million


def test_one_large_string_referred_to_many_times_is_refused_in_little_memory() -> None:
    text = "x" * (1 << 20)
    spore = Spore(knowledge={"l": [text] * 400})  # 400 MiB as JSON
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceeded, match="over limits.max_spore_bytes"):
            check_spore(spore, Limits(max_spore_bytes=4 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20  # before: the whole JSON, 400 MiB, written out to be measured


def test_many_small_numbers_are_measured_exactly_near_the_limit() -> None:
    """The bound counts a number as 24 characters; the exact size decides."""
    numbers = Spore(knowledge={"n": [1] * 30_000})  # about 60 KB as JSON, bound 750 KB
    check_spore(numbers, Limits(max_spore_bytes=100_000))
    with pytest.raises(LimitExceeded, match=r"is (more than )?\d+ bytes as JSON, over"):
        check_spore(numbers, Limits(max_spore_bytes=50_000))



def test_references_count_toward_the_size_and_ids_are_bounded() -> None:
    # Found in review: the bound measured knowledge and metadata and took 512 bytes for
    # the rest, so a megabyte of references passed max_spore_bytes=64KiB (and weighed
    # next to nothing as a dead letter), and an id could be of any length.
    limits = Limits(max_spore_bytes=64 * 1024)
    many = tuple(f"ref-{n:08d}" * 10 for n in range(10_000))  # about 1 MB
    for spore in (Spore(knowledge={}, knowledge_references=many),
                  Spore(knowledge={}, data_references=many)):
        with pytest.raises(LimitExceeded, match="over limits.max_spore_bytes=65536"):
            check_spore(spore, limits)
    for field in ("id", "reply_to", "thread_id"):
        with pytest.raises(SporeError, match=f"{field} must be .* of at most 1024 characters"):
            check_spore(Spore(knowledge={}, **{field: "x" * 2000}), limits)
    letters = DeadLetterStore(10, max_bytes=10 << 20)
    letters.add(DeadLetter(Spore(knowledge={}, knowledge_references=many), "invalid", "x"))
    assert letters.bytes > 1_000_000
