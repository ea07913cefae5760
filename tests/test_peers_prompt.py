"""``ctx.peers_prompt()``: the peers an agent may address, what they accept, an example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.agents.peers import example_payload

COUNTS_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {"file": {"type": "string", "description": "the file's path"},
                   "counts": {"type": "object"}},
}
XSD = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="note" type="xs:string"/>
</xs:schema>"""


async def tell_peers(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"prompt": ctx.peers_prompt()}


@pytest.fixture
def organism(tmp_path: Path) -> Organism:
    (tmp_path / "counts.json").write_text(json.dumps(COUNTS_SCHEMA))
    (tmp_path / "note.xsd").write_text(XSD)
    return Organism.from_dict({"agents": {
        "writer": {"handler": tell_peers, "peers": ["counter", "reporter", "chain", "scribe"]},
        "anyone": {"handler": tell_peers},
        "loner": {"handler": tell_peers, "peers": []},
        "counter": {"handler": tell_peers, "description": "Counts words in a file.",
                    "schema": "counts.json"},
        "reporter": {"handler": tell_peers, "description": "Prints a report."},
        "chain": {"sequence": ["counter", "reporter"]},
        "scribe": {"handler": tell_peers, "schema": "note.xsd"},
        "hidden": {"handler": tell_peers, "description": "Not a peer of the writer."},
    }}, base_dir=tmp_path)


async def prompt_of(organism: Organism, agent: str) -> str:
    async with organism.running():
        answer = await organism.request(agent, {}, timeout=5)
    text: str = answer.knowledge["prompt"]
    return text


async def test_prompt_lists_each_peer_with_what_it_accepts_and_an_example(
        organism: Organism) -> None:
    text = await prompt_of(organism, "writer")
    assert text.splitlines() == [
        "You are 'writer'. You may address these agents; send each a JSON object as its "
        "knowledge:",
        "- chain: passes what it gets through counter -> reporter",
        "  accepts: an object with file (string, required): the file's path; counts (object)",
        '  example: {"file": "text"}',
        "- counter: Counts words in a file.",
        "  accepts: an object with file (string, required): the file's path; counts (object)",
        '  example: {"file": "text"}',
        "- reporter: Prints a report.",
        "  accepts: any JSON object",
        "- scribe: (no description)",
        "  accepts: XML valid against note.xsd: <note> (string)",
        "  example: <note>text</note>",
    ]


async def test_without_peers_every_other_agent_is_described(organism: Organism) -> None:
    text = await prompt_of(organism, "anyone")
    assert "- hidden: Not a peer of the writer." in text
    assert "- anyone:" not in text


async def test_an_agent_with_no_peers_is_told_so(organism: Organism) -> None:
    assert await prompt_of(organism, "loner") == "You (loner) may not address any other agent."


@pytest.mark.parametrize(("schema", "example"), [
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "examples": [{"a": 7}]},
     {"a": 7}),
    ({"type": "object", "properties": {"kind": {"enum": ["x", "y"]},
                                       "tags": {"type": "array", "items": {"type": "string"}},
                                       "ok": {"type": ["boolean", "null"]}}},
     {"kind": "x", "tags": ["text"], "ok": True}),
    ({"$defs": {"point": {"type": "object", "required": ["x"],
                          "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}},
      "type": "object", "properties": {"at": {"$ref": "#/$defs/point"}}},
     {"at": {"x": 1.5}}),
    ({"oneOf": [{"const": 3}, {"type": "string"}]}, 3),
])
def test_example_payload_fits_the_schema(schema: dict[str, Any], example: Any) -> None:
    assert example_payload(schema) == example


async def test_typed_peers_show_each_type_s_fields_and_an_example() -> None:
    from tests import typed_handlers as h

    organism = Organism.from_dict({"agents": {
        "writer": {"handler": tell_peers, "peers": ["shop", "till"]},
        "shop": {"handlers": [h.take_order, h.on_refund]},
        "till": {"handler": h.take_order, "description": "Rings orders up."}}})
    assert (await prompt_of(organism, "writer")).splitlines()[1:] == [
        "- shop: (no description)",
        "  accepts one of:",
        "  - Order: an object with customer (string, required); items (list of Item, "
        "required); note (string/null)",
        '    example: {"customer": "text", "items": [{"count": 1, "sku": "text"}]}',
        "  - Refund: an object with order_id (integer, required); amount (number, required); "
        "reason (string, required)",
        '    example: {"amount": 1.5, "order_id": 1, "reason": "text"}',
        "- till: Rings orders up.",
        "  accepts: an object with customer (string, required); items (list of Item, "
        "required); note (string/null)",
        '  example: {"customer": "text", "items": [{"count": 1, "sku": "text"}]}',
    ]


async def test_an_xsd_peer_shows_its_element_s_fields_and_an_example_element() -> None:
    schemas = Path(__file__).parent / "organisms" / "schemas"
    organism = Organism.from_dict({"agents": {
        "writer": {"handler": tell_peers, "peers": ["shipping"]},
        "shipping": {"handler": tell_peers, "schema": "order.xsd"}}}, base_dir=schemas)
    assert (await prompt_of(organism, "writer")).splitlines()[2:] == [
        "  accepts: XML valid against order.xsd: <order> with id (positiveInteger); "
        "line (repeated): {sku (string); qty (positiveInteger)}",
        "  example: <order><id>1</id><line><sku>text</sku><qty>1</qty></line></order>",
    ]


async def test_the_prompt_describes_the_schemas_checked_at_load_not_the_files_now(
        organism: Organism, tmp_path: Path) -> None:
    # Found by an attacker: the prompt read each schema file again, unbounded and unchecked
    # (a file swapped after load for /dev/zero's link ran out of memory); the spores are
    # checked against what was loaded, and the prompt now describes that.
    (tmp_path / "counts.json").unlink()
    (tmp_path / "counts.json").symlink_to("/dev/zero")
    (tmp_path / "note.xsd").write_text("<not a schema")
    text = await prompt_of(organism, "writer")
    assert "  accepts: an object with file (string, required): the file's path; counts " \
           "(object)" in text
    assert "  accepts: XML valid against note.xsd: <note> (string)" in text
