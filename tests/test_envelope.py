"""The XML envelope: exact round trips, canonical bytes, hostile input refused."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from sporeflow.config import SporeError
from sporeflow.pipeline.cli.main import cli
from sporeflow.steps import Spore, SporeType, payload_from_xml, spore_from_xml, spore_to_xml
from sporeflow.steps.envelope import NAMESPACE
from sporeflow.steps.xmlpayload import (
    XmlPayloadError,
    canonical_bytes,
    element_to_knowledge,
    knowledge_to_element,
    parse_payloads,
)

SCHEMAS_ORGANISM = Path(__file__).parent / "organisms" / "schemas" / "organism.yaml"

# -- strategies ---------------------------------------------------------------------------

# Characters XML 1.0 can hold (the C0/C1 controls are left out, bar tab, LF and CR).
xml_char = st.characters(blacklist_categories=("Cs", "Cc"),
                         blacklist_characters="\ufffe\uffff") | st.sampled_from("\t\n\r")
xml_text = st.text(xml_char, max_size=12)
names = st.text(xml_char, min_size=1, max_size=12)
scalars = (st.none() | st.booleans() | st.integers() | xml_text
           | st.floats(allow_nan=False))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(xml_text, inner, max_size=4),
    max_leaves=16,
)
objects = st.dictionaries(xml_text, json_values, max_size=5)
moments = st.datetimes(timezones=st.just(UTC))
spores = st.builds(
    Spore,
    knowledge=objects,
    spore_type=st.sampled_from(SporeType),
    from_agent=names,
    to_agent=st.none() | names,
    channel=names,
    priority=st.integers(1, 10),
    expires_at=st.none() | moments,
    reply_to=st.none() | names,
    thread_id=st.none() | names,
    hops=st.integers(0, 10_000),
    metadata=objects,
    knowledge_references=st.lists(xml_text, max_size=3).map(tuple),
    data_references=st.lists(xml_text, max_size=3).map(tuple),
    id=names,
    created_at=moments,
)


def typed(value: Any) -> Any:
    """``value`` with every scalar tagged by its type: 1, 1.0 and True compare unequal."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


# -- round trips --------------------------------------------------------------------------


# No deadline: the machine is shared, and a slow example is not a wrong one.
@settings(deadline=None)
@given(objects)
def test_knowledge_to_xml_bytes_to_knowledge_is_exact(knowledge: dict[str, Any]) -> None:
    data = canonical_bytes(knowledge_to_element("knowledge", knowledge))
    back = element_to_knowledge(etree.fromstring(data))
    assert typed(back) == typed(knowledge)
    assert list(back) == list(knowledge)  # key order too


@settings(max_examples=200, deadline=None)
@given(spores)
def test_spore_to_envelope_to_spore_is_exact_and_canonical(spore: Spore) -> None:
    data = spore.to_xml()
    assert data == spore_to_xml(spore)  # the same spore, the same bytes
    back = Spore.from_xml(data)
    assert back == spore
    assert typed(back.knowledge) == typed(spore.knowledge)
    assert typed(back.metadata) == typed(spore.metadata)
    assert back.to_xml() == data


def test_envelope_is_namespaced_c14n_with_payload_in_no_namespace() -> None:
    spore = Spore(knowledge={"qty": 2, "sku": "42"}, from_agent="cli", to_agent="shop",
                  metadata={"kind": "order"}, id="s-1", knowledge_references=("doc-7",),
                  created_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert spore.to_xml() == (
        b'<sf:spore xmlns:sf="urn:sporeflow:spore:1" channel="main" '
        b'created_at="2026-01-01T00:00:00+00:00" from_agent="cli" hops="0" id="s-1" '
        b'priority="5" spore_type="knowledge" to_agent="shop">'
        b'<sf:knowledge><qty>2</qty><sku type="str">42</sku></sf:knowledge>'
        b'<sf:metadata><kind>order</kind></sf:metadata>'
        b'<sf:knowledge_references><sf:ref>doc-7</sf:ref></sf:knowledge_references>'
        b'</sf:spore>')


def test_pretty_printed_envelope_with_declaration_decodes() -> None:
    text = (f'<?xml version="1.0" encoding="UTF-8"?>\n<s:spore xmlns:s="{NAMESPACE}" id="a"\n'
            f'  from_agent="x" priority="9">\n  <s:knowledge>\n    <n>1</n>\n  </s:knowledge>\n'
            f'</s:spore>\n')
    spore = spore_from_xml(text)
    assert (spore.id, spore.priority, spore.knowledge) == ("a", 9, {"n": 1})


def test_knowledge_xml_cannot_hold_is_a_spore_error_on_encoding() -> None:
    with pytest.raises(SporeError, match=r"spore s-1 has no XML form: character '\\x00'"):
        Spore(knowledge={"a": "\x00"}, id="s-1").to_xml()


# -- malformed envelopes ------------------------------------------------------------------

_ENV = f'xmlns:sf="{NAMESPACE}"'


@pytest.mark.parametrize(("data", "message"), [
    (b"\xff\xfe<a/>", "spore XML is not UTF-8"),
    (b"<sf:spore", "spore XML does not parse"),
    (b"<spore><knowledge/></spore>", "its root is <spore>, expected <spore> in namespace"),
    (f"<sf:spore {_ENV} colour='red'><sf:knowledge/></sf:spore>".encode(),
     "unknown attribute 'colour' on the spore envelope"),
    (f"<sf:spore {_ENV}/>".encode(), "has no <sf:knowledge> element"),
    (f"<sf:spore {_ENV}><sf:knowledge/><sf:knowledge/></sf:spore>".encode(),
     "has <sf:knowledge> twice"),
    (f"<sf:spore {_ENV}><sf:knowledge/><sf:extra/></sf:spore>".encode(),
     "unknown element <{urn:sporeflow:spore:1}extra>"),
    (f"<sf:spore {_ENV}>hello<sf:knowledge/></sf:spore>".encode(), "stray text 'hello'"),
    (f"<sf:spore {_ENV} priority='high'><sf:knowledge/></sf:spore>".encode(),
     "spore field 'priority' is 'high'"),
    (f"<sf:spore {_ENV} hops='many'><sf:knowledge/></sf:spore>".encode(),
     "spore field 'hops' is 'many'"),
    (f"<sf:spore {_ENV} created_at='soon'><sf:knowledge/></sf:spore>".encode(),
     "use an ISO 8601 timestamp"),
    (f"<sf:spore {_ENV} spore_type='gossip'><sf:knowledge/></sf:spore>".encode(),
     "spore field 'spore_type' is 'gossip'; use one of"),
    (f"<sf:spore {_ENV}><sf:knowledge/><sf:data_references><x/></sf:data_references>"
     f"</sf:spore>".encode(), "may hold only <sf:ref> elements"),
])
def test_malformed_envelope_is_a_clear_spore_error(data: bytes, message: str) -> None:
    with pytest.raises(SporeError) as caught:
        spore_from_xml(data)
    assert message in str(caught.value)


def test_a_priority_out_of_range_is_read_as_written_for_the_validate_stage() -> None:
    """Its range is the validate stage's limit, whatever the spore came from."""
    spore = spore_from_xml(f"<sf:spore {_ENV} priority='11'><sf:knowledge/></sf:spore>")
    assert spore.priority == 11


def test_envelope_over_max_bytes_is_refused_before_parsing() -> None:
    data = Spore(knowledge={"text": "x" * 2000}).to_xml()
    with pytest.raises(XmlPayloadError, match=r"over max_bytes=1000"):
        spore_from_xml(data, max_bytes=1000)


def test_envelope_deeper_than_max_depth_is_refused() -> None:
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(10):
        nested = {"n": nested}
    data = Spore(knowledge=nested).to_xml()
    assert spore_from_xml(data).knowledge == nested
    with pytest.raises(XmlPayloadError, match=r"deeper than max_depth=8"):
        spore_from_xml(data, max_depth=8)


def test_not_xml_at_all_is_a_spore_error() -> None:
    with pytest.raises(SporeError, match="str or bytes, not int"):
        spore_from_xml(42)  # type: ignore[arg-type]


# -- hostile input, on every parse path ---------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that would notice any connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connected(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">\n'
              .replace("&lol0;", "&lol;") for i in range(1, 10))
    + ']>\n<lolz>&lol9;</lolz>')


def _file_entity(path: Path) -> str:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE order [<!ENTITY secret SYSTEM '
            f'"file://{path}">]>\n<order><note>&secret;</note></order>')


def _http_entity(port: int) -> str:
    return (f'<!DOCTYPE order [<!ENTITY remote SYSTEM "http://127.0.0.1:{port}/x">]>'
            f'<order><note>&remote;</note></order>')


def _external_dtd(port: int) -> str:
    return f'<!DOCTYPE order SYSTEM "http://127.0.0.1:{port}/x.dtd"><order/>'


PARSE_PATHS: dict[str, Callable[[str], Any]] = {
    "envelope": spore_from_xml,
    "replies": parse_payloads,
    "send --xml": payload_from_xml,
}


@pytest.mark.parametrize("parse", PARSE_PATHS.values(), ids=list(PARSE_PATHS))
def test_billion_laughs_is_refused(parse: Callable[[str], Any]) -> None:
    with pytest.raises(XmlPayloadError, match="document type declarations are not allowed"):
        parse(BILLION_LAUGHS)


@pytest.mark.parametrize("parse", PARSE_PATHS.values(), ids=list(PARSE_PATHS))
def test_file_entity_is_refused_without_reading_the_file(
        parse: Callable[[str], Any], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    for path in (secret, Path("/etc/passwd")):
        with pytest.raises(XmlPayloadError) as caught:
            parse(_file_entity(path))
        assert "document type declarations are not allowed" in str(caught.value)
        assert "TOP-SECRET" not in repr(caught.value.args)
        assert "root:" not in repr(caught.value.args)


@pytest.mark.parametrize("parse", PARSE_PATHS.values(), ids=list(PARSE_PATHS))
def test_network_entities_and_dtds_are_refused_without_connecting(
        parse: Callable[[str], Any], listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for text in (_http_entity(port), _external_dtd(port)):
        with pytest.raises(XmlPayloadError, match="document type declarations"):
            parse(text)
    assert not _connected(listener)


@pytest.mark.parametrize("parse", PARSE_PATHS.values(), ids=list(PARSE_PATHS))
def test_ten_thousand_deep_nesting_is_refused(parse: Callable[[str], Any]) -> None:
    text = "<a>" * 10_000 + "</a>" * 10_000
    with pytest.raises(XmlPayloadError, match=r"(?i)depth|deeper"):
        parse(text)


def test_utf16_document_cannot_smuggle_a_doctype_past_the_scan() -> None:
    data = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><a/>'
    with pytest.raises(XmlPayloadError, match="not UTF-8"):
        spore_from_xml(data.encode("utf-16"))


# -- sporeflow send --xml -----------------------------------------------------------------


def _send(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["send", str(SCHEMAS_ORGANISM), "--start", "--to", "echo",
                                      *args])
    return result.exit_code, result.stdout, result.stderr


def test_send_xml_element_becomes_knowledge_and_kind() -> None:
    # order.xsd declares id an element: the document is checked as written.
    code, out, err = _send("--xml", "<order><id>1</id><line><sku>a</sku><qty>2</qty></line>"
                                    "</order>")
    assert (code, err) == (0, "")
    line, _spore_id = out.splitlines()
    assert json.loads(line)["knowledge"] == {
        "kind": "order", "knowledge": {"id": 1, "line": {"sku": "a", "qty": 2}}}


@pytest.mark.parametrize(("args", "message"), [
    (("--xml", '<order to="x"><id>1</id></order>'),
     "SporeError: --xml: <order> has addressing attribute(s) to; on the command line --to"),
    (("--xml", "<order/><order/>"),
     "XmlPayloadError: expected one payload element, found 2: <order>, <order>"),
    (("--xml", BILLION_LAUGHS), "XmlPayloadError: document type declarations are not allowed"),
    (("--xml", "<order/>", "--request"), "SporeError: --xml cannot be combined with --request"),
])
def test_send_xml_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    code, _, err = _send(*args)
    assert code == 1
    assert err.startswith(message)
    assert "Traceback" not in err


def test_send_takes_knowledge_or_xml_not_both() -> None:
    code, _, err = _send("--xml", "<order/>", '{"a": 1}')
    assert code == 2
    assert "give KNOWLEDGE (JSON) or --xml ELEMENT, exactly one" in err
