from __future__ import annotations

from typing import Any

import pytest

from sporeflow.config import LimitExceeded, Limits, SporeError
from sporeflow.steps import Spore, check_spore, new_spore, validate

from .conftest import aiter_of, collect


def rejecting() -> tuple[list[tuple[Spore, str, Any]], Any]:
    seen: list[tuple[Spore, str, Any]] = []
    return seen, lambda spore, reason, error: seen.append((spore, reason, error))


async def test_validate_passes_good_spores_and_rejects_bad_ones_in_order() -> None:
    good = [Spore(knowledge={"i": i}) for i in range(3)]
    too_many_hops = Spore(knowledge={}, hops=33)
    not_json = Spore(knowledge={"s": {1, 2}})
    seen, on_reject = rejecting()
    out = await collect(validate.raw(aiter_of([good[0], too_many_hops, good[1]],
                                              [not_json], [good[2]]),
                                     limits=Limits(), on_reject=on_reject))
    assert out == [[good[0], good[1]], [good[2]]]
    assert [(s, r) for s, r, _ in seen] == [(too_many_hops, "limit exceeded"),
                                            (not_json, "invalid")]
    assert "over limits.max_hops=32" in str(seen[0][2])
    assert "set" in str(seen[1][2])


@pytest.mark.parametrize(
    ("spore", "message"),
    [
        (Spore(knowledge=[1]), "knowledge must be a JSON object"),  # type: ignore[arg-type]
        (Spore(knowledge={}, priority=0), "priority 0 is out of range"),
        (Spore(knowledge={}, from_agent=""), "from_agent must be a non-empty string"),
        (Spore(knowledge={}, to_agent="x" * 200), "to_agent must be a non-empty string"),
        (Spore(knowledge={1: "a"}), "keys must be strings"),  # type: ignore[dict-item]
        (Spore(knowledge={"f": float("nan")}), "which JSON cannot represent"),
        (Spore(knowledge={"o": object()}), "which is not JSON"),
    ],
)
def test_check_spore_names_the_problem(spore: Spore, message: str) -> None:
    with pytest.raises(SporeError, match=message):
        check_spore(spore, Limits())


def test_size_limit_names_limit_and_value() -> None:
    spore = Spore(knowledge={"text": "x" * 2000})
    check_spore(spore, Limits(max_spore_bytes=4000))  # the bound is loose; exact size passes
    with pytest.raises(SporeError, match=r"is \d+ bytes as JSON, over limits.max_spore_bytes=1000"):
        check_spore(spore, Limits(max_spore_bytes=1000))


def test_depth_limit() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(SporeError, match="nested deeper than limits.max_depth=32"):
        check_spore(Spore(knowledge=deep), Limits())


@pytest.mark.parametrize("deepest", [{"x": 1.5}, [1.5], {"x": "text"}, ["text"]],
                         ids=["dict-float", "list-float", "dict-str", "list-str"])
def test_depth_counts_containers_whatever_holds_the_scalars(deepest: Any) -> None:
    # A value in the deepest container allowed is within the limit, in a list as in a
    # dict (a list's items, and a dict's floats, used to count as one level more).
    limits = Limits(max_depth=3)
    check_spore(Spore(knowledge={"a": {"b": deepest}}), limits)
    with pytest.raises(LimitExceeded, match="nested deeper than limits.max_depth=3"):
        check_spore(Spore(knowledge={"a": {"b": {"c": deepest}}}), limits)


def test_not_a_spore_is_refused() -> None:
    with pytest.raises(SporeError, match="expected a Spore, got dict"):
        check_spore({"knowledge": {}}, Limits())


def test_a_built_spore_is_still_checked_in_every_field_its_sender_gave() -> None:
    # built=True skips only what new_spore set itself; the sender's values are checked.
    for field, value in (("priority", "high"), ("spore_type", "request"), ("from_agent", ""),
                         ("channel", 7), ("to_agent", "x" * 200), ("knowledge", [])):
        spore = new_spore(**{"knowledge": {}, "to_agent": "a", field: value})
        with pytest.raises(SporeError, match=field):
            check_spore(spore, Limits(), built=True)
    too_far = new_spore(knowledge={}, hops=Limits().max_hops + 1)
    with pytest.raises(LimitExceeded, match="max_hops"):
        check_spore(too_far, Limits(), built=True)


@pytest.mark.parametrize("knowledge", [
    {"n": 10**5000}, {"a": [1, {"n": -(10**5000)}]}, {"n": 10**5000, "pad": "x" * 70_000}])
def test_an_integer_python_will_not_write_is_named_at_its_place(knowledge: Any) -> None:
    # Before: `ValueError: Exceeds the limit (4300 digits) for integer string conversion`,
    # naming neither the place nor a fix, unlike every other value JSON cannot write.
    with pytest.raises(SporeError, match=r"^knowledge\.(n|a\[1\]\.n) holds an integer of more "
                                         r"than 4300 digits, .*; send it as text"):
        check_spore(Spore(knowledge=knowledge), Limits())


async def test_a_handler_returning_an_integer_python_will_not_write_is_told_its_place(
) -> None:
    from sporeflow.pipeline import Organism

    async def big(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": 10**5000}

    org = Organism.from_dict({"agents": {"big": {"handler": big, "emit": {"to": "sink"}},
                                         "sink": {"handler": lambda spore, ctx: None}}})
    async with org.running():
        await org.send("big", {})
        await org.idle()
    [letter] = org.dead_letters
    assert letter.reason == "invalid"
    assert letter.error.startswith("SporeError: knowledge.n holds an integer of more than"), (
        letter.error)


def test_declared_knowledge_with_an_integer_python_will_not_write_is_named() -> None:
    from sporeflow.pipeline import ConfigError, Organism

    with pytest.raises(ConfigError, match=r"agents\.a\.boot\.n: is an integer of more than "
                                          r"4300 digits, .*; send it as text"):
        Organism.from_dict({"agents": {"a": {"handler": lambda spore, ctx: None,
                                             "boot": {"n": 10**5000}}}})
