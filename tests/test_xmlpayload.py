"""Tests for sporeflow.steps.xmlpayload: the JSON <-> XML mapping and the payload parser."""

import dataclasses
import math
import pickle
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from sporeflow.steps import xmlpayload
from sporeflow.steps.xmlpayload import (
    TEXT_KEY,
    Payload,
    XmlPayloadError,
    canonical_bytes,
    element_to_knowledge,
    knowledge_to_element,
    looks_like_xml,
    parse_payloads,
)

FAST = 2.0  # seconds; the refusals below take microseconds to milliseconds

# --- helpers ------------------------------------------------------------------------------


def same(a: object, b: object) -> bool:
    """Equal with exactly the same types all the way down (1 != 1.0 != True), same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def xml(el: etree._Element) -> str:
    return etree.tostring(el, encoding="unicode")


# Characters XML 1.0 cannot hold: C0 controls other than tab/LF/CR, U+FFFE, U+FFFF
# (lone surrogates are excluded by category).
XML_ILLEGAL = [chr(c) for c in range(0x20) if c not in (0x9, 0xA, 0xD)] + ["\ufffe", "\uffff"]
xml_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters=XML_ILLEGAL),
    max_size=12,
)
tricky = st.sampled_from(
    ["", " ", "42", "-0", "4.5", "1e3", "true", "false", "null", "007", "True", " a ", "\r\n",
     "#text", "_", "k", "type", "item", "a:b", "1 a", "xml", "&amp;", "<b>", "]]>", "\t", "é"]
)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
keys = names | tricky | xml_text
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky
    | xml_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=25,
)
json_objects = st.dictionaries(keys, json_values, max_size=6)
PROPERTY = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


# --- the sloppy reply -------------------------------------------------------------------

SLOPPY = (
    'Sure! <task to="worker" priority="7"><title>Fix bug</title><tags>a</tags><tags>b</tags>'
    '</task> some prose <note channel="log"><text>hi</text> <report><count>3</count>'
    "<ok>true</ok></report>"
)


def test_sloppy_reply_yields_three_payloads_in_order() -> None:
    payloads = parse_payloads(SLOPPY)
    assert [p.tag for p in payloads] == ["task", "note", "report"]
    task, note, report = payloads
    assert task.attrs == {"to": "worker", "priority": "7"}
    assert same(task.knowledge, {"title": "Fix bug", "tags": ["a", "b"]})
    assert note.attrs == {"channel": "log"}
    assert same(note.knowledge, {"text": "hi"})
    assert report.attrs == {}
    assert same(report.knowledge, {"count": 3, "ok": True})


def test_sloppy_reply_as_bytes() -> None:
    assert parse_payloads(SLOPPY.encode()) == parse_payloads(SLOPPY)


def test_addressing_attributes_are_split_from_knowledge() -> None:
    [payload] = parse_payloads(
        '<task to="w" channel="c" priority="2" expires_in="30" type="bug" id="9" x="y">'
        "<a>1</a></task>"
    )
    assert payload.attrs == {
        "to": "w", "channel": "c", "priority": "2", "expires_in": "30", "type": "bug"
    }
    assert same(payload.knowledge, {"id": 9, "x": "y", "a": 1})


def test_payload_is_frozen_and_slotted() -> None:
    payload = Payload("t", {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        payload.tag = "u"  # type: ignore[misc]
    assert not hasattr(payload, "__dict__")


# --- reading LLM-written XML --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<count>3</count>", {"count": 3}),
        ("<ok>true</ok><no>false</no>", {"ok": True, "no": False}),
        ("<name>Ada</name>", {"name": "Ada"}),
        ("<name>\n   Ada Lovelace\n</name>", {"name": "Ada Lovelace"}),
        ("<v>null</v><e/><f></f>", {"v": None, "e": "", "f": ""}),
        ("<r>0.25</r><big>-1e3</big>", {"r": 0.25, "big": -1000.0}),
        ("<z>007</z><t>True</t><d>1.</d><w>yes</w>",
         {"z": "007", "t": "True", "d": "1.", "w": "yes"}),
        ("<item>a</item><item>2</item>", {"item": ["a", 2]}),
        ("<a>1</a><b>x</b><a>2</a>", {"a": [1, 2], "b": "x"}),
        ('<price currency="EUR">3.5</price>', {"price": {"currency": "EUR", TEXT_KEY: 3.5}}),
        ('<user id="3" name="Ada"/>', {"user": {"id": 3, "name": "Ada"}}),
        ('<bug type="crash">boom</bug>', {"bug": {"type": "crash", TEXT_KEY: "boom"}}),
        ("<p>\n  <q>1</q>\n  <r>2</r>\n</p>", {"p": {"q": 1, "r": 2}}),
        ("<m>lead <b>bold</b> tail</m>", {"m": {"b": "bold", TEXT_KEY: "lead  tail"}}),
        ('<tags type="list"><item>a</item></tags>', {"tags": ["a"]}),
        ('<n type="int">abc</n>', {"n": "abc"}),
        ('<x xmlns="urn:x"><y>1</y></x>', {"x": {"y": 1}}),
        ("<c><!-- note --><d>1</d><?pi x?></c>", {"c": {"d": 1}}),
    ],
)
def test_reads_untyped_xml_naturally(body: str, expected: dict[str, object]) -> None:
    [payload] = parse_payloads(f"<root>{body}</root>")
    assert same(payload.knowledge, expected)


def test_element_to_knowledge_reads_the_root_as_an_object() -> None:
    el = etree.fromstring('<note to="a" n="2">hello</note>')
    assert same(element_to_knowledge(el), {"to": "a", "n": 2, TEXT_KEY: "hello"})
    assert element_to_knowledge(etree.Element("empty")) == {}


# --- writing: the documented encoding ------------------------------------------------------


@pytest.mark.parametrize(
    ("knowledge", "expected"),
    [
        ({"title": "x", "n": 3, "ok": True, "r": 0.5, "v": None},
         "<k><title>x</title><n>3</n><ok>true</ok><r>0.5</r><v>null</v></k>"),
        ({"tags": ["a", "b"]}, "<k><tags>a</tags><tags>b</tags></k>"),
        ({"tags": ["a"]}, '<k><tags type="list"><item>a</item></tags></k>'),
        ({"tags": []}, '<k><tags type="list"/></k>'),
        ({"m": [[1, 2], [3]]},
         '<k><m type="list"><item>1</item><item>2</item></m><m type="list"><item>3</item></m></k>'),
        ({"d": {}}, '<k><d type="dict"/></k>'),
        ({"d": {"e": 1}}, "<k><d><e>1</e></d></k>"),
        ({"s": "42", "t": "true", "u": "null", "w": " pad", "e": ""},
         '<k><s type="str">42</s><t type="str">true</t><u type="str">null</u>'
         '<w type="str"> pad</w><e></e></k>'),
        ({"1 a": 1, "": 2, "_": 3, "a:b": 4},
         '<k><_ k="1 a">1</_><_ k="">2</_><_ k="_">3</_><_ k="a:b">4</_></k>'),
        ({"f": math.inf}, '<k><f type="float">inf</f></k>'),
    ],
)
def test_writes_the_documented_encoding(knowledge: dict[str, object], expected: str) -> None:
    el = knowledge_to_element("k", knowledge)
    assert xml(el) == expected
    assert same(element_to_knowledge(el), knowledge)


def test_nan_round_trips_as_nan() -> None:
    value = element_to_knowledge(knowledge_to_element("k", {"x": math.nan}))["x"]
    assert isinstance(value, float)
    assert math.isnan(value)


def test_tuples_are_written_as_lists() -> None:
    el = knowledge_to_element("k", {"t": (1, "2")})
    assert same(element_to_knowledge(el), {"t": [1, "2"]})


@pytest.mark.parametrize(
    ("tag", "knowledge", "error"),
    [
        ("k", {"x": object()}, TypeError),
        ("k", {"x": {1: "a"}}, TypeError),
        ("k", {"x": {"a", "b"}}, TypeError),
        ("k", {"x": "bell\x07"}, ValueError),
        ("k", {"bad\x00key": 1}, ValueError),
        ("1 a", {}, ValueError),
        ("a:b", {}, ValueError),
    ],
)
def test_writing_rejects_what_cannot_be_encoded(
    tag: str, knowledge: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        knowledge_to_element(tag, knowledge)


# --- round-trip properties -----------------------------------------------------------------


@PROPERTY
@given(json_objects)
def test_round_trip_through_elements(knowledge: dict[str, object]) -> None:
    el = knowledge_to_element("payload", knowledge)
    assert same(element_to_knowledge(el), knowledge)


@PROPERTY
@given(json_objects, st.sampled_from(["bytes", "unicode", "pretty"]))
def test_round_trip_through_serialisation_and_parse_payloads(
    knowledge: dict[str, object], form: str
) -> None:
    el = knowledge_to_element("payload", knowledge)
    data: str | bytes
    if form == "bytes":
        data = etree.tostring(el, encoding="utf-8", xml_declaration=True)
    elif form == "unicode":
        data = etree.tostring(el, encoding="unicode")
    else:
        data = etree.tostring(el, encoding="unicode", pretty_print=True)
    [payload] = parse_payloads(data)
    assert payload.tag == "payload"
    assert payload.attrs == {}
    assert same(payload.knowledge, knowledge)


@PROPERTY
@given(st.lists(json_objects, min_size=1, max_size=4), st.text(alphabet="ab .!?\n", max_size=8))
def test_several_payloads_with_prose_between(
    objects: list[dict[str, object]], prose: str
) -> None:
    parts = [etree.tostring(knowledge_to_element(f"p{i}", obj), encoding="unicode")
             for i, obj in enumerate(objects)]
    payloads = parse_payloads(prose + prose.join(parts) + prose)
    assert [p.tag for p in payloads] == [f"p{i}" for i in range(len(objects))]
    for payload, obj in zip(payloads, objects, strict=True):
        assert same(payload.knowledge, obj)


@PROPERTY
@given(json_objects)
def test_canonical_bytes_is_stable(knowledge: dict[str, object]) -> None:
    el = knowledge_to_element("payload", knowledge)
    [payload] = parse_payloads(etree.tostring(el))
    reparsed = knowledge_to_element("payload", payload.knowledge)
    assert canonical_bytes(el) == canonical_bytes(reparsed) == canonical_bytes(el)


junk = st.text(alphabet='<>/="\' ab&;#x!-?[]CDATA\n', max_size=60) | st.text(max_size=60)


@settings(max_examples=500)
@given(junk)
def test_any_text_gives_payloads_or_xml_payload_error(text: str) -> None:
    error: XmlPayloadError | None = None
    try:
        payloads = parse_payloads(text, max_depth=8)
    except XmlPayloadError as exc:
        error, payloads = exc, []
    if error is not None:
        assert len(error.excerpt) <= 200
    else:
        assert payloads
        assert all(isinstance(payload.knowledge, dict) for payload in payloads)


# --- hostile input ---------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz><a>&lol9;</a></lolz>"""

SECRET = "sporeflow-secret-3f9a1c"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n", encoding="utf-8")
    return path


def xxe(path: Path) -> str:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "{path.as_uri()}">]>\n'
        "<r><a>&x;</a></r>"
    )


def refused(text: str | bytes, **limits: int) -> XmlPayloadError:
    started = time.perf_counter()
    with pytest.raises(XmlPayloadError) as info:
        parse_payloads(text, **limits)
    assert time.perf_counter() - started < FAST
    return info.value


def test_billion_laughs_is_refused() -> None:
    error = refused(BILLION_LAUGHS)
    assert "document type declaration" in error.message
    assert error.excerpt.startswith("<!DOCTYPE lolz")


def test_billion_laughs_as_bytes_is_refused() -> None:
    refused(BILLION_LAUGHS.encode())


def test_external_entity_is_refused_without_reading_the_file(secret_file: Path) -> None:
    error = refused(xxe(secret_file))
    assert SECRET not in str(error)
    assert SECRET not in error.excerpt
    assert SECRET not in repr(error.args)


@pytest.mark.parametrize("declaration", ["<!doctype r>", "<! DOCTYPE r>", "<!ENTITY x 'y'>"])
def test_any_dtd_declaration_is_refused(declaration: str) -> None:
    refused(f"<a>1</a>{declaration}<b>2</b>")


def test_the_parser_itself_neither_expands_nor_fetches_entities(secret_file: Path) -> None:
    """Defence in depth: the lxml parser settings alone defuse both attacks."""
    parser = xmlpayload._make_parser()
    started = time.perf_counter()
    root = etree.fromstring(xxe(secret_file).encode(), parser)
    assert root is None or SECRET not in etree.tostring(root, encoding="unicode")
    root = etree.fromstring(BILLION_LAUGHS.encode(), xmlpayload._make_parser())
    assert root is None or len(etree.tostring(root)) < 10_000
    assert time.perf_counter() - started < FAST


@pytest.mark.parametrize("bottom", ["x", "<leaf/>", ""])
def test_ten_thousand_deep_nesting_is_refused(bottom: str) -> None:
    error = refused("<a>" * 10_000 + bottom + "</a>" * 10_000)
    assert "max_depth=64" in error.message
    assert error.excerpt.startswith("<a>")


def test_ten_thousand_deep_unclosed_nesting_is_refused() -> None:
    refused("<a>" * 10_000)


def test_depth_limit_is_exact() -> None:
    assert parse_payloads("<a>" * 64 + "</a>" * 64)
    assert parse_payloads("<a>" * 63 + "<b/>" + "</a>" * 63)
    refused("<a>" * 65 + "</a>" * 65)
    refused("<a>" * 64 + "<b/>" + "</a>" * 64)
    assert parse_payloads("<a><b><c/></b></a>", max_depth=3)
    refused("<a><b><c/></b></a>", max_depth=2)


def test_oversize_input_is_refused() -> None:
    error = refused("<a>" + "x" * (1 << 20) + "</a>")
    assert "max_bytes" in error.message
    assert len(error.excerpt) <= 200
    refused(b"<a>" + b"x" * (1 << 20) + b"</a>")


def test_size_limit_counts_utf8_bytes() -> None:
    text = "<a>" + "€" * 100 + "</a>"  # 107 characters, 307 bytes
    assert parse_payloads(text, max_bytes=307)
    refused(text, max_bytes=306)
    refused(text.encode(), max_bytes=306)


def test_invalid_utf8_bytes_are_refused() -> None:
    error = refused(b"<a>\xff\xfe</a>")
    assert "UTF-8" in error.message


# --- unrecoverable text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["Sorry, I cannot help with that.", "<<<>>>", "", "   \n", "x < 3 && y > 2", "</a>"]
)
def test_text_without_any_element_raises_with_excerpt(text: str) -> None:
    error = refused(text)
    assert error.message.startswith("no XML element could be recovered")
    assert len(error.message) > len("no XML element could be recovered: ")
    assert error.excerpt == text[:200]
    assert isinstance(error, ValueError)


def test_excerpt_is_capped() -> None:
    error = refused("word " * 1000)
    assert error.excerpt == ("word " * 1000)[:200]


def test_error_pickles_with_its_excerpt() -> None:
    error = pickle.loads(pickle.dumps(XmlPayloadError("boom", "<a")))
    assert (error.message, error.excerpt, str(error)) == ("boom", "<a", "boom (near '<a')")


# --- recovery --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a missing end tag at the very end
        ("<task><title>Fix</title><body>long text",
         [("task", {"title": "Fix", "body": "long text"})]),
        # text first, then an element: the unclosed element holds only the text
        ("<a>1<b>2</b>", [("a", {TEXT_KEY: 1}), ("b", {TEXT_KEY: 2})]),
        # prose after the last child of an unclosed element is outside it
        ("<n><t>hi</t> thanks!", [("n", {"t": "hi"})]),
        # indented children stay inside; a change of indentation ends the element
        ("<n>\n  <a>1</a>\n  <b>2</b>\n<m><c>3</c></m>",
         [("n", {"a": 1, "b": 2}), ("m", {"c": 3})]),
        # misspelt end tag: dropped, the parent's end tag closes the child
        ("<task><title>Fix</titel></task>", [("task", {"title": "Fix"})]),
        # stray end tags are dropped
        ("</x><a>1</a></y>", [("a", {TEXT_KEY: 1})]),
        # bare &, < and > in text; undeclared entities stay literal; char refs resolve
        ("<m>a & b < c > d &nbsp; &amp; &#65;&#x42; &#0;</m>",
         [("m", {TEXT_KEY: "a & b < c > d &nbsp; & AB &#0;"})]),
        ("<c><![CDATA[if (a<b) {}]]></c>", [("c", {TEXT_KEY: "if (a<b) {}"})]),
        ('<?xml version="1.0" encoding="latin-1"?><a>1</a>', [("a", {TEXT_KEY: 1})]),
        ("<a x=1 y='two' z=\"q&r\"/>", [("a", {"x": 1, "y": "two", "z": "q&r"})]),
        ("<a x=12 u=http://h/p?q v=ok/>", [("a", {"x": 12, "u": "http://h/p?q", "v": "ok"})]),
        ("<a s=\"x\ny\"><b>1</b></a>", [("a", {"s": "x y", "b": 1})]),
        ('<a x="1" x="2"/>', [("a", {"x": 1})]),
        ("if a <b and c> d then <r>1</r>", [("r", {TEXT_KEY: 1})]),
        ("<a>bell\x07</a>", [("a", {TEXT_KEY: "bell\ufffd"})]),
        ("<ns:a><ns:b>1</ns:b></ns:a>", [("ns:a", {"ns:b": 1})]),
        ("<a>1</a><!-- <b>2</b> --><c>3</c>", [("a", {TEXT_KEY: 1}), ("c", {TEXT_KEY: 3})]),
    ],
)
def test_recovers_sloppy_markup(text: str, expected: list[tuple[str, dict[str, object]]]) -> None:
    payloads = parse_payloads(text)
    assert [(p.tag, p.knowledge) for p in payloads] == expected
    for payload, (_, knowledge) in zip(payloads, expected, strict=True):
        assert same(payload.knowledge, knowledge)


# --- looks_like_xml and canonical_bytes -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a/>", True),
        ("  \n\t<a>", True),
        (b"<a/>", True),
        (b"\r\n <a", True),
        ("\ufeff<a/>", True),
        ("Sure! <a/>", False),
        ("", False),
        ("   ", False),
        (b"", False),
        ({"a": 1}, False),
        (None, False),
        (42, False),
    ],
)
def test_looks_like_xml(value: object, expected: bool) -> None:
    assert looks_like_xml(value) is expected


def test_canonical_bytes_ignores_serialisation_details() -> None:
    one = etree.fromstring('<a y="2" x="1"><b/></a>')
    two = etree.fromstring("<a x='1' y='2'><b></b></a>")
    assert canonical_bytes(one) == canonical_bytes(two) == b'<a x="1" y="2"><b></b></a>'


def test_canonical_bytes_drops_comments() -> None:
    assert canonical_bytes(etree.fromstring("<a><!-- c --><b/></a>")) == b"<a><b></b></a>"


def test_canonical_bytes_of_a_payload_excludes_surrounding_prose() -> None:
    root = etree.fromstring("<r>before <a>1</a> after</r>")
    assert canonical_bytes(root[0]) == b"<a>1</a>"


def test_module_exports() -> None:
    assert set(xmlpayload.__all__) >= {
        "Payload", "XmlPayloadError", "canonical_bytes", "element_to_knowledge",
        "knowledge_to_element", "looks_like_xml", "parse_payloads",
    }
