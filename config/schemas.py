"""Message schemas: ``agents.<name>.schema`` files, read and compiled once at load (what
describes them later, the peers prompt, uses what was read: ``SchemaSpec.source``).

An agent's schema says what the knowledge of every spore addressed to it must look
like. The file is named relative to the organism file, and its suffix says its
language:

* ``.json``, ``.yaml``, ``.yml``: a JSON Schema. Its ``$schema`` picks the draft
  (4, 6, 7, 2019-09, 2020-12; 2020-12 when absent); the schema is checked against its
  metaschema at load. ``$ref`` may point only inside the same file (``#/$defs/...``):
  nothing is fetched or read from elsewhere. It applies to the knowledge (a JSON object).
  YAML is read as the organism file is (nesting and aliases bounded).
* ``.xsd``: a W3C XML Schema, compiled with lxml. It applies to the XML form of the
  knowledge (see :func:`sporeflow.steps.schemagate.knowledge_element`): the payload as
  written when the spore came from XML (``sporeflow.steps.xmldocument``), else the
  knowledge written by the mapping of ``sporeflow.steps.xmlpayload`` under a root element named
  after the spore's ``metadata["kind"]`` (the tag of the XML payload it came from), or
  ``knowledge`` when it has none. The file is parsed in the encoding it declares,
  without entities, DTDs or network (:mod:`sporeflow.config.safexml`: a document type
  declaration is refused), at most ``MAX_SCHEMA_BYTES`` and 256 levels deep;
  ``xs:include``, ``xs:import``, ``xs:redefine`` and ``xs:override`` with a
  ``schemaLocation`` are refused, since sporeflow reads no other file: inline what
  they would bring in.

A schema that is missing, too big, or does not parse is an error of the organism
file, located at the agent's ``schema`` key. :meth:`SchemaSpec.check` raises
:class:`SchemaViolation` (a :class:`SporeError`) naming the failing field as a path
into the spore, like ``knowledge.items[2].count``.

Error tree addition::

    SporeError
    └── SchemaViolation   the knowledge fails the recipient's schema (dead letter reason
                          ``schema``)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.exceptions import best_match

from sporeflow.config.errors import SporeError
from sporeflow.config.lazy_etree import etree
from sporeflow.config.positions import YamlSyntaxError, read_yaml
from sporeflow.config.safexml import DoctypeRefused, parse_xml
from sporeflow.config.size_cap import FileTooLarge, read_bounded
from sporeflow.config.words import with_article

__all__ = [
    "JSON_SCHEMA_SUFFIXES",
    "MAX_SCHEMA_BYTES",
    "SCHEMA_REASON",
    "XSD_SUFFIX",
    "SchemaFileError",
    "SchemaSpec",
    "SchemaViolation",
    "field_path",
    "load_schema",
]

SCHEMA_REASON: Final = "schema"
"""The dead-letter reason of a spore whose knowledge fails its recipient's schema."""

JSON_SCHEMA_SUFFIXES: Final = (".json", ".yaml", ".yml")
XSD_SUFFIX: Final = ".xsd"
MAX_SCHEMA_BYTES: Final = 4 << 20

_XS: Final = "{http://www.w3.org/2001/XMLSchema}"
_OTHER_DOCUMENTS: Final = tuple(f"{_XS}{tag}" for tag in ("include", "import", "redefine",
                                                          "override"))
_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DETAIL_CHARS: Final = 300
# The mapping's escape element for keys that are no XML name, and its list marker.
_ESCAPE_TAG: Final = "_"
_ESCAPE_ATTR: Final = "k"


class SchemaFileError(ValueError):
    """A schema file cannot be used; the loader reports it at the ``schema`` key."""


class SchemaViolation(SporeError):
    """Knowledge fails a schema.

    ``field`` is the failing place as a path into the spore (``knowledge.items[2].count``),
    ``detail`` the validator's message, ``schema`` the schema file, ``agent`` the agent
    whose schema it is, when known.
    """

    reason: Final = SCHEMA_REASON

    def __init__(self, field: str, detail: str, schema: str, *, agent: str | None = None) -> None:
        whose = f" of agent {agent!r}" if agent is not None else ""
        super().__init__(f"{field}: {detail} (schema {schema}{whose})")
        self.field = field
        self.detail = detail
        self.schema = schema
        self.agent = agent


@dataclass(frozen=True, slots=True)
class SchemaSpec:
    """A compiled schema file.

    ``language`` is ``"json-schema"`` or ``"xsd"``. Two specs are equal when they come
    from the same path with the same content (``digest``), so a reload sees an edited
    schema as a changed agent.
    """

    path: Path
    language: str
    digest: str
    _validate: Callable[[Any], None] = field(compare=False, repr=False)
    # What was read and checked at load, for those that describe the schema (the peers
    # prompt): the file may have changed since, and is never read again unchecked.
    source: bytes = field(default=b"", compare=False, repr=False)
    document: Any = field(default=None, compare=False, repr=False)  # a JSON Schema's

    @property
    def wants_xml(self) -> bool:
        """True when :meth:`check` takes the knowledge's XML form rather than the dict."""
        return self.language == "xsd"

    def check(self, instance: Any) -> None:
        """Raise :class:`SchemaViolation` unless ``instance`` satisfies the schema.

        ``instance`` is the knowledge (a dict) for a JSON Schema, and its XML form (an
        lxml element) for an XSD.
        """
        self._validate(instance)


def load_schema(path: str | Path) -> SchemaSpec:
    """Read and compile a schema file; raise :class:`SchemaFileError` saying why not."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (*JSON_SCHEMA_SUFFIXES, XSD_SUFFIX):
        raise SchemaFileError(
            f"{str(file)!r} is not a schema file sporeflow knows; name a JSON Schema "
            f"(.json, .yaml, .yml) or an XML Schema (.xsd)")
    data = _read(file)
    digest = hashlib.sha256(data).hexdigest()
    if suffix == XSD_SUFFIX:
        return SchemaSpec(file, "xsd", digest, _compile_xsd(data, str(file)), source=data)
    document = _decode_json(data, suffix, str(file))
    return SchemaSpec(file, "json-schema", digest,
                      _compile_json_schema(document, str(file)), source=data,
                      document=document)


def _read(file: Path) -> bytes:
    try:
        return read_bounded(file, MAX_SCHEMA_BYTES)
    except FileTooLarge as exc:
        raise SchemaFileError(f"schema file {str(file)!r}: {exc} sporeflow reads of a "
                              f"schema; split it or shorten it") from None
    except FileNotFoundError:
        raise SchemaFileError(
            f"schema file {str(file)!r} does not exist; the path is relative to the "
            f"organism file") from None
    except OSError as exc:
        raise SchemaFileError(f"cannot read schema file {str(file)!r}: {exc.strerror}") from None


def _decode_json(data: bytes, suffix: str, name: str) -> Any:
    try:
        text = data.decode("utf-8-sig")
        if suffix == ".json":
            return json.loads(text)
        return read_yaml(text, name).data  # the organism file's reader: aliases checked
    except YamlSyntaxError as exc:
        raise SchemaFileError(f"the schema is not YAML sporeflow reads: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SchemaFileError(f"the schema file is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise SchemaFileError(
            f"the schema is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise SchemaFileError("the schema is nested too deeply to read") from None


# -- JSON Schema ----------------------------------------------------------------


def _compile_json_schema(schema: Any, name: str) -> Callable[[Any], None]:
    if not isinstance(schema, dict):
        kind = with_article(type(schema).__name__)
        raise SchemaFileError(f"a JSON Schema is an object, not {kind}")
    if "$schema" not in schema:
        cls: Any = jsonschema.Draft202012Validator
    else:
        cls = jsonschema.validators.validator_for(schema, default=cast(Any, None))
    if cls is None:
        raise SchemaFileError(
            f"unknown $schema {schema['$schema']!r}; use a JSON Schema draft URI such as "
            f"'https://json-schema.org/draft/2020-12/schema', or leave $schema out")
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = field_path(exc.absolute_path, root="schema")
        raise SchemaFileError(f"not a valid JSON Schema: {where}: {exc.message}") from None
    except RecursionError:
        raise SchemaFileError("the schema is nested too deeply to check") from None
    _check_refs(schema)
    # An empty registry: a $ref outside this file is never fetched.
    validator = cls(schema, registry=referencing.Registry())

    def validate(knowledge: Any) -> None:
        try:
            error = best_match(validator.iter_errors(knowledge))
        except referencing.exceptions.Unresolvable as exc:
            raise SchemaViolation("knowledge", f"the schema cannot resolve {exc}", name) from None
        except RecursionError:  # deep knowledge under a deep limits.max_depth
            raise SchemaViolation("knowledge", "is nested too deeply to check", name) from None
        if error is not None:
            raise SchemaViolation(field_path(error.absolute_path), _short(error.message), name)

    return validate


def _check_refs(schema: Mapping[str, Any]) -> None:
    """Refuse ``$ref``s that leave the file or point at nothing in it."""
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise SchemaFileError(
                f"$ref {ref!r} points outside the schema file, which sporeflow does not "
                f"fetch or read; copy what it names under $defs and use '#/$defs/...'")
        if ref.startswith("#/") and _pointer(schema, ref[2:]) is None:
            raise SchemaFileError(f"$ref {ref!r} points at nothing in the schema file")


def _refs(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                    yield value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _pointer(document: Any, pointer: str) -> Any:
    """Follow a JSON pointer (RFC 6901); None when it leads nowhere."""
    node = document
    for raw in pointer.split("/") if pointer else ():
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


# -- XML Schema -------------------------------------------------------------------


def _compile_xsd(data: bytes, name: str) -> Callable[[Any], None]:
    try:
        document = parse_xml(data)
    except DoctypeRefused as exc:
        raise SchemaFileError(
            f"the XML Schema {name} holds a document type declaration ({exc.doctype}); "
            f"sporeflow refuses DTDs and entities in XML (entity expansion, external "
            f"entities): remove it") from None
    except etree.XMLSyntaxError as exc:
        raise SchemaFileError(f"the XML Schema does not parse: {exc}") from None
    assert document is not None  # a parser that does not recover raises instead
    for element in document.iter(*_OTHER_DOCUMENTS):
        location = element.get("schemaLocation")
        if location is not None:
            raise SchemaFileError(
                f"the XML Schema has <{etree.QName(element).localname} "
                f"schemaLocation={location!r}> (line {element.sourceline}); sporeflow "
                f"reads no other document: inline its definitions")
    try:
        xsd = etree.XMLSchema(document)
    except etree.XMLSchemaParseError as exc:
        raise SchemaFileError(f"not a valid XML Schema: {exc}") from None

    def validate(element: Any) -> None:
        if xsd.validate(element):
            return
        log: Any = xsd.error_log  # untyped in lxml-stubs
        entry = log[0]  # the first error: the others often follow from it
        found = element.getroottree().xpath(entry.path) if entry.path else []
        where = (_element_path(found[0]) if found and isinstance(found, list)
                 and isinstance(found[0], etree._Element) else "knowledge")
        raise SchemaViolation(where, _short(entry.message), name)

    return validate


def _element_path(element: etree._Element) -> str:
    """The path into the knowledge of an element of its XML form (the mapping inverted):
    the root is ``knowledge``; a key is the tag, or ``k`` on ``<_ k="...">``; children of
    a ``type="list"`` container and repeated siblings are list items."""
    parts: list[str | int] = []
    node = element
    parent = node.getparent()
    while parent is not None:
        siblings = [child for child in parent if isinstance(child.tag, str)]
        if parent.get("type") == "list":
            parts.append(siblings.index(node))
        else:
            key = _key(node)
            same = [child for child in siblings if _key(child) == key]
            if len(same) > 1:
                parts.append(same.index(node))
            parts.append(key)
        node, parent = parent, parent.getparent()
    return field_path(reversed(parts))


def _key(element: etree._Element) -> str:
    tag = etree.QName(element).localname
    if tag == _ESCAPE_TAG:
        return element.get(_ESCAPE_ATTR, tag)
    return tag


# -- messages ---------------------------------------------------------------------


def field_path(parts: Any, *, root: str = "knowledge") -> str:
    """Render path parts as ``knowledge.items[2].count`` (odd keys as ``["a b"]``)."""
    rendered = [root]
    for part in parts:
        if isinstance(part, int):
            rendered.append(f"[{part}]")
        elif _IDENTIFIER_RE.fullmatch(str(part)):
            rendered.append(f".{part}")
        else:
            rendered.append(f"[{json.dumps(str(part), ensure_ascii=False)}]")
    return "".join(rendered)


def _short(message: str) -> str:
    return message if len(message) <= _DETAIL_CHARS else message[:_DETAIL_CHARS] + "..."
