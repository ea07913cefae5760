"""The one way sporeflow parses XML it is given (XML Schemas, spore envelopes, replies).

The parser resolves no entity and loads no DTD, file or network resource. A document
type declaration is refused in what the parser read (``docinfo``), so whatever encoding
the document declares (a scan of the text is blind to one written in UTF-7, where
``<!DOCTYPE`` is ``+ADw-+ACE-DOCTYPE``). When the declaration is what stops the parse
(an entity loop, say), the parser reads the prolog again, up to it, to say so.
"""

from __future__ import annotations

from typing import Any

from sporeflow.config.lazy_etree import etree

__all__ = ["DoctypeRefused", "parse_xml", "xml_parser"]


class DoctypeRefused(ValueError):
    """The document holds a document type declaration; ``doctype`` is it, as parsed."""

    def __init__(self, doctype: str) -> None:
        super().__init__(f"the document holds a document type declaration ({doctype})")
        self.doctype = doctype


def xml_parser(*, recover: bool = False, encoding: str | None = None,
               target: Any = None) -> etree.XMLParser:
    """A parser that fetches nothing; ``encoding`` overrides the one the document declares."""
    # Not collect_ids=False: with it, libxml2 loads a document's external DTD subset
    # (reads a file:// one) although load_dtd is False.
    return etree.XMLParser(
        recover=recover, encoding=encoding, target=target, resolve_entities=False,
        load_dtd=False, dtd_validation=False, attribute_defaults=False, no_network=True,
        huge_tree=False, remove_comments=True, remove_pis=True)


def parse_xml(data: str | bytes, parser: etree.XMLParser | None = None) -> etree._Element | None:
    """The root of ``data`` parsed with ``parser`` (:func:`xml_parser` by default), or None
    when a recovering parser finds no element.

    Raises :class:`DoctypeRefused` for a document with a document type declaration, and
    ``etree.XMLSyntaxError`` for one that does not parse.
    """
    try:
        root = etree.fromstring(data, parser if parser is not None else xml_parser())
    except etree.XMLSyntaxError:
        # The declaration may be why (an entity loop, say): then it is what to report.
        doctype = _declared_doctype(data)
        if doctype is not None:
            raise DoctypeRefused(doctype) from None
        raise
    if root is not None:
        info: Any = root.getroottree().docinfo  # lxml-stubs lack doctype
        if info.doctype or info.internalDTD is not None or info.system_url or info.public_id:
            raise DoctypeRefused(info.doctype or "<!DOCTYPE>")
    return root


class _Stop(Exception):
    pass


class _Prolog:
    """A parser target that reads up to the document type declaration or the first
    element, whichever comes first: nothing after it is parsed."""

    def __init__(self) -> None:
        self.found: str | None = None

    def doctype(self, name: str | None, public: str | None, system: str | None) -> None:
        public_id = f' PUBLIC "{public}"' if public else ""
        system_id = f' SYSTEM "{system}"' if system else ""
        self.found = f"<!DOCTYPE {name or ''}{public_id}{system_id}>"
        raise _Stop

    def start(self, tag: str, attrib: object) -> None:
        raise _Stop

    def close(self) -> None:
        return None


def _declared_doctype(data: str | bytes) -> str | None:
    """The document type declaration ``data`` starts with (in the encoding it declares),
    or None."""
    prolog = _Prolog()
    try:
        etree.fromstring(data, xml_parser(target=prolog))
    except (_Stop, etree.XMLSyntaxError):
        pass
    return prolog.found
