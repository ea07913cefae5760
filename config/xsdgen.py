"""An XML Schema made from payload types, for XML senders and peers (``sporeflow schema
--xsd``, ``ctx.peers_prompt()``).

It is written from the JSON Schema pydantic makes of the types (``config.typed``), for
the XML form of knowledge the schema stage gives an XSD (``steps.schemagate``): one
top-level element per type, named after it, holding an element per field.

Covered: flat and nested records (dataclasses, models; a nested record is a named
``xs:complexType``, so a recursive one works), ``str`` (``date-time``, ``date`` and
``time`` formats as their XSD types), ``int``, ``float``, ``bool``, string enums, lists
(repeated elements) and optional fields (``minOccurs="0"``). Fields are in a
``xs:sequence`` in the type's field order, or ``xs:all`` (any order) when none is a
list.

Not covered, checked as any content (``xs:anyType``): dicts, tuples, unions of
several types, ``Any``, constraints (lengths, ranges, patterns). The XML mapping
writes a list of fewer than two items as a ``type="list"`` container and a ``None`` as
an empty element, which this XSD does not describe. The type itself stays the rule:
the schema stage checks typed agents' knowledge with pydantic, not with this XSD.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sporeflow.config.lazy_etree import etree

__all__ = ["xsd_from_json_schema"]

_XS_NS: Final = "http://www.w3.org/2001/XMLSchema"
_XS: Final = f"{{{_XS_NS}}}"
_SIMPLE: Final = {"string": "xs:string", "integer": "xs:integer", "number": "xs:double",
                  "boolean": "xs:boolean"}
_FORMATS: Final = {"date-time": "xs:dateTime", "date": "xs:date", "time": "xs:time"}
_ANY: Final = "xs:anyType"


def xsd_from_json_schema(schema: Mapping[str, Any]) -> str:
    """The XSD text of ``schema``: a record's, or ``anyOf`` records' (one element each)."""
    root = etree.Element(f"{_XS}schema", nsmap={"xs": _XS_NS})
    root.set("elementFormDefault", "qualified")
    writer = _Writer(root, schema.get("$defs") or {})
    branches = schema.get("anyOf", [schema])
    for branch in branches:
        record = writer.resolve(branch)
        name = str(record.get("title") or "knowledge")
        element = etree.SubElement(root, f"{_XS}element", name=name)
        element.set("type", writer.named(name, record))
    writer.finish()
    return etree.tostring(root, pretty_print=True, encoding="unicode")


class _Writer:
    def __init__(self, root: etree._Element, defs: Mapping[str, Any]) -> None:
        self.root = root
        self.defs = defs
        self.written: dict[str, etree._Element] = {}  # complex and enum types by name
        self.pending: list[tuple[str, Mapping[str, Any]]] = []

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            found = self.defs.get(ref.removeprefix("#/$defs/"))
            return found if isinstance(found, Mapping) else {}
        return schema

    def named(self, name: str, record: Mapping[str, Any]) -> str:
        """The name of ``record``'s complex type, written once (recursion included)."""
        type_name = f"{name}Type"
        if type_name not in self.written:
            self.written[type_name] = etree.Element(f"{_XS}complexType", name=type_name)
            self.pending.append((type_name, record))
        return type_name

    def finish(self) -> None:
        while self.pending:
            type_name, record = self.pending.pop(0)
            self._record(self.written[type_name], record)
        for element in self.written.values():
            self.root.append(element)

    def _record(self, complex_type: etree._Element, record: Mapping[str, Any]) -> None:
        properties = record.get("properties") or {}
        required = set(record.get("required") or ())
        fields = [(name, self._field(spec)) for name, spec in properties.items()]
        any_list = any(many for _, (_, many, _) in fields)
        group = etree.SubElement(complex_type, f"{_XS}sequence" if any_list else f"{_XS}all")
        for name, (type_name, many, optional) in fields:
            element = etree.SubElement(group, f"{_XS}element", name=name, type=type_name)
            if many or optional or name not in required:
                element.set("minOccurs", "0")
            if many:
                element.set("maxOccurs", "unbounded")

    def _field(self, spec: Any) -> tuple[str, bool, bool]:
        """(type name, a list, may be absent) of a field's JSON Schema."""
        if not isinstance(spec, Mapping):
            return _ANY, False, False
        options = spec.get("anyOf")
        optional = False
        if isinstance(options, list):
            present = [option for option in options if option != {"type": "null"}]
            optional = len(present) < len(options)
            if len(present) != 1:
                return _ANY, False, optional
            spec = present[0]
        spec = self.resolve(spec)
        if spec.get("type") == "array" and isinstance(spec.get("items"), Mapping):
            item_type, many, _ = self._field(spec["items"])
            return (item_type, True, optional) if not many else (_ANY, False, optional)
        return self._type(spec), False, optional

    def _type(self, spec: Mapping[str, Any]) -> str:
        kind = spec.get("type")
        if isinstance(spec.get("enum"), list) and kind == "string":
            return self._enum(spec)
        if kind == "object" and "properties" in spec:
            return self.named(str(spec.get("title") or "Record"), spec)
        if kind == "string" and spec.get("format") in _FORMATS:
            return _FORMATS[spec["format"]]
        return _SIMPLE.get(kind, _ANY) if isinstance(kind, str) else _ANY

    def _enum(self, spec: Mapping[str, Any]) -> str:
        type_name = f"{spec.get('title') or 'Choice'}Type"
        if type_name not in self.written:
            simple = etree.Element(f"{_XS}simpleType", name=type_name)
            restriction = etree.SubElement(simple, f"{_XS}restriction", base="xs:string")
            for value in spec["enum"]:
                etree.SubElement(restriction, f"{_XS}enumeration", value=str(value))
            self.written[type_name] = simple
        return type_name
