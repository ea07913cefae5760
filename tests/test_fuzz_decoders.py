"""Every path from bytes to a spore raises only the project's documented errors.

Two kinds of test per decoder, both with hypothesis, derandomized, no example
database, so that CI runs the same fixed cases every time:

- property tests: structured input (JSON objects with spore fields, headers
  tables, XML-ish token soup) within the decoder's documented error;
- a fuzz harness: byte-level mutations (flip, insert, delete, splice, repeat) of a
  seed corpus of real spores in every wire form and of the real organism files,
  run for a fixed budget per decoder.

``SPOREFLOW_FUZZ_EXAMPLES=20000`` raises the budget of each fuzz target locally (and
lifts the per-test timeout). In CI the whole file runs its fixed budget in ~10 s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sporeflow.config.resolve as resolve
from sporeflow.config import ConfigError, Emit, SporeError, organism_from_text
from sporeflow.config.handlers import HandlerImportError
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp
from sporeflow.steps import (
    Spore,
    SporeType,
    shape_replies,
    signed,
    spore_from_xml,
    spore_to_xml,
)
from sporeflow.steps.xmlpayload import parse_payloads

ROOT = Path(__file__).parent.parent
_FUZZ_OVERRIDE = int(os.environ.get("SPOREFLOW_FUZZ_EXAMPLES", "0") or 0)
if _FUZZ_OVERRIDE:
    pytestmark = pytest.mark.timeout(0)  # a long local run is not a hang


def budget(cases: int) -> Callable[[Any], Any]:
    """Fixed, derandomized settings: ``cases`` examples (or the env override)."""
    return settings(
        max_examples=_FUZZ_OVERRIDE or cases, derandomize=True, database=None, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def property_budget(cases: int) -> Callable[[Any], Any]:
    return settings(max_examples=cases, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the seed corpus: real spores, in every wire form ---------------------------------------

_NOW = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
SEED_SPORES = [
    Spore(knowledge={"root": "stdlib", "skip": ["site-packages"]}, from_agent="system",
          to_agent="scanner", created_at=_NOW),
    Spore(knowledge={"path": "json/decoder.py", "words": 812, "ratio": 0.25, "ok": True,
                     "none": None, "nested": {"a": [1, 2, {"b": "c"}]}},
          spore_type=SporeType.BROADCAST, from_agent="scanner", channel="files", priority=7,
          thread_id="abc-1", hops=1, created_at=_NOW),
    Spore(knowledge={"n": 7}, spore_type=SporeType.REQUEST, from_agent="asker",
          to_agent="squarer", expires_at=_NOW + timedelta(seconds=30), created_at=_NOW),
    Spore(knowledge={"square": 49}, spore_type=SporeType.RESPONSE, from_agent="squarer",
          to_agent="asker", reply_to="abc-9", thread_id="abc-9", hops=2, created_at=_NOW),
    Spore(knowledge={"text": "héllo wörld ✓ 名前", "1 a": "", "": []},
          metadata={"kind": "note", "cost": 1.5}, knowledge_references=("doc-7",),
          data_references=("s3://b/k",), from_agent="writer", to_agent="reader",
          created_at=_NOW),
    signed(Spore(knowledge={"signed": True}, from_agent="a", to_agent="b", created_at=_NOW),
           b"fuzz-key"),
]
JSON_SEEDS = [spore.to_json().encode() for spore in SEED_SPORES]
XML_SEEDS = [spore_to_xml(spore) for spore in SEED_SPORES]
AMQP_SEEDS = [spore_to_amqp(spore, now=_NOW)[:2] for spore in SEED_SPORES]
REPLY_SEEDS = [
    b'Sure! <note to="b" priority="3">hi <b>there</b></note> and <report channel="files" '
    b'expires_in="30s"><count>3</count><tags>a</tags><tags>b</tags></report>',
    b"<answer><value type=\"int\">42</value><empty/></answer>",
    b"<a>1<b/>",
    b'<x expires_in="1e400" priority="-1">y</x>',
]
YAML_SEEDS = [
    (ROOT / "organism.yaml").read_bytes(),
    (ROOT / "tests" / "organisms" / "small" / "organism.yaml").read_bytes(),
    b"organism: {name: x, backend: 'amqp://user:secret@127.0.0.1:5672/', "
    b"signing_key_env: NOT_SET_ANYWHERE}\nagents: {a: {handler: m:f, peers: [], retry: "
    b"{attempts: 2, backoff: 10ms}}}\nchannels: {c: {publish: [a], subscribe: [a]}}\n"
    b"limits: {max_spore_bytes: 1KiB, max_depth: 8}\n",
]


# -- strategies -----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few byte-level mutations: what a fuzzer feeds a decoder."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "splice", "repeat", "cut"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8)
                               | st.sampled_from(_INTERESTING))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[at:at] = other[start:start + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 8))] * draw(st.integers(2, 64))
        elif kind == "cut":
            del data[at:]
    return bytes(data)


_INTERESTING = [
    b"\x00", b"\xff", b"\xc3", b"\\ud800", b"NaN", b"Infinity", b"-0", b"1e400", b"9" * 30,
    b"null", b"true", b"[]", b"{}", b'""', b"[" * 60, b"{\"a\":" * 40, b"&lt;", b"&#0;",
    b"&#x110000;", b"<!DOCTYPE x>", b"<![CDATA[", b"]]>", b"<?xml?>", b"0001-01-01T00:00:00+01:00",
    b"9999-12-31T23:59:59-01:00", b"*a", b"&a", b"!!python/object:os.system", b"<<:",
    b"\t", b"\n  ", b": ", b"- ", b"? ",
]

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=15,
)
FIELDS = ["id", "spore_type", "from_agent", "to_agent", "channel", "knowledge", "created_at",
          "expires_at", "priority", "reply_to", "thread_id", "hops", "metadata",
          "knowledge_references", "data_references"]
odd_values = json_values | st.datetimes(timezones=st.none() | st.just(UTC)) | st.sampled_from(
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-13-01", "broadcast",
     "\ud800", "", float("nan"), 10**400, -1, 0, 11, True])


@st.composite
def seed_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A real spore's JSON form with some fields replaced, removed or added."""
    data: dict[str, Any] = dict(draw(st.sampled_from(SEED_SPORES)).to_dict())
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([*FIELDS, "bogus"]))
        if draw(st.booleans()):
            data[name] = draw(odd_values)
        else:
            data.pop(name, None)
    return data


header_values = (st.none() | st.text(max_size=40) | st.binary(max_size=40) | st.integers()
                 | st.floats() | st.booleans() | st.lists(st.integers(), max_size=3)
                 | st.datetimes() | st.sampled_from(["", "5", "0", "11", "-3", "1e3", " 7 "]))
HEADER_NAMES = ["spore_id", "spore_type", "from_agent", "to_agent", "created_at", "expires_at",
                "priority", "reply_to", "version", "channel", "thread_id", "hops"]


@st.composite
def amqp_messages(draw: st.DrawFn) -> tuple[bytes, Any]:
    """A real message with its body mutated and some headers replaced or removed."""
    body, headers = draw(st.sampled_from(AMQP_SEEDS))
    headers = dict(headers)
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([*HEADER_NAMES, "x-other"]))
        if draw(st.booleans()):
            headers[name] = draw(header_values)
        else:
            headers.pop(name, None)
    if draw(st.booleans()):
        body = draw(mutated([body, *JSON_SEEDS]))
    return body, draw(st.just(headers) | st.sampled_from([None, [], "x", 3]))


xml_soup = st.text(alphabet='<>/="\' abnote&;#x!-?[]CDATAtopriorityexpires_in0123456789.:\n',
                   max_size=120)


def expect_only(error: type[Exception], decode: Callable[[], Any]) -> Any:
    """Run ``decode``; any exception but ``error`` (and its subclasses) fails the test."""
    try:
        return decode()
    except error as exc:
        message = str(exc)
    assert message, "a documented error always says what is wrong"
    return None


# -- Spore.from_json ------------------------------------------------------------------------


@budget(1500)
@given(st.one_of(mutated(JSON_SEEDS), st.binary(max_size=200), st.text(max_size=200)))
@example(b'{"knowledge": {}, "created_at": "0001-01-01T00:00:00+01:00"}')
@example(b'{"knowledge": {}, "expires_at": "9999-12-31T23:59:59-01:00"}')
@example(b'{"knowledge": {"s": "\\ud800"}}')
@example(b"[" * 100_000)
@example(b'{"knowledge": {}, "hops": ' + b"9" * 5000 + b"}")
def test_fuzz_from_json(data: bytes | str) -> None:
    spore = expect_only(SporeError, lambda: Spore.from_json(data))
    if spore is not None:
        assert isinstance(spore, Spore)


@property_budget(300)
@given(st.dictionaries(st.sampled_from([*FIELDS, "x"]), odd_values, max_size=8) | seed_dicts())
def test_from_json_of_any_json_object_raises_only_spore_error(data: dict[str, Any]) -> None:
    text = json.dumps(data, default=str)
    expect_only(SporeError, lambda: Spore.from_json(text))


# -- Spore.from_dict ------------------------------------------------------------------------


@budget(1000)
@given(seed_dicts() | st.dictionaries(st.sampled_from([*FIELDS, "x"]), odd_values, max_size=8)
       | odd_values)
@example({"knowledge": {}, "created_at": datetime(1, 1, 1, tzinfo=UTC) + timedelta(hours=1)})
@example({"knowledge": {}, "spore_type": ["request"]})
@example({"knowledge": {}, 3: "x"})
def test_fuzz_from_dict(data: Any) -> None:
    expect_only(SporeError, lambda: Spore.from_dict(data))


# -- XML payloads (what language-model agents reply) ------------------------------------------

_PARENT = Spore(knowledge={}, from_agent="asker", to_agent="writer", created_at=_NOW)


@budget(800)
@given(st.one_of(mutated(REPLY_SEEDS), xml_soup, st.binary(max_size=120)))
@example(b'<x expires_in="nan">1</x>')
@example(b'<x expires_in="1e400">1</x>')
@example(b'<x expires_in="99999999999999">1</x>')
@example(b'<x priority="99999999999999999999999">1</x>')
def test_fuzz_xml_replies(text: bytes | str) -> None:
    emit = Emit(channel="files")
    spores = expect_only(SporeError, lambda: shape_replies(
        text, parent=_PARENT, agent="writer", emit=emit))
    for spore in spores or []:
        assert isinstance(spore, Spore)
        assert spore.from_agent == "writer"


@property_budget(300)
@given(xml_soup)
def test_parse_payloads_of_any_text_raises_only_spore_error(text: str) -> None:
    expect_only(SporeError, lambda: parse_payloads(text, max_depth=8))


# -- the XML envelope -------------------------------------------------------------------------


@budget(800)
@given(st.one_of(mutated(XML_SEEDS), xml_soup, st.binary(max_size=120)))
@example(XML_SEEDS[0].replace(b'priority="5"', b'priority="55"'))
@example(XML_SEEDS[0].replace(b'created_at="2026', b'created_at="0001'))
def test_fuzz_xml_envelope(data: bytes | str) -> None:
    expect_only(SporeError, lambda: spore_from_xml(data))


# -- the AMQP message -------------------------------------------------------------------------


@budget(1000)
@given(amqp_messages())
@example((b"{}", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a",
                  "priority": 10**30}))
@example((b"{}", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a",
                  "created_at": "0001-01-01T00:00:00"}))
def test_fuzz_amqp_message(message: tuple[bytes, Any]) -> None:
    body, headers = message
    expect_only(SporeError, lambda: spore_from_amqp(body, headers))


# -- organism YAML ----------------------------------------------------------------------------


def _fake_resolver(ref: str, base_dir: Path, *, reload: bool = False,
                   from_file: bool = True) -> Callable[..., Any]:
    """Stand-in for handler imports: fuzzed module names must never import real modules."""
    if ref.startswith(("examples.wordcount.agents:", "small_handlers:", "m:")):
        return lambda spore, ctx: None
    raise HandlerImportError(f"handler {ref!r} does not import (fuzzing)")


@pytest.fixture
def no_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "resolve_handler", _fake_resolver)


@budget(400)
@given(st.one_of(mutated(YAML_SEEDS), st.binary(max_size=120), st.text(max_size=120)))
@example(b"a: &a [*a]")
@example(b"agents: &a {x: *a}")
@example(b"[" * 5000)
@example(b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
         b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
         b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
         b"g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n")
@example(b"!!python/object/apply:os.system ['echo hacked']")
@example(b"agents: {a: {handler: m:f}}\nlimits: {max_depth: 100000}")
@example(b"agents: {a: {handler: m:f, timeout: 1e999}}")
@example(b"agents: {a: {handler: m:f, retry: {backoff: 99999999999999999999h}}}")
@example(b"agents: {a: {handler: m:f}}\nlimits: {max_spore_bytes: 99999999999999999999GiB}")
def test_fuzz_organism_yaml(no_imports: None, text: bytes | str) -> None:
    spec = expect_only(ConfigError, lambda: organism_from_text(text, base_dir=ROOT))
    if spec is not None:
        assert spec.agents
