"""The XML document an XSD checks: the payload as it was written, when the knowledge
alone cannot give it back.

The mapping of :mod:`sporeflow.steps.xmlpayload` reads ``<note id="n1"><title>t</title>
</note>`` as ``{"id": "n1", "title": "t"}``, and writing that back makes ``id`` a child
element: an XSD written for the real document (``id`` an attribute) would refuse it.
So a payload read from XML keeps, beside its ``kind``, the document as written
(``metadata["xml"]``: canonical XML, its addressing attributes left out) whenever the
mapping would not write the same document: attributes, text beside children, repeated
elements apart, namespaces. Plain child elements keep no copy, and cost no bytes.

The schema stage checks that document only if it reads as the spore's knowledge,
exactly (types included): handlers get the knowledge, so a copy that says something
else (edited, forged by a sender) is not believed, and the XSD checks the mapping's
form instead, as for any spore without one.
"""

from __future__ import annotations

import copy
import json
from typing import Final

from lxml import etree

from sporeflow.config.safexml import DoctypeRefused, parse_xml
from sporeflow.steps.xmlpayload import (
    Payload,
    canonical_bytes,
    element_to_knowledge,
    knowledge_to_element,
)

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
    if element is None:
        return None
    if payload.attrs:  # they address the spore: not part of the document
        element = copy.deepcopy(element)
        for name in payload.attrs:
            del element.attrib[name]
    written = canonical_bytes(element)
    try:
        if canonical_bytes(mapped_document(payload.tag, payload.knowledge)) == written:
            return None
    except (ValueError, TypeError):
        pass
    return written.decode("utf-8")


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
