"""The XSD made from payload types: it compiles, and accepts the XML form of the type's
knowledge (as the schema stage writes it) and refuses what the type refuses."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Any

import pytest
from lxml import etree
from pydantic import TypeAdapter

from sporeflow.config.xsdgen import xsd_from_json_schema
from sporeflow.steps import Spore
from sporeflow.steps.schemagate import knowledge_element
from tests import typed_handlers as h


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Node:
    name: str
    colour: Colour
    born: datetime.date
    weights: dict[str, int]  # not covered: any content
    children: list[Node] = field(default_factory=list)


def _xsd(kind: Any) -> etree.XMLSchema:
    return etree.XMLSchema(etree.fromstring(xsd_from_json_schema(
        TypeAdapter(kind).json_schema()).encode()))


def _xml(kind: str, knowledge: dict[str, Any]) -> etree._Element:
    return knowledge_element(Spore(knowledge=knowledge, metadata={"kind": kind}))


def test_a_nested_record_is_a_named_complex_type_with_its_fields() -> None:
    text = xsd_from_json_schema(TypeAdapter(h.Order).json_schema())
    document = etree.fromstring(text.encode())
    xs = "{http://www.w3.org/2001/XMLSchema}"
    assert [e.get("name") for e in document.findall(f"{xs}element")] == ["Order"]
    fields = {e.get("name"): (e.get("type"), e.get("minOccurs"), e.get("maxOccurs"))
              for e in document.iterfind(f"{xs}complexType[@name='OrderType']//{xs}element")}
    assert fields == {"customer": ("xs:string", None, None),
                      "items": ("ItemType", "0", "unbounded"),
                      "note": ("xs:string", "0", None)}
    item = document.find(f"{xs}complexType[@name='ItemType']/{xs}all")
    assert item is not None
    assert [(e.get("name"), e.get("type")) for e in item] == [("sku", "xs:string"),
                                                              ("count", "xs:integer")]


def test_the_xml_form_of_valid_knowledge_passes_and_a_bad_field_fails() -> None:
    xsd = _xsd(h.Order)
    good = {"customer": "ada", "items": [{"sku": "a", "count": 1}, {"sku": "b", "count": 2}]}
    assert xsd.validate(_xml("Order", good)), xsd.error_log
    bad = {"customer": "ada", "items": [{"sku": "a", "count": "many"},
                                        {"sku": "b", "count": 2}]}
    assert not xsd.validate(_xml("Order", bad))
    assert "count" in str(xsd.error_log)
    assert not xsd.validate(_xml("Order", {"items": good["items"]}))  # customer missing


def test_models_enums_dates_and_recursion_are_covered() -> None:
    xsd = _xsd(Node)
    # A leaf leaves its children out: an empty list is a container the XSD does not cover.
    leaf = {"name": "b", "colour": "blue", "born": "2020-02-02", "weights": {}}
    knowledge = {"name": "a", "colour": "red", "born": "2020-01-01", "weights": {"x": 1},
                 "children": [leaf, {**leaf, "name": "c"}]}
    assert xsd.validate(_xml("Node", knowledge)), xsd.error_log
    assert not xsd.validate(_xml("Node", {**knowledge, "colour": "green"}))
    assert not xsd.validate(_xml("Node", {**knowledge, "born": "yesterday"}))
    refund = _xsd(h.Refund)
    assert refund.validate(_xml("Refund", {"order_id": 1, "amount": 2.5, "reason": "x"}))


@pytest.mark.parametrize("kinds", [(h.Order, h.Refund)])
def test_several_types_are_one_top_level_element_each(kinds: tuple[type, ...]) -> None:
    from typing import Union

    schema = TypeAdapter(Union[kinds]).json_schema()  # noqa: UP007
    xsd = etree.XMLSchema(etree.fromstring(xsd_from_json_schema(schema).encode()))
    assert xsd.validate(_xml("Refund", {"order_id": 1, "amount": 2.5, "reason": "x"}))
    assert xsd.validate(_xml("Order", {"customer": "a", "items": [
        {"sku": "a", "count": 1}, {"sku": "b", "count": 1}]}))
    assert not xsd.validate(_xml("Invoice", {"customer": "a"}))
