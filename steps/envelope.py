"""The XML envelope of a spore: every field, namespaced, canonical. It works on a spore's
JSON form (a dict), so that ``steps.spore`` can use it without a cycle.

``Spore.to_xml()`` (:func:`fields_to_xml`) writes one element ``spore`` in the namespace
``NAMESPACE`` (``urn:sporeflow:spore:1``, prefix ``sf``), serialised as C14N 2.0, so the same spore
(its dicts' keys in the same order) always gives the same bytes, and decoding then
encoding gives the bytes back::

    <sf:spore xmlns:sf="urn:sporeflow:spore:1" channel="main"
              created_at="2026-01-01T00:00:00+00:00" from_agent="cli" hops="0"
              id="1f2e-1" priority="5" spore_type="knowledge" to_agent="shop">
      <sf:knowledge><sku>A-1</sku><qty>2</qty></sf:knowledge>
      <sf:metadata><kind>order</kind></sf:metadata>
      <sf:knowledge_references><sf:ref>doc-7</sf:ref></sf:knowledge_references>
      <sf:data_references><sf:ref>s3://b/k</sf:ref></sf:data_references>
    </sf:spore>

(shown indented; the canonical form has no whitespace between elements).

* The scalar fields are attributes named as the :class:`Spore` fields: ``id``,
  ``spore_type``, ``from_agent``, ``to_agent``, ``channel``, ``priority``, ``hops``,
  ``created_at``, ``expires_at``, ``reply_to``, ``thread_id``, ``causation_id``,
  ``correlation_id``; timestamps in ISO 8601,
  as in the JSON form. A field that is None is left out.
* ``knowledge`` (always) and ``metadata`` (when not empty) are elements whose content is
  the object written by the mapping of :mod:`sporeflow.steps.xmlpayload`, in no
  namespace; the round trip is exact for every JSON object whose keys and strings hold
  only characters XML allows (others raise :class:`SporeError` on encoding).
* ``knowledge_references`` and ``data_references`` (when not empty) hold one ``sf:ref``
  element per reference, in order.

``Spore.from_xml`` (:func:`xml_to_fields`) accepts any well-formed document of that shape
(whitespace between the envelope's elements, an XML declaration) and checks every field like
``Spore.from_dict``. It parses safely (:mod:`sporeflow.config.safexml`): the parser
resolves no entities, loads no DTD, never touches the network or files, a document
type declaration is refused in the parsed document, whatever encoding it declares
(no entity expansion, no external entities), and input over ``max_bytes``,
nested deeper than ``max_depth`` elements (never more than 256), or holding more than
``max_elements`` elements or ``max_attributes`` attributes is refused; reading is linear
in the input (see :func:`~sporeflow.steps.xmlpayload.element_attributes`). Every
failure raises :class:`SporeError`, or its subclass :class:`XmlPayloadError` when the
bytes are not acceptable XML.

``payload_from_xml(text)`` reads one payload element, as ``sporeflow send --xml``
takes it: the element's tag is the kind, its attributes and children the knowledge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from sporeflow.config.errors import SporeError
from sporeflow.config.lazy_etree import etree
from sporeflow.config.model import Limits
from sporeflow.config.safexml import DoctypeRefused, parse_xml, xml_parser
from sporeflow.steps.xmlpayload import (
    Payload,
    XmlPayloadError,
    canonical_bytes,
    element_attributes,
    element_to_knowledge,
    knowledge_to_element,
    parse_payloads,
)
from sporeflow.steps.xmlrepair import excerpt, over_cap

__all__ = [
    "DEFAULT_MAX_ATTRIBUTES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ELEMENTS",
    "NAMESPACE",
    "payload_from_xml",
    "fields_to_xml",
    "xml_to_fields",
]

NAMESPACE: Final = "urn:sporeflow:spore:1"
PREFIX: Final = "sf"
DEFAULT_MAX_BYTES: Final = 4 << 20
DEFAULT_MAX_DEPTH: Final = 128
# A 1 MiB JSON spore can hold some 500,000 values; its envelope is bounded by max_bytes.
DEFAULT_MAX_ELEMENTS: Final = 500_000
DEFAULT_MAX_ATTRIBUTES: Final = 100_000

_ATTRIBUTE_FIELDS: Final = (
    "id", "spore_type", "from_agent", "to_agent", "channel", "priority", "hops",
    "created_at", "expires_at", "reply_to", "thread_id", "causation_id", "correlation_id",
)
_INTEGER_FIELDS: Final = frozenset({"priority", "hops"})
_OBJECT_FIELDS: Final = ("knowledge", "metadata")
_REFERENCE_FIELDS: Final = ("knowledge_references", "data_references")
_REF: Final = f"{{{NAMESPACE}}}ref"
_ROOT: Final = f"{{{NAMESPACE}}}spore"
_INTEGER_RE: Final = re.compile(r"-?[0-9]{1,20}")
_WS: Final = " \t\r\n"
_EXCERPT: Final = 120


def fields_to_xml(data: Mapping[str, Any]) -> bytes:
    """The canonical (C14N 2.0) XML envelope of a spore's JSON form (``Spore.to_dict``);
    see the module docstring."""
    try:
        return canonical_bytes(_envelope(data))
    except (ValueError, TypeError) as exc:
        raise SporeError(f"spore {data.get('id')} has no XML form: {exc}") from None


def _envelope(data: Mapping[str, Any]) -> etree._Element:
    root = etree.Element(_ROOT, nsmap={PREFIX: NAMESPACE})
    for name in _ATTRIBUTE_FIELDS:
        value = data[name]
        if value is not None:
            root.set(name, str(value))
    for name in _OBJECT_FIELDS:
        if name == "knowledge" or data[name]:
            element = knowledge_to_element(name, data[name])
            element.tag = f"{{{NAMESPACE}}}{name}"  # its content stays in no namespace
            root.append(element)
    for name in _REFERENCE_FIELDS:
        if data[name]:
            container = etree.SubElement(root, f"{{{NAMESPACE}}}{name}")
            for reference in data[name]:
                etree.SubElement(container, _REF).text = reference
    return root


def xml_to_fields(
    data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
    max_elements: int = DEFAULT_MAX_ELEMENTS, max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
) -> dict[str, Any]:
    """Decode an XML envelope into a spore's JSON form, for ``Spore.from_dict`` to check
    every field; raise only :class:`SporeError`."""
    root = _parse(data, max_bytes, max_depth)
    _check_counts(root, max_elements, max_attributes)
    if root.tag != _ROOT:
        raise SporeError(
            f"the XML is not a spore envelope: its root is <{root.tag}>, expected "
            f"<spore> in namespace {NAMESPACE!r}")
    fields: dict[str, Any] = {}
    for key, text in element_attributes(root):
        if key not in _ATTRIBUTE_FIELDS:
            raise SporeError(
                f"unknown attribute {key!r} on the spore envelope; the attributes are "
                f"{', '.join(_ATTRIBUTE_FIELDS)}")
        fields[key] = int(text) if key in _INTEGER_FIELDS and _INTEGER_RE.fullmatch(
            text) else text
    if (root.text or "").strip(_WS):
        raise SporeError(f"the spore envelope holds stray text {root.text!r:.60}")
    for child in root:
        fields.update(_field_element(child, fields))
    if "knowledge" not in fields:
        raise SporeError("the spore envelope has no <sf:knowledge> element; add one")
    return fields


def _field_element(child: etree._Element, seen: dict[str, Any]) -> dict[str, Any]:
    if (child.tail or "").strip(_WS):
        raise SporeError(f"the spore envelope holds stray text {child.tail!r:.60}")
    qname = etree.QName(child)
    name = qname.localname
    if qname.namespace != NAMESPACE or name not in (*_OBJECT_FIELDS, *_REFERENCE_FIELDS):
        raise SporeError(
            f"unknown element <{child.tag}> in the spore envelope; the elements are "
            f"sf:knowledge, sf:metadata, sf:knowledge_references, sf:data_references")
    if name in seen:
        raise SporeError(f"the spore envelope has <sf:{name}> twice; keep one")
    if name in _OBJECT_FIELDS:
        return {name: element_to_knowledge(child)}
    references = []
    for ref in child:
        if ref.tag != _REF or len(ref):
            raise SporeError(f"<sf:{name}> may hold only <sf:ref> elements with text, "
                             f"found <{ref.tag}>")
        references.append(ref.text or "")
    return {name: references}


def _parse(data: str | bytes, max_bytes: int, max_depth: int) -> etree._Element:
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, bytes | bytearray):
        raw = bytes(data)
    else:
        raise SporeError(f"a spore envelope is str or bytes, not {type(data).__name__}")
    if len(raw) > max_bytes:
        raise XmlPayloadError(f"spore XML is {len(raw)} bytes, over max_bytes={max_bytes}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XmlPayloadError(f"spore XML is not UTF-8: {exc.reason}") from None
    try:
        root = parse_xml(raw)
    except DoctypeRefused as exc:
        raise XmlPayloadError(
            "document type declarations are not allowed in spore XML (entity expansion "
            "and external entities are refused)", exc.doctype) from None
    except etree.XMLSyntaxError as exc:
        raise XmlPayloadError(f"spore XML does not parse: {exc}", text[:_EXCERPT]) from None
    assert root is not None  # a parser that does not recover raises instead
    _check_depth(root, max_depth)
    return root


def _check_counts(root: etree._Element, max_elements: int, max_attributes: int) -> None:
    elements = attributes = 0
    for element in root.iter():
        elements += 1
        attributes += len(element.attrib)
    for what, count, setting, cap in (("elements", elements, "max_elements", max_elements),
                                      ("attributes", attributes, "max_attributes",
                                       max_attributes)):
        if count > cap:
            raise over_cap(what, count, setting, cap,
                           f"pass a larger {setting}= to decode this envelope")


def _check_depth(root: etree._Element, max_depth: int) -> None:
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise XmlPayloadError(f"spore XML nests elements deeper than max_depth={max_depth}")
        stack.extend((child, depth + 1) for child in node)


def payload_from_xml(text: str | bytes, *, limits: Limits | None = None,
                     strict: bool = False) -> Payload:
    """Read exactly one payload element (recovering sloppy XML, safely, as for replies),
    under ``limits.max_xml_elements`` and ``limits.max_xml_attributes`` (the defaults
    when None). ``strict``: the text must be well-formed as it is; for XML a person
    wrote, where a repair would guess at what they meant.

    Raises :class:`XmlPayloadError` when the text holds no element or several, or with
    ``strict``, when it is not well-formed.
    """
    limits = limits or Limits()
    payloads = parse_payloads(text, max_elements=limits.max_xml_elements,
                              max_attributes=limits.max_xml_attributes)
    if len(payloads) != 1:
        tags = ", ".join(f"<{payload.tag}>" for payload in payloads)
        raise XmlPayloadError(f"expected one payload element, found {len(payloads)}: {tags}")
    if strict:
        _check_well_formed(text)
    return payloads[0]


def _check_well_formed(text: str | bytes) -> None:
    """Raise :class:`XmlPayloadError` unless ``text`` parses without a repair (the caller
    checked it for a DTD, size and limits already)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    parser = xml_parser(encoding="utf-8")
    try:
        parse_xml(data, parser)
    except etree.XMLSyntaxError as exc:  # its message ends with the line and column
        raise XmlPayloadError(
            f"not well-formed XML: {exc.msg}; XML sent from outside is read as it is (only "
            f"handlers' replies are repaired): correct it",
            excerpt(data.decode("utf-8", "replace"))) from None
