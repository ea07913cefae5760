"""XML payloads: a reversible mapping between JSON objects and XML elements, and a
safe, recovering parser for the XML-tagged text that language-model agents reply with.

Everything here is a pure function over ``str``/``bytes`` and lxml elements.

The mapping
===========

``knowledge_to_element(tag, knowledge)`` writes a JSON object as one element named
``tag``; ``element_to_knowledge(el)`` reads an element back as a JSON object. For every
object whose keys and strings hold only characters XML allows, reading what was written
gives back an equal object with the same types (``int`` stays ``int``, ``"42"`` stays
``str``, ``True`` stays ``bool``), also after serialising to bytes and parsing again.

Writing
-------

* The object becomes the children of the element named ``tag``; the element itself gets
  no attributes. Every value is written as one *value element* per the rules below.
* **Keys.** A key that is an ASCII XML name without a colon (``[A-Za-z_][A-Za-z0-9_.-]*``),
  other than ``_``, is the child's tag: ``{"title": "x"}`` -> ``<title>x</title>``. Any
  other key (``"1 a"``, ``""``, ``"a:b"``, ``"_"``, ``"名前"``) is written as an element
  ``_`` carrying the key in attribute ``k``: ``{"1 a": 1}`` -> ``<_ k="1 a">1</_>``.
  (Non-ASCII names are valid XML, and are read as keys, but lxml's default ASCII
  serialisation cannot write them as tags.)
* **Scalars** are text: a ``str`` as is; an ``int`` in decimal (``<count>3</count>``);
  a ``float`` as ``repr`` gives it (``<ratio>0.5</ratio>``, ``<big>1e+16</big>``);
  ``True``/``False`` as ``true``/``false``; ``None`` as ``null``.
* **Objects** are child elements, one per key, in key order, recursively.
* **Lists** of two or more items are repeated elements, one per item, all named after
  the key, in order: ``{"tags": ["a", "b"]}`` -> ``<tags>a</tags><tags>b</tags>``.
  A list with zero or one items, and a list that is itself an item of a list, is one
  container element ``type="list"`` holding one ``<item>`` value element per item:
  ``{"tags": ["a"]}`` -> ``<tags type="list"><item>a</item></tags>``. Tuples are
  written as lists.
* **The ``type`` attribute** is added only where the text alone would read back as
  something else. Its values are ``str int float bool null dict list``; the writer uses
  ``type="str"`` for a string that would read as another type (``"42"``, ``"-1.5e3"``,
  ``"true"``, ``"false"``, ``"null"``) or that starts or ends with XML whitespace (space,
  tab, CR, LF); ``type="dict"`` for the empty object; ``type="list"`` for the container
  above; ``type="float"`` for ``nan``, ``inf`` and ``-inf``.
* Strings or keys with characters XML cannot hold (most C0 controls, lone surrogates,
  U+FFFE, U+FFFF) raise ``ValueError``; keys that are not ``str`` and values that are not
  JSON types raise ``TypeError``.

Reading
-------

* The element handed to ``element_to_knowledge`` is always read as an object, by the
  object rule below; all of its attributes are data (``parse_payloads`` first removes the
  addressing attributes).
* A value element is read by the first rule that applies:

  1. It has a ``type`` attribute with one of the seven values above: ``str`` gives the
     text verbatim (``""`` when empty); ``int``, ``float``, ``bool``, ``null`` parse the
     text (if it does not parse, the attribute is ignored and rules 2-3 apply); ``dict``
     reads it as an object; ``list`` gives one item per child element, in order, by
     these same rules (the children's tags do not matter). Any other ``type`` value is
     ordinary data (``<bug type="crash">`` reads as ``{"type": "crash", ...}``).
  2. It has child elements or attributes (other than ``k`` on ``<_>``): it is an object.
     Attributes come first, their values read like text (rule 3); then child elements,
     keyed by tag (or by ``k`` on ``<_ k="...">``); several children with the same key,
     adjacent or not, become a list in document order, and so does an attribute that
     shares a name with a child. Non-whitespace text directly inside the element goes
     under the key ``"#text"`` (``TEXT_KEY``): ``<price currency="EUR">3.5</price>``
     -> ``{"currency": "EUR", "#text": 3.5}``.
  3. Otherwise it is a scalar, from its text with XML whitespace stripped: empty
     (``<x/>``, ``<x></x>``) -> ``""``; ``null`` -> ``None``; ``true``/``false`` ->
     ``bool``; a JSON integer (``-?(0|[1-9][0-9]*)``) -> ``int``; a JSON number with a
     fraction or exponent -> ``float``; anything else -> ``str``. So ``<count>3</count>``
     -> ``3``, ``<ok>true</ok>`` -> ``True``, ``<name> Ada </name>`` -> ``"Ada"``, and
     ``007``, ``True``, ``1.``, ``yes`` stay strings.

* Comments and processing instructions are ignored; a namespaced tag or attribute is
  read by its local name.

Parsing replies
===============

``parse_payloads(text)`` turns a reply into one ``Payload`` per top-level element, in
order. The text is scanned once, repaired into well-formed XML inside a synthetic root,
and parsed by lxml's recovering parser. Repairs, best effort:

* Prose between elements is dropped; a bare ``<``, ``>`` or ``&`` in text is taken
  literally; an undeclared entity such as ``&nbsp;`` stays literal text; characters XML
  cannot hold become U+FFFD; comments, processing instructions and the XML declaration
  are dropped; unquoted attribute values are accepted; a tag whose attribute has no
  value (``<b and c>``) is not a tag but text.
* An end tag that matches no open element is dropped; one that matches an element
  further up closes the elements opened inside it.
* An element whose end tag never comes is closed early when its content changes shape:
  before its first child element if text comes first (``<a>1<b/>`` -> ``a`` holds
  ``1``); otherwise after the child element after which the whitespace or prose that
  separates children differs from what preceded its first child, or after the last child
  if prose follows it. ``<note><text>hi</text> <report>...</report>`` thus yields
  ``note`` and ``report`` side by side. It also ends before a start tag of its own name:
  ``<note to="a"><t>x</t><note to="b">...</note>`` is two notes, not one inside the other.

Safety: a reply is text, read as UTF-8 whatever it declares (bytes are decoded so, and
the repair drops the XML declaration). A document type declaration (``<!DOCTYPE``,
``<!ENTITY``...) anywhere in it is refused before parsing, which stops entity expansion
("billion laughs") and external entities; the parser (:mod:`sporeflow.config.safexml`)
additionally resolves no entities and loads no DTD, file or network resource, and
refuses a declaration it finds. Input over ``max_bytes``
(UTF-8), nesting deeper than ``max_depth`` elements (a payload element is depth 1), and
more than ``max_elements`` elements or ``max_attributes`` attributes in all (the
organism's ``limits.max_xml_elements`` and ``limits.max_xml_attributes``) are refused
while scanning, before lxml sees the text. All refusals and unrecoverable text raise
``XmlPayloadError``, which carries the offending excerpt.

Cost: every pass is linear in the input. The scanner's end-tag expression is possessive
(an unterminated end tag is not retried at every length of its name: 52 s for 200,000
characters before), and attributes are read in document order through the attribute
axis when an element has many (lxml's ``items()`` looks each value up by name, which is
quadratic in the attributes of one element: 46 s for 90,000). ``parse_payloads`` is pure
and thread-safe: each call has its own parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sporeflow.config.lazy_etree import etree
from sporeflow.config.model import Limits
from sporeflow.config.safexml import DoctypeRefused, parse_xml, xml_parser
from sporeflow.steps.xmlrepair import EXCERPT_CHARS, NCNAME, WS, XmlPayloadError, excerpt, repair

__all__ = [
    "ADDRESSING_ATTRS",
    "NO_ELEMENT",
    "TEXT_KEY",
    "Payload",
    "XmlPayloadError",
    "canonical_bytes",
    "element_attributes",
    "element_to_knowledge",
    "knowledge_to_element",
    "looks_like_xml",
    "parse_payloads",
]

ADDRESSING_ATTRS: Final[tuple[str, ...]] = ("to", "channel", "priority", "expires_in", "type")
"""Attributes of a payload element that address the message rather than carry knowledge."""

NO_ELEMENT: Final = "no XML element could be recovered"
"""How the refusal of text that holds no element begins."""

TEXT_KEY: Final = "#text"
"""Key under which an object element's own text is read."""

_ESCAPE_TAG: Final = "_"
_ESCAPE_ATTR: Final = "k"
_TYPE_ATTR: Final = "type"
_LIST_ITEM_TAG: Final = "item"
_MARKERS: Final = frozenset({"str", "int", "float", "bool", "null", "dict", "list"})
_NCNAME_RE: Final = re.compile(NCNAME)
_PLAIN_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_DTD_RE: Final = re.compile(r"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)
_ILLEGAL_RE: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NUMBER_RE: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_INT_MARKED_RE: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_MARKED_RE: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)"
)
_XML_START_STR: Final = re.compile(r"[\s\ufeff]*<")
_XML_START_BYTES: Final = re.compile(rb"(?:\s|\xef\xbb\xbf)*<")
_DEFAULTS: Final = Limits()
# Up to this many attributes lxml's items() is the quickest read; past it, the attribute
# axis, whose cost does not grow with the square of the count.
_FEW_ATTRIBUTES: Final = 16


@dataclass(frozen=True, slots=True)
class Payload:
    """One top-level element of a reply.

    ``attrs`` holds the addressing attributes that were present (see
    ``ADDRESSING_ATTRS``), as written; ``knowledge`` is the element read as an object
    without them; ``element`` the element as parsed (for
    :mod:`sporeflow.steps.xmldocument`).
    """

    tag: str
    attrs: dict[str, str]
    knowledge: dict[str, object]
    element: etree._Element | None = field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------------------
# JSON object -> element


def knowledge_to_element(tag: str, knowledge: Mapping[str, object]) -> etree._Element:
    """Write ``knowledge`` as an element named ``tag`` (see the module docstring)."""
    if not isinstance(knowledge, Mapping):
        raise TypeError(f"knowledge must be a mapping, not {type(knowledge).__name__}")
    if not isinstance(tag, str) or _NCNAME_RE.fullmatch(tag) is None:
        raise ValueError(f"not an XML element name: {tag!r}")
    root = etree.Element(tag)
    _write_object(root, knowledge)
    return root


def _write_object(el: etree._Element, obj: Mapping[str, object]) -> None:
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"object keys must be str, not {type(key).__name__}: {key!r}")
        if isinstance(value, list | tuple) and len(value) >= 2:
            for item in value:
                _write_value(_new_child(el, key), item)
        else:
            _write_value(_new_child(el, key), value)


def _new_child(parent: etree._Element, key: str) -> etree._Element:
    if key != _ESCAPE_TAG and _PLAIN_KEY_RE.fullmatch(key) is not None:
        return etree.SubElement(parent, key)
    _check_xml_text(key)
    child = etree.SubElement(parent, _ESCAPE_TAG)
    child.set(_ESCAPE_ATTR, key)
    return child


def _write_value(el: etree._Element, value: object) -> None:
    if value is None:
        el.text = "null"
    elif isinstance(value, bool):
        el.text = "true" if value else "false"
    elif isinstance(value, int):
        el.text = str(value)
    elif isinstance(value, float):
        el.text = repr(value)
        if not math.isfinite(value):
            el.set(_TYPE_ATTR, "float")
    elif isinstance(value, str):
        _check_xml_text(value)
        el.text = value
        if _needs_str_marker(value):
            el.set(_TYPE_ATTR, "str")
    elif isinstance(value, Mapping):
        if value:
            _write_object(el, value)
        else:
            el.set(_TYPE_ATTR, "dict")
    elif isinstance(value, list | tuple):
        el.set(_TYPE_ATTR, "list")
        for item in value:
            _write_value(etree.SubElement(el, _LIST_ITEM_TAG), item)
    else:
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def _needs_str_marker(value: str) -> bool:
    return value != value.strip(WS) or not isinstance(_infer(value), str)


def _check_xml_text(value: str) -> None:
    bad = _ILLEGAL_RE.search(value)
    if bad is not None:
        raise ValueError(f"character {bad.group()!r} cannot be written in XML: {value[:60]!r}")


# ---------------------------------------------------------------------------------------
# element -> JSON object


def element_to_knowledge(el: etree._Element) -> dict[str, object]:
    """Read ``el`` as a JSON object (see the module docstring)."""
    return _read_object(el, _attributes(el))


def _read_object(el: etree._Element, attrs: list[tuple[str, str]]) -> dict[str, object]:
    groups: dict[str, list[object]] = {}
    for name, value in attrs:
        groups.setdefault(name, []).append(_infer(value.strip(WS)))
    pieces = [el.text or ""]
    for child in el:
        pieces.append(child.tail or "")
        if isinstance(child.tag, str):
            groups.setdefault(_key_of(child), []).append(_read_value(child))
    text = "".join(pieces).strip(WS)
    if text:
        groups.setdefault(TEXT_KEY, []).append(_infer(text))
    return {key: values[0] if len(values) == 1 else values for key, values in groups.items()}


def _read_value(el: etree._Element) -> object:
    marker = el.get(_TYPE_ATTR)
    if marker in _MARKERS:
        text = el.text or ""
        if marker == "str":
            return text
        if marker == "null":
            return None
        if marker == "dict":
            return _read_object(el, _data_attributes(el, drop_type=True))
        if marker == "list":
            return [_read_value(child) for child in el if isinstance(child.tag, str)]
        stripped = text.strip(WS)
        if marker == "bool" and stripped in ("true", "false"):
            return stripped == "true"
        if marker == "int" and _INT_MARKED_RE.fullmatch(stripped):
            try:
                return int(stripped)
            except ValueError:  # more digits than int() accepts
                pass
        if marker == "float" and _FLOAT_MARKED_RE.fullmatch(stripped):
            return float(stripped)
    attrs = _data_attributes(el, drop_type=marker in _MARKERS)
    if attrs or any(isinstance(child.tag, str) for child in el):
        return _read_object(el, attrs)
    return _infer((el.text or "").strip(WS))


def _infer(text: str) -> object:
    """Read stripped text as a JSON scalar literal, else as the string itself."""
    if text == "null":
        return None
    if text == "true":
        return True
    if text == "false":
        return False
    number = _NUMBER_RE.fullmatch(text)
    if number is not None:
        try:
            if number.group(1) is None and number.group(2) is None:
                return int(text)
            return float(text)
        except ValueError:  # more digits than int() accepts
            return text
    return text


def _local(name: str | bytes) -> str:
    text = name if isinstance(name, str) else name.decode()
    return text.rpartition("}")[2]


def _key_of(el: etree._Element) -> str:
    tag = _local(el.tag)
    if tag == _ESCAPE_TAG:
        key = el.get(_ESCAPE_ATTR)
        if key is not None:
            return key
    return tag


def element_attributes(el: etree._Element) -> list[tuple[str, str]]:
    """``el``'s attributes as (``{namespace}name`` or ``name``, value), in document order,
    in time linear in their number (lxml's ``items()`` is quadratic: each value is looked
    up by its name)."""
    if len(el.attrib) <= _FEW_ATTRIBUTES:
        return [(_text(name), _text(value)) for name, value in el.items()]
    axis: Any = el.xpath("@*")  # a new evaluator per call: nothing shared across threads
    return [(_text(node.attrname), str(node)) for node in axis]


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _attributes(el: etree._Element) -> list[tuple[str, str]]:
    return [(_local(name), value) for name, value in element_attributes(el)]


def _data_attributes(el: etree._Element, *, drop_type: bool) -> list[tuple[str, str]]:
    escaped = _local(el.tag) == _ESCAPE_TAG
    return [
        (name, value)
        for name, value in _attributes(el)
        if not (escaped and name == _ESCAPE_ATTR) and not (drop_type and name == _TYPE_ATTR)
    ]


# ---------------------------------------------------------------------------------------
# parsing replies


def looks_like_xml(value: object) -> bool:
    """True for ``str``/``bytes`` whose first non-whitespace character is ``<``."""
    if isinstance(value, str):
        return _XML_START_STR.match(value) is not None
    if isinstance(value, bytes | bytearray):
        return _XML_START_BYTES.match(value) is not None
    return False


def canonical_bytes(el: etree._Element) -> bytes:
    """The C14N 2.0 serialisation of ``el``: UTF-8, without its tail, comments dropped."""
    return etree.tostring(el, method="c14n2", with_comments=False)


def parse_payloads(
    text: str | bytes, *, max_bytes: int = 1 << 20, max_depth: int = 64,
    max_elements: int = _DEFAULTS.max_xml_elements,
    max_attributes: int = _DEFAULTS.max_xml_attributes,
) -> list[Payload]:
    """Split a reply into payloads, one per top-level element, in order.

    See "Parsing replies" in the module docstring for the repairs and the limits.
    Raises ``XmlPayloadError`` for oversize, too deep, too many elements or attributes,
    or DTD-bearing input, and for text in which no element can be recovered.
    """
    source = _decode(text, max_bytes)
    dtd = _DTD_RE.search(source)
    if dtd is not None:
        raise XmlPayloadError(
            "document type declarations are not allowed (entity expansion and external "
            "entities are refused)",
            excerpt(source, dtd.start()),
        )
    source = _ILLEGAL_RE.sub("\ufffd", source)
    repaired = repair(source, max_depth, max_elements, max_attributes)
    parser = _make_parser()
    try:  # the repaired text is balanced, and holds no DTD: the scan refused them
        root = parse_xml(repaired, parser)
    except (etree.XMLSyntaxError, DoctypeRefused) as exc:  # pragma: no cover
        raise XmlPayloadError(str(exc), excerpt(source)) from exc
    if root is None:  # pragma: no cover - idem
        raise XmlPayloadError(_first_error(parser) or "no element", excerpt(source))
    payloads: list[Payload] = []
    for child in root:
        if not isinstance(child.tag, str):
            continue
        _check_depth(child, max_depth, source)
        attrs = {name: value for name in ADDRESSING_ATTRS if (value := child.get(name)) is not None}
        data = [(name, value) for name, value in _attributes(child) if name not in attrs]
        payloads.append(Payload(_local(child.tag), attrs, _read_object(child, data), child))
    if not payloads:
        raise XmlPayloadError(
            f"{NO_ELEMENT}: {_raw_parser_message(source)}",
            excerpt(source),
        )
    return payloads


def _decode(text: str | bytes, max_bytes: int) -> str:
    if isinstance(text, bytes | bytearray):
        if len(text) > max_bytes:
            raise XmlPayloadError(
                f"input is {len(text)} bytes, over max_bytes={max_bytes}",
                excerpt(bytes(text[: EXCERPT_CHARS * 4]).decode("utf-8", "replace")),
            )
        try:
            return bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise XmlPayloadError(
                f"input is not UTF-8: {exc.reason}",
                excerpt(bytes(text).decode("utf-8", "replace"), exc.start),
            ) from exc
    if not isinstance(text, str):
        raise TypeError(f"text must be str or bytes, not {type(text).__name__}")
    # A character is 1 to 4 bytes in UTF-8: only encode when the length is ambiguous.
    if len(text) > max_bytes or (
        len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise XmlPayloadError(f"input is over max_bytes={max_bytes} bytes", excerpt(text))
    return text



def _make_parser() -> etree.XMLParser:
    return xml_parser(recover=True)


def _first_error(parser: etree.XMLParser) -> str:
    for entry in parser.error_log:
        return str(entry.message)
    return ""


def _raw_parser_message(source: str) -> str:
    """What lxml's recovering parser says about the text as given (no DTD is in it)."""
    # In UTF-8 whatever the text declares: the text the scan and the repair read.
    parser = xml_parser(recover=True, encoding="utf-8")
    try:
        parse_xml(source.encode("utf-8"), parser)
    except (etree.XMLSyntaxError, ValueError) as exc:  # DoctypeRefused is a ValueError
        return str(exc)
    return _first_error(parser) or "no element in the text"


def _check_depth(el: etree._Element, max_depth: int, source: str) -> None:
    stack = [(el, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise XmlPayloadError(f"elements nested deeper than max_depth={max_depth}", "")
        stack.extend((child, depth + 1) for child in node if isinstance(child.tag, str))

