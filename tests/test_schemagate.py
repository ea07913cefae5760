"""schemagate: the XML form an XSD sees, and per-subscriber checks of broadcasts."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from sporeflow.config import SchemaViolation, SporeError
from sporeflow.steps import Spore, check_schemas, knowledge_element
from sporeflow.steps.types import Delivery

from .conftest import aiter_of, collect


@pytest.mark.parametrize(("metadata", "root"), [
    ({"kind": "order"}, "order"),
    ({}, "knowledge"),
    ({"kind": "not a name"}, "knowledge"),
    ({"kind": 7}, "knowledge"),
])
def test_xml_form_is_rooted_at_the_kind_when_it_is_an_xml_name(
        metadata: dict[str, Any], root: str) -> None:
    element = knowledge_element(Spore(knowledge={"id": 1}, metadata=metadata))
    assert etree.tostring(element).decode() == f"<{root}><id>1</id></{root}>"


def test_xml_form_drops_scalar_markers_and_keeps_structure() -> None:
    spore = Spore(knowledge={"sku": "42", "ratio": float("inf"), "tags": ["a"], "extra": {}})
    assert etree.tostring(knowledge_element(spore)) == (
        b'<knowledge><sku>42</sku><ratio>inf</ratio><tags type="list"><item>a</item></tags>'
        b'<extra type="dict"/></knowledge>')


def _refuse(name: str) -> Any:
    def check(spore: Spore) -> None:
        raise SchemaViolation("knowledge.n", "too big", f"{name}.json", agent=name)
    return check


def _accept(spore: Spore) -> None:
    return None


async def test_broadcast_loses_only_the_refusing_subscribers() -> None:
    rejected: list[tuple[Spore, str, BaseException | None]] = []
    broadcast = Spore(knowledge={"n": 9}, from_agent="editor")
    unanimous = Spore(knowledge={"n": 10}, from_agent="editor")
    direct = Spore(knowledge={"n": 11}, from_agent="editor", to_agent="b")
    batch: list[Delivery] = [(broadcast, ("a", "b", "c")), (unanimous, ("b",)), (direct, ("b",))]
    gate = check_schemas.raw(
        aiter_of(batch), schemas=lambda: {"a": _accept, "b": _refuse("b")},
        on_reject=lambda spore, reason, error: rejected.append((spore, reason, error)))
    out = await collect(gate)
    # One stage checks every delivery, addressed or broadcast, per recipient.
    assert out == [[(broadcast, ("a", "c"))]]
    assert [(spore, reason) for spore, reason, _ in rejected] == [
        (broadcast, "schema"), (unanimous, "schema"), (direct, "schema")]
    assert all(isinstance(error, SporeError) and "of agent 'b'" in str(error)
               for _, _, error in rejected)


async def test_schemas_are_read_per_batch_so_a_later_agent_is_checked() -> None:
    current: dict[str, object] = {}
    rejected: list[str] = []
    first = Spore(knowledge={}, to_agent="b")
    second = Spore(knowledge={}, to_agent="b")

    async def batches():  # type: ignore[no-untyped-def]
        yield [(first, ("b",))]
        current["b"] = _refuse("b")  # an agent with a schema added between two batches
        yield [(second, ("b",))]

    out = await collect(check_schemas.raw(
        batches(), schemas=lambda: current,  # type: ignore[arg-type]
        on_reject=lambda spore, reason, error: rejected.append(reason)))
    assert out == [[(first, ("b",))]]
    assert rejected == ["schema"]


async def test_without_schemas_deliveries_pass_as_they_are() -> None:
    batch: list[Delivery] = [(Spore(knowledge={}), ("a", "b"))]
    out = await collect(check_schemas.raw(
        aiter_of(batch), schemas=lambda: {}, on_reject=lambda *args: pytest.fail("no refusal")))
    assert out == [batch]
