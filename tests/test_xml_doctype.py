"""A document type declaration is refused in every XML sporeflow reads (XML Schemas, spore
envelopes, replies), whatever encoding the document declares: it is looked for in the
parsed document, by a parser that loads no DTD, entity or network resource."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config.schemas import SchemaFileError, load_schema
from sporeflow.steps.envelope import payload_from_xml
from sporeflow.steps.spore import Spore, spore_from_xml
from sporeflow.steps.xmlpayload import parse_payloads
from sporeflow.steps.xmlrepair import XmlPayloadError

XSD = ('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
       '<xs:element name="knowledge" type="xs:string"/></xs:schema>')
NOT_A_DTD = "TOP-SECRET, and no DTD either\n"


def utf7(markup: str) -> str:
    """``markup`` as UTF-7 writes it without direct characters: no '<' or '!' in sight."""
    return markup.replace("+", "+-").replace("<", "+ADw-").replace(">", "+AD4-").replace(
        "!", "+ACE-")


def in_utf7(doctype: str, body: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-7"?>{utf7(doctype)}'
            f'{body.replace("+", "+-")}').encode("ascii")


def in_utf16(doctype: str, body: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-16"?>{doctype}{body}'.encode("utf-16")


def plain(doctype: str, body: str) -> bytes:
    return f"{doctype}{body}".encode()


ENCODINGS: dict[str, Callable[[str, str], bytes]] = {
    "utf-7": in_utf7, "utf-16": in_utf16, "utf-8": plain}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file that is no DTD: parsing fails on it if a parser ever reads it."""
    path = tmp_path / "secret.txt"
    path.write_text(NOT_A_DTD)
    return path


def doctypes(root: str, secret: Path) -> dict[str, str]:
    return {
        "internal subset": f'<!DOCTYPE {root} [<!ENTITY lol "lol">]>',
        "external entity": f'<!DOCTYPE {root} [<!ENTITY e SYSTEM "{secret.as_uri()}">]>',
        "external subset": f'<!DOCTYPE {root} SYSTEM "{secret.as_uri()}">',
        "bare": f"<!DOCTYPE {root}>",
    }


KINDS = ["internal subset", "external entity", "external subset", "bare"]


# -- XML Schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_an_xsd_with_a_doctype_is_refused_in_any_encoding(
        encoding: str, kind: str, secret: Path, tmp_path: Path) -> None:
    path = tmp_path / "orders.xsd"
    path.write_bytes(ENCODINGS[encoding](doctypes("xs:schema", secret)[kind], XSD))
    with pytest.raises(SchemaFileError) as caught:
        load_schema(path)
    message = str(caught.value)
    assert str(path) in message  # the file,
    assert "holds a document type declaration" in message  # what is wrong,
    assert "refuses DTDs and entities" in message  # and the fix
    assert message.endswith("remove it")
    assert "TOP-SECRET" not in message


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_an_xsd_without_a_doctype_loads_in_any_encoding(encoding: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.xsd"
    path.write_bytes(ENCODINGS[encoding]("", XSD))
    schema = load_schema(path)
    assert schema.language == "xsd"


LOOP = '<!DOCTYPE {root} [<!ENTITY a "&b;"><!ENTITY b "&a;">]>'


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_doctype_that_stops_the_parse_is_what_an_xsd_is_refused_for(
        encoding: str, tmp_path: Path) -> None:
    path = tmp_path / "loop.xsd"
    body = XSD.replace('type="xs:string"/>', 'type="xs:string"><xs:annotation>'
                       '<xs:documentation>&a;</xs:documentation></xs:annotation></xs:element>')
    path.write_bytes(ENCODINGS[encoding](LOOP.format(root="xs:schema"), body))
    with pytest.raises(SchemaFileError, match=r"holds a document type declaration "
                                              r"\(<!DOCTYPE xs:schema>\)"):
        load_schema(path)


# -- spore envelopes and replies --------------------------------------------------------


def _envelope() -> str:
    return Spore(knowledge={"sku": "A-1"}, to_agent="shop").to_xml().decode()


PATHS: dict[str, tuple[Callable[[bytes], Any], str, Callable[[], str]]] = {
    "envelope": (spore_from_xml, "sf:spore", _envelope),
    "replies": (parse_payloads, "order", lambda: "<order><sku>A-1</sku></order>"),
    "send --xml": (payload_from_xml, "order", lambda: "<order><sku>A-1</sku></order>"),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_spore_xml_with_a_doctype_is_refused(path: str, kind: str, secret: Path) -> None:
    parse, root, body = PATHS[path]
    with pytest.raises(XmlPayloadError) as caught:
        parse(plain(doctypes(root, secret)[kind], body()))
    assert "document type declarations are not allowed" in str(caught.value)
    assert "TOP-SECRET" not in repr(caught.value.args)


@pytest.mark.parametrize("kind", KINDS)
def test_an_envelope_declared_utf7_with_a_doctype_is_refused(kind: str, secret: Path) -> None:
    with pytest.raises(XmlPayloadError) as caught:
        spore_from_xml(in_utf7(doctypes("sf:spore", secret)[kind], _envelope()))
    assert "document type declarations are not allowed" in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-7", "utf-8"])
def test_a_doctype_that_stops_the_parse_is_what_an_envelope_is_refused_for(
        encoding: str) -> None:
    data = ENCODINGS[encoding](LOOP.format(root="sf:spore"), _envelope().replace("A-1", "&a;"))
    with pytest.raises(XmlPayloadError, match="document type declarations are not allowed"):
        spore_from_xml(data)


@pytest.mark.parametrize("parse", [parse_payloads, payload_from_xml])
@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_is_read_as_utf8_whatever_it_declares(
        parse: Callable[[bytes], Any], kind: str, secret: Path) -> None:
    """A reply is text: the UTF-7 form of a DOCTYPE is characters in it, never markup."""
    reply = parse(in_utf7(doctypes("order", secret)[kind], "<order><sku>A-1</sku></order>"))
    [payload] = reply if isinstance(reply, list) else [reply]
    assert (payload.tag, payload.knowledge) == ("order", {"sku": "A-1"})


@pytest.mark.parametrize("parse", [parse_payloads, payload_from_xml])
def test_a_utf7_doctype_alone_in_a_reply_is_not_read(
        parse: Callable[[bytes], Any], secret: Path) -> None:
    """With no element to recover, the reader says why in the parser's words: that parser
    must read the text as the reply's reader does, loading nothing."""
    text = (f'<?xml version="1.0" encoding="UTF-7"?>'
            f'{utf7(doctypes("order", secret)["external subset"])}').encode()
    with pytest.raises(XmlPayloadError) as caught:
        parse(text)
    assert "no XML element could be recovered" in str(caught.value)
    assert "external subset" not in str(caught.value)
