from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporeflow.config import LimitExceeded, Limits
from sporeflow.pipeline import Spore, SporeError, SporeType
from sporeflow.steps.validate import check_spore

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=20)


@st.composite
def spores(draw: st.DrawFn) -> Spore:
    return Spore(
        knowledge=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=5)),
        spore_type=draw(st.sampled_from(SporeType)),
        from_agent=draw(names),
        to_agent=draw(st.none() | names),
        channel=draw(names),
        priority=draw(st.integers(1, 10)),
        expires_at=draw(st.none() | st.datetimes(timezones=st.just(UTC))),
        reply_to=draw(st.none() | names),
        thread_id=draw(st.none() | names),
        hops=draw(st.integers(0, 100)),
        metadata=draw(st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)),
        knowledge_references=tuple(draw(st.lists(names, max_size=3))),
    )


@given(spores())
def test_json_round_trip_is_exact(spore: Spore) -> None:
    assert Spore.from_json(spore.to_json()) == spore


def test_spore_is_immutable_and_slotted() -> None:
    spore = Spore(knowledge={"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spore.priority = 9  # type: ignore[misc]
    assert not hasattr(spore, "__dict__")


def test_copy_pickle_and_replace_give_equal_spores() -> None:
    spore = Spore(knowledge={"a": [1, 2]}, to_agent="x", priority=7, metadata={"m": 1})
    assert type(copy.copy(spore)) is Spore
    assert copy.copy(spore) == spore
    assert copy.deepcopy(spore) == spore
    assert pickle.loads(pickle.dumps(spore)) == spore
    moved = dataclasses.replace(spore, hops=3)
    assert (moved.hops, moved.id, moved.knowledge) == (3, spore.id, spore.knowledge)


class TaggedSpore(Spore):
    """A subclass with a __dict__ of its own: a layout a Spore cannot be turned into."""


def test_a_subclass_gets_every_field_and_stays_frozen() -> None:
    spore = TaggedSpore(knowledge={"a": 1}, to_agent="x")
    assert type(spore) is TaggedSpore
    assert (spore.to_agent, spore.channel, spore.hops, spore.metadata) == ("x", "main", 0, {})
    assert pickle.loads(pickle.dumps(spore)) == spore
    with pytest.raises(dataclasses.FrozenInstanceError):
        spore.hops = 1  # type: ignore[misc]


def test_ids_are_unique_and_created_at_is_aware_utc() -> None:
    ids = {Spore(knowledge={}).id for _ in range(1000)}
    assert len(ids) == 1000
    assert Spore(knowledge={}).created_at.tzinfo is UTC


def test_thread_is_own_id_until_set() -> None:
    first = Spore(knowledge={})
    assert first.thread == first.id
    assert Spore(knowledge={}, thread_id="t1").thread == "t1"


def test_is_expired_compares_with_now() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    spore = Spore(knowledge={}, expires_at=now)
    assert spore.is_expired(now)
    assert not spore.is_expired(now - timedelta(seconds=1))
    assert not Spore(knowledge={}).is_expired(now)


def test_naive_timestamps_from_praval_read_as_utc() -> None:
    spore = Spore.from_dict({"knowledge": {}, "created_at": "2026-01-01T10:00:00"})
    assert spore.created_at == datetime(2026, 1, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("not json", "does not parse"),
        ("[1, 2]", "must be a JSON object"),
        ("{}", "'knowledge' is missing"),
        ('{"knowledge": []}', "'knowledge' must be a JSON object"),
        ('{"knowledge": {}, "priority": true}', "from 1 to 10"),
        ('{"knowledge": {}, "spore_type": "shout"}', "use one of: knowledge, request"),
        ('{"knowledge": {}, "hops": -1}', ">= 0"),
        ('{"knowledge": {}, "created_at": "yesterday"}', "ISO 8601"),
        ('{"knowledge": {}, "created_at": 12}', "ISO 8601"),
        ('{"knowledge": {}, "from_agent": ""}', "non-empty string"),
        ('{"knowledge": {}, "colour": "red"}', "unknown spore field(s) ['colour']"),
        ('{"knowledge": {}, "data_references": [1]}', "list of strings"),
        ('{"knowledge": {}, "metadata": "x"}', "'metadata' must be a JSON object"),
        (b"\xff\xfe", "does not parse"),
        ("[" * 100_000, "does not parse"),
    ],
)
def test_from_json_rejects_malformed_input_with_a_clear_error(text: str, hint: str) -> None:
    with pytest.raises(SporeError) as caught:
        Spore.from_json(text)
    assert hint in str(caught.value)


@pytest.mark.parametrize("priority", [0, 11, 10**30])
def test_a_priority_out_of_range_decodes_and_is_the_validate_stages_limit(
        priority: int) -> None:
    """The range is one rule, where every spore passes: decoded as found, refused by the
    validate stage as ``limit exceeded``, as the same spore sent in the process is."""
    spore = Spore.from_json(json.dumps({"knowledge": {}, "priority": priority}))
    assert spore.priority == priority
    with pytest.raises(LimitExceeded, match="out of range; use 1..10"):
        check_spore(spore, Limits())


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_from_json_raises_only_spore_error_on_any_input(data: bytes | str) -> None:
    try:
        Spore.from_json(data)
    except SporeError:
        pass


@given(st.dictionaries(st.sampled_from(["knowledge", "id", "priority", "to_agent", "hops",
                                        "expires_at", "spore_type"]), json_values))
def test_from_dict_raises_only_spore_error_on_any_fields(data: dict[str, object]) -> None:
    try:
        Spore.from_dict(data)
    except SporeError:
        pass


def test_to_json_is_compact_json_with_iso_timestamps() -> None:
    spore = Spore(knowledge={"ü": 1}, to_agent="b")
    data = json.loads(spore.to_json())
    assert data["created_at"].endswith("+00:00")
    assert data["to_agent"] == "b"
    assert "ü" in spore.to_json()
