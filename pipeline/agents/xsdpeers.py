"""What an XSD peer accepts, in words for ``ctx.peers_prompt()``: each top-level element's
fields (child elements and attributes, their types, which may be left out or repeated)
and an example element.

Read: ``xs:element`` with a ``type`` or an inline ``xs:complexType``; named complex and
simple types of the same file; ``xs:sequence``, ``xs:all``, ``xs:choice`` (nested too),
``xs:attribute``. Anything else (groups, extensions, substitution groups) is shown as
``any content``; the XSD itself stays what checks the spores.
"""

from __future__ import annotations

from typing import Final

from sporeflow.config.lazy_etree import etree
from sporeflow.config.safexml import DoctypeRefused, parse_xml

__all__ = ["xsd_lines"]

_XS: Final = "{http://www.w3.org/2001/XMLSchema}"
_GROUPS: Final = (f"{_XS}sequence", f"{_XS}all", f"{_XS}choice")
_MAX_DEPTH: Final = 6
_SAMPLES: Final = {"string": "text", "boolean": "true", "double": "1.5", "float": "1.5",
                   "decimal": "1.5", "date": "2026-01-01", "dateTime": "2026-01-01T00:00:00Z",
                   "time": "00:00:00"}


def xsd_lines(source: bytes, file: str) -> list[str]:
    """The peer lines of the XSD ``source`` (``file``'s, as loaded): ``accepts:`` and
    ``example:`` per element."""
    try:
        root = parse_xml(source)
    except (DoctypeRefused, etree.XMLSyntaxError):
        return [f"  accepts: XML valid against {file}"]
    assert root is not None  # a parser that does not recover raises instead
    reader = _Reader(root)
    lines = []
    for element in root.findall(f"{_XS}element"):
        element_name = element.get("name")
        if not element_name:
            continue
        lines.append(f"  accepts: XML valid against {file}: <{element_name}>"
                     f"{reader.describe(element, 0)}")
        lines.append(f"  example: {reader.example(element)}")
    return lines or [f"  accepts: XML valid against {file}"]


class _Reader:
    def __init__(self, root: etree._Element) -> None:
        self.complex = {str(t.get("name")): t for t in root.findall(f"{_XS}complexType")}
        self.simple = {str(t.get("name")): t for t in root.findall(f"{_XS}simpleType")}

    def _complex_of(self, element: etree._Element) -> etree._Element | None:
        inline = element.find(f"{_XS}complexType")
        return inline if inline is not None else self.complex.get(_local(element.get("type")))

    def _simple_type(self, element: etree._Element) -> str:
        named = _local(element.get("type")) or "string"
        simple = self.simple.get(named)
        if simple is not None:
            values = [str(e.get("value")) for e in simple.iter(f"{_XS}enumeration")]
            return f"one of {', '.join(values)}" if values else named
        return named

    def _children(self, complex_type: etree._Element) -> list[etree._Element]:
        found: list[etree._Element] = []
        stack = [child for child in complex_type if child.tag in _GROUPS]
        while stack:
            group = stack.pop(0)
            for child in group:
                if child.tag == f"{_XS}element":
                    found.append(child)
                elif child.tag in _GROUPS:
                    stack.append(child)
        return found

    def describe(self, element: etree._Element, depth: int) -> str:
        """`` with a (integer), b (string, optional)``, or `` (string)`` for text."""
        complex_type = self._complex_of(element)
        if complex_type is None:
            return f" ({self._simple_type(element)})"
        if depth > _MAX_DEPTH:
            return " (any content)"
        parts = []
        for attribute in complex_type.findall(f"{_XS}attribute"):
            optional = "" if attribute.get("use") == "required" else ", optional"
            parts.append(f"@{attribute.get('name')} "
                         f"({_local(attribute.get('type')) or 'string'}{optional})")
        for child in self._children(complex_type):
            notes = []
            if child.get("minOccurs") == "0":
                notes.append("optional")
            if child.get("maxOccurs") not in (None, "0", "1"):
                notes.append("repeated")
            inner = self.describe(child, depth + 1)
            name = child.get("name") or _local(child.get("ref"))
            if inner.startswith(" ("):
                parts.append(f"{name} ({', '.join([inner[2:-1], *notes])})")
            else:
                parts.append(f"{name}{' (' + ', '.join(notes) + ')' if notes else ''}:"
                             f" {{{inner.removeprefix(' with ')}}}")
        return f" with {'; '.join(parts)}" if parts else " (empty)"

    def example(self, element: etree._Element, depth: int = 0) -> str:
        name = element.get("name") or _local(element.get("ref"))
        complex_type = self._complex_of(element)
        if complex_type is None:
            return f"<{name}>{self._sample(element)}</{name}>"
        attributes = "".join(
            f' {a.get("name")}="{_SAMPLES.get(_local(a.get("type")), "1")}"'
            for a in complex_type.findall(f"{_XS}attribute") if a.get("use") == "required")
        inner = "" if depth > _MAX_DEPTH else "".join(
            self.example(child, depth + 1) for child in self._children(complex_type)
            if child.get("minOccurs") != "0")
        return f"<{name}{attributes}>{inner}</{name}>"

    def _sample(self, element: etree._Element) -> str:
        named = _local(element.get("type")) or "string"
        simple = self.simple.get(named)
        if simple is not None:
            values = [str(e.get("value")) for e in simple.iter(f"{_XS}enumeration")]
            if values:
                from xml.sax.saxutils import escape  # here: it imports urllib.request

                return escape(values[0])
            base = simple.find(f"{_XS}restriction")
            named = _local(base.get("base")) if base is not None else "string"
        return _SAMPLES.get(named, "1")


def _local(name: str | None) -> str:
    """``xs:integer`` -> ``integer``: the local part of a QName written in the schema."""
    return (name or "").rpartition(":")[2]
