"""XML under stress: reading is linear in the input, elements and attributes are capped
(``limits.max_xml_elements``, ``limits.max_xml_attributes``), and a large reply is parsed
on a worker thread, inside the producing handler's timeout, never on the event loop.

The regressions here took 46 s (90,000 attributes on one element: lxml looks each
attribute's value up by name) and 52 s (an end tag of 200,000 name characters without
its ``>``: the scanner's regular expression backtracked). Their timeouts are backstops
only, an order of magnitude above what the linear code needs on a loaded machine.
"""

from __future__ import annotations

import inspect
import threading

import pytest

from sporeflow.config import ConfigError, Limits, SporeError
from sporeflow.config.loader import organism_from_text
from sporeflow.pipeline import Organism
from sporeflow.steps import Spore, replies
from sporeflow.steps.envelope import xml_to_fields
from sporeflow.steps.replies import OFFLOAD_XML_BYTES, shape_replies, shape_replies_off_loop
from sporeflow.steps.xmlpayload import XmlPayloadError, parse_payloads

ATTRIBUTES = 90_000
PARENT = Spore(knowledge={}, from_agent="cli", to_agent="llm")


def attribute_heavy(count: int = ATTRIBUTES) -> str:
    """One element with ``count`` attributes: about 1 MiB at 90,000."""
    return "<report " + " ".join(f'a{i}="{i % 10}"' for i in range(count)) + "/>"


def elements(count: int) -> str:
    """``count`` elements in all: a list and its items."""
    return "<list>" + "<i>1</i>" * (count - 1) + "</list>"


def large_reply() -> str:
    """An ordinary XML reply over the size parsed off the loop."""
    items = "".join(f"<item>{i}</item>" for i in range(OFFLOAD_XML_BYTES // 10))
    return f"<items>{items}</items>"


# -- linear reading ---------------------------------------------------------------------


@pytest.mark.timeout(20)  # backstop: quadratic, this took 46 s
def test_one_megabyte_of_attributes_is_read_whole() -> None:
    text = attribute_heavy()
    assert 900_000 < len(text.encode()) <= 1 << 20
    [payload] = parse_payloads(text, max_attributes=ATTRIBUTES)
    assert len(payload.knowledge) == ATTRIBUTES
    assert list(payload.knowledge)[:2] == ["a0", "a1"]  # document order
    assert payload.knowledge["a89999"] == 9


@pytest.mark.timeout(20)  # backstop: quadratic, the same read of each element's attributes
def test_many_elements_with_many_attributes_are_read_whole() -> None:
    row = "<row " + " ".join(f'c{i}="{i}"' for i in range(40)) + "/>"
    [payload] = parse_payloads(f"<table>{row * 2_000}</table>", max_attributes=80_000)
    rows = payload.knowledge["row"]
    assert isinstance(rows, list)
    assert len(rows) == 2_000
    assert rows[-1] == {f"c{i}": i for i in range(40)}


@pytest.mark.timeout(20)  # backstop: 52 s at 200,000 characters, 208 s at 400,000
@pytest.mark.parametrize("name", ["a" * 400_000, "a:" * 200_000])
def test_an_unterminated_long_end_tag_is_scanned_in_linear_time(name: str) -> None:
    [payload] = parse_payloads(f"<r>x</{name}")
    assert payload.tag == "r"


@pytest.mark.timeout(20)
def test_envelope_knowledge_with_many_attributes_is_read_whole() -> None:
    envelope = Spore(knowledge={"x": 1}, from_agent="cli").to_xml()
    heavy = envelope.replace(b"<sf:knowledge>", attribute_heavy()[:-2].replace(
        "<report", "<sf:knowledge").encode() + b">")
    fields = xml_to_fields(heavy, max_attributes=ATTRIBUTES + 20)
    assert len(fields["knowledge"]) == ATTRIBUTES + 1  # the attributes, then <x>


@pytest.mark.timeout(20)
def test_envelope_root_with_many_attributes_is_refused_quickly() -> None:
    envelope = Spore(knowledge={}, from_agent="cli").to_xml()
    heavy = envelope.replace(b"<sf:spore ", f"<sf:spore {attribute_heavy()[8:-2]} ".encode())
    with pytest.raises(SporeError):
        xml_to_fields(heavy, max_attributes=ATTRIBUTES + 20)


# -- the caps ---------------------------------------------------------------------------


@pytest.mark.parametrize(("xml", "cap", "what"), [
    (attribute_heavy(101), {"max_attributes": 100}, "attributes"),
    (elements(101), {"max_elements": 100}, "elements"),
])
def test_over_the_cap_is_refused_naming_limit_count_and_fix(
        xml: str, cap: dict[str, int], what: str) -> None:
    with pytest.raises(XmlPayloadError) as caught:
        parse_payloads(xml, **cap)
    message = str(caught.value)
    assert f"101 {what}" in message
    assert f"limits.max_xml_{what}=100" in message
    assert f"raise limits.max_xml_{what}" in message
    assert isinstance(caught.value, SporeError)


def test_exactly_the_cap_is_accepted() -> None:
    [payload] = parse_payloads(elements(100), max_elements=100)
    assert len(payload.knowledge["i"]) == 99
    [payload] = parse_payloads(attribute_heavy(100), max_attributes=100)
    assert len(payload.knowledge) == 100


def test_the_default_refuses_the_attribute_heavy_reply() -> None:
    with pytest.raises(XmlPayloadError, match=r"90000 attributes, over limits\."
                                              r"max_xml_attributes=50000"):
        parse_payloads(attribute_heavy())


def test_the_parser_defaults_are_the_organism_defaults() -> None:
    parameters = inspect.signature(parse_payloads).parameters
    assert parameters["max_elements"].default == Limits().max_xml_elements
    assert parameters["max_attributes"].default == Limits().max_xml_attributes


def test_envelope_over_the_element_cap_is_refused() -> None:
    envelope = Spore(knowledge={"i": list(range(50))}, from_agent="cli").to_xml()
    with pytest.raises(XmlPayloadError, match="elements, over max_elements=20"):
        xml_to_fields(envelope, max_elements=20)


def test_xml_limits_are_read_from_the_organism_file() -> None:
    spec = organism_from_text("agents: {}\nlimits: {max_xml_elements: 500, "
                              "max_xml_attributes: 20}\n")
    assert (spec.limits.max_xml_elements, spec.limits.max_xml_attributes) == (500, 20)
    with pytest.raises(ConfigError,
                       match="limits.max_xml_attributes: expected a positive integer, got 0"):
        organism_from_text("agents: {}\nlimits: {max_xml_attributes: 0}\n")


# -- off the loop -----------------------------------------------------------------------


def test_small_xml_reply_is_shaped_inline() -> None:
    shaped = shape_replies_off_loop("<note>hi</note>", parent=PARENT, agent="llm", emit=None)
    assert isinstance(shaped, list)
    # The mapping would write #text as a child: the document as written is kept.
    assert [(s.knowledge, s.metadata) for s in shaped] == [
        ({"#text": "hi"}, {"kind": "note", "xml": "<note>hi</note>"})]


def test_dict_reply_is_shaped_inline() -> None:
    shaped = shape_replies_off_loop({"a": 1}, parent=PARENT, agent="llm", emit=None)
    assert isinstance(shaped, list)
    assert shaped[0].knowledge == {"a": 1}


async def test_large_xml_reply_is_parsed_on_a_worker_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []

    def spy(*args: object, **kwargs: int) -> object:
        threads.append(threading.get_ident())
        return parse_payloads(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(replies, "parse_payloads", spy)
    shaped = shape_replies_off_loop(large_reply(), parent=PARENT, agent="llm", emit=None)
    assert inspect.isawaitable(shaped)
    assert not threads  # nothing parsed yet: the work is in the awaitable
    [reply] = await shaped
    assert threads
    assert threads[0] != threading.get_ident()
    assert reply.metadata == {"kind": "items"}
    assert len(reply.knowledge["item"]) > 6000
    assert reply.from_agent == "llm"
    assert reply.thread_id == PARENT.id


async def test_an_iterable_holding_a_large_reply_defers_and_keeps_the_order() -> None:
    shaped = shape_replies_off_loop([{"a": 1}, large_reply(), "<b>2</b>", None],
                                    parent=PARENT, agent="llm", emit=None)
    assert inspect.isawaitable(shaped)
    spores = await shaped
    assert [s.metadata.get("kind") for s in spores] == [None, "items", "b"]


async def test_a_bad_item_after_a_large_reply_is_named_by_its_place() -> None:
    shaped = shape_replies_off_loop(iter([large_reply(), "<b>2</b>", 3]), parent=PARENT,
                                    agent="llm", emit=None)
    assert inspect.isawaitable(shaped)
    with pytest.raises(SporeError, match="returned a list_iterator whose item 2 is an int, 3"):
        await shaped


async def test_the_limits_apply_off_the_loop_too() -> None:
    text = large_reply()
    shaped = shape_replies_off_loop(text, parent=PARENT, agent="llm", emit=None,
                                    limits=Limits(max_xml_elements=100))
    assert inspect.isawaitable(shaped)
    with pytest.raises(XmlPayloadError, match="over limits.max_xml_elements=100"):
        await shaped
    with pytest.raises(XmlPayloadError, match="over limits.max_xml_attributes=10"):
        shape_replies(attribute_heavy(11), parent=PARENT, agent="llm", emit=None,
                      limits=Limits(max_xml_attributes=10))


def spy_on_parsing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads ``parse_payloads`` runs on, as the lanes call it."""
    threads: list[int] = []

    def spy(*args: object, **kwargs: int) -> object:
        threads.append(threading.get_ident())
        return parse_payloads(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(replies, "parse_payloads", spy)
    return threads


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_agents_large_xml_reply_is_parsed_off_the_loop(
        monkeypatch: pytest.MonkeyPatch, streamed: bool) -> None:
    threads = spy_on_parsing(monkeypatch)
    got: list[Spore] = []

    async def writer(spore: Spore, ctx: object) -> object:
        if not streamed:
            return large_reply()

        async def stream() -> object:
            yield "<small>1</small>"
            yield large_reply()
        return stream()

    async def sink(spore: Spore, ctx: object) -> None:
        got.append(spore)

    organism = Organism.from_dict({"agents": {
        "writer": {"handler": writer, "emit": {"to": "sink"}, "timeout": "30s"},
        "sink": {"handler": sink}}})
    async with organism.running():
        await organism.send("writer", {})
        await organism.idle()
    assert sorted(s.metadata["kind"] for s in got) == (["items", "small"] if streamed
                                                      else ["items"])
    loop_thread = threading.get_ident()
    assert threads[-1] != loop_thread  # the large one, on a worker thread
    assert all(thread == loop_thread for thread in threads[:-1])  # the small one, inline
