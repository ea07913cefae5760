"""The XML document an XSD checks: the payload as it was written, when the knowledge
alone cannot give it back.

The mapping of :mod:`sporeflow.steps.xmlpayload` reads ``<note id="n1"><title>t</title>
</note>`` as ``{"id": "n1", "title": "t"}``, and writing that back makes ``id`` a child
element: an XSD written for the real document (``id`` an attribute) would refuse it.
So a payload read from XML keeps, beside its ``kind``, the document as written
(``metadata["xml"]``: canonical XML, its addressing attributes left out) whenever it
holds what the mapping would not write back: attributes, text beside children,
repeated elements apart, namespaces. Plain child elements keep no copy, and cost no
bytes (whitespace between elements and the spelling of numbers are not told apart).

The schema stage checks that document only if it reads as the spore's knowledge,
exactly (types included): handlers get the knowledge, so a copy that says something
else (edited, forged by a sender) is not believed, and the XSD checks the mapping's
form instead, as for any spore without one.
"""

from __future__ import annotations

import copy
import json
from typing import Final

from sporeflow.config.lazy_etree import etree
from sporeflow.config.safexml import DoctypeRefused, parse_xml
from sporeflow.steps.xmlpayload import (
    Payload,
    canonical_bytes,
    element_to_knowledge,
    knowledge_to_element,
)
from sporeflow.steps.xmlrepair import WS

__all__ = ["DEFAULT_ROOT", "WRITTEN_KEY", "mapped_document", "payload_metadata",
           "spore_document"]

DEFAULT_ROOT: Final = "knowledge"
"""The root element of the XML form of knowledge that has no ``metadata["kind"]``."""

WRITTEN_KEY: Final = "xml"
"""The metadata key of the document as written."""

_SCALAR_MARKERS: Final = frozenset({"str", "int", "float", "bool", "null"})


def mapped_document(tag: str, knowledge: dict[str, object]) -> etree._Element:
    """The knowledge written by the mapping under ``tag``, without its scalar type
    markers (XSD types the text itself). Raises ``ValueError``/``TypeError`` for knowledge
    that XML cannot hold."""
    element = knowledge_to_element(tag, knowledge)
    for node in element.iter():
        if node.get("type") in _SCALAR_MARKERS:
            del node.attrib["type"]
    return element


def payload_metadata(payload: Payload) -> dict[str, object]:
    """The metadata of a spore made from ``payload``: its kind, and the document as
    written when the mapping would not give it back."""
    metadata: dict[str, object] = {"kind": payload.tag}
    written = _written(payload)
    if written is not None:
        metadata[WRITTEN_KEY] = written
    return metadata


def _written(payload: Payload) -> str | None:
    element = payload.element
    if element is None or not _beyond_mapping(element, len(payload.attrs)):
        return None
    if payload.attrs:  # they address the spore: not part of the document
        element = copy.deepcopy(element)
        for name in payload.attrs:
            del element.attrib[name]
    return canonical_bytes(element).decode("utf-8")


def _beyond_mapping(root: etree._Element, addressing: int) -> bool:
    """Whether ``root`` holds what the mapping cannot write back: an attribute (other
    than the ``addressing`` ones of the root), a namespace, text beside child elements
    (or in the root, always read as an object), or repeated elements apart. Whitespace
    between elements and the spelling of numbers are not told apart: an XSD checks the
    same either way. One pass, no serialisation, for every XML payload."""
    if len(root.attrib) > addressing or (root.text or "").strip(WS):
        return True
    for node in root.iter():
        if not isinstance(node.tag, str):
            continue  # a comment or a processing instruction
        if node is not root and node.attrib or "}" in node.tag:
            return True
        seen: set[str] = set()
        previous = None
        for child in node:
            if (child.tail or "").strip(WS):
                return True
            tag = child.tag
            if not isinstance(tag, str):
                continue
            if tag != previous and tag in seen:
                return True
            seen.add(tag)
            previous = tag
        if previous is not None and (node.text or "").strip(WS):
            return True
    return False


def spore_document(kind: object, knowledge: dict[str, object],
                   written: object) -> etree._Element:
    """The document an XSD checks: ``written`` when it reads as ``knowledge`` exactly,
    else the mapping's form under ``kind`` (or ``knowledge`` when that is no XML name).
    Raises ``ValueError``/``TypeError`` for knowledge that XML cannot hold."""
    if type(written) is str:
        element = _parsed(written)
        if element is not None and _same(element_to_knowledge(element), knowledge):
            return element
    tag = DEFAULT_ROOT
    if type(kind) is str:
        try:
            tag = str(etree.Element(kind).tag)
        except ValueError:
            pass  # not an XML name: the default root
    return mapped_document(tag, knowledge)


def _parsed(text: str) -> etree._Element | None:
    try:  # safely: no DTD, no entities; its size is the spore's, already bounded
        return parse_xml(text.encode("utf-8", "surrogatepass"))
    except (etree.XMLSyntaxError, DoctypeRefused, ValueError):
        return None


def _same(read: object, knowledge: object) -> bool:
    # As JSON: True is not 1, 1 is not 1.0, so the XSD checks what the handler gets.
    return json.dumps(read, sort_keys=True) == json.dumps(knowledge, sort_keys=True)
