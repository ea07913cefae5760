"""An unclosed payload does not swallow the next one: an element whose end tag never
comes ends before a start tag of its own name, so the next payload is recovered and fans
out to its own recipient."""

from __future__ import annotations

from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.steps.xmlpayload import parse_payloads

COMPACT = '<note to="a"><title>x</title><note to="b"><title>z</title></note>'


@pytest.mark.parametrize("text", [
    COMPACT,
    '<note to="a"><title>x<note to="b"><title>z</title></note>',     # its child unclosed too
    '<note to="a">\n  <title>x</title>\n  <note to="b">\n  <title>z</title>\n</note>',
    '<note to="a"><title>x</title><note to="b"/>',
])
def test_the_next_payload_of_the_same_name_is_recovered(text: str) -> None:
    first, second = parse_payloads(text)
    assert (first.attrs, first.knowledge) == ({"to": "a"}, {"title": "x"})
    assert second.attrs == {"to": "b"}
    assert second.knowledge in ({"title": "z"}, {})


def test_a_closed_element_may_still_hold_one_of_its_own_name() -> None:
    [outer] = parse_payloads("<part><name>a</name><part><name>b</name></part></part>")
    assert outer.knowledge == {"name": "a", "part": {"name": "b"}}


async def test_an_unclosed_payload_and_the_next_reach_their_own_recipients() -> None:
    received: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    async def writer(spore: Spore, ctx: Any) -> str:
        return COMPACT

    def recorder(name: str) -> Any:
        async def record(spore: Spore, ctx: Any) -> None:
            received[name].append(spore.knowledge)
        return record

    organism = Organism(organism_from_dict({"agents": {
        "writer": {"handler": writer}, "a": {"handler": recorder("a")},
        "b": {"handler": recorder("b")}}}))
    async with organism.running():
        await organism.send("writer", {})
        await organism.idle()
    assert list(organism.dead_letters) == []
    assert received == {"a": [{"title": "x"}], "b": [{"title": "z"}]}
