"""Message schemas: compiled at load, checked on delivery, refusals dead-lettered."""

from __future__ import annotations

import json
import shutil
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import (
    ConfigError,
    SchemaViolation,
    load_organism,
    load_schema,
    organism_from_dict,
    schemas,
)
from sporeflow.config.schemas import SchemaFileError, field_path
from sporeflow.pipeline import Organism, Spore

SCHEMAS = Path(__file__).parent / "organisms" / "schemas"


def _organism(extra: dict[str, Any] | None = None) -> tuple[Organism, dict[str, list[Spore]]]:
    """The schema fixture organism, with handlers that record what they receive."""
    seen: dict[str, list[Spore]] = defaultdict(list)

    def recorder(name: str) -> Any:
        async def record(spore: Spore, ctx: Any) -> None:
            seen[name].append(spore)
        return record

    agents: dict[str, Any] = {
        "orders": {"handler": recorder("orders"), "schema": "orders.json"},
        "strict": {"handler": recorder("strict"), "subscribe": ["news"],
                   "schema": "headline.yaml"},
        "loose": {"handler": recorder("loose"), "subscribe": ["news"]},
        "shipping": {"handler": recorder("shipping"), "schema": "order.xsd"},
        **(extra or {}),
    }
    spec = organism_from_dict({"organism": {"name": "schemas"}, "channels": {"news": {}},
                               "agents": agents}, base_dir=SCHEMAS)
    return Organism(spec), seen


def _order(*counts: Any) -> dict[str, Any]:
    return {"customer": "ada", "items": [{"sku": f"s{i}", "count": c}
                                         for i, c in enumerate(counts)]}


async def test_json_schema_agent_takes_valid_spores_and_dead_letters_the_field() -> None:
    organism, seen = _organism()
    async with organism.running():
        await organism.send("orders", _order(1, 2, 3))
        await organism.send("orders", _order(1, 2, "x"))
        await organism.idle()
    assert [s.knowledge for s in seen["orders"]] == [_order(1, 2, 3)]
    [letter] = organism.dead_letters
    assert letter.reason == "schema"
    assert letter.spore.knowledge == _order(1, 2, "x")
    assert "knowledge.items[2].count: 'x' is not of type 'integer'" in letter.error
    assert "orders.json of agent 'orders'" in letter.error
    assert organism.stats()["dead_letters"]["by_reason"] == {"schema": 1}


async def test_json_schema_names_a_missing_property_at_its_parent() -> None:
    organism, _ = _organism()
    async with organism.running():
        await organism.send("orders", {"customer": "ada", "items": [{"sku": "a"}]})
        await organism.idle()
    [letter] = organism.dead_letters
    assert "knowledge.items[0]: 'count' is a required property" in letter.error


async def test_xsd_agent_checks_the_xml_form_under_the_kind() -> None:
    organism, seen = _organism()
    good = {"id": 7, "line": [{"sku": "123", "qty": 2}, {"sku": "b", "qty": 1}]}
    bad = {"id": 8, "line": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 0}]}
    async with organism.running():
        await organism.send("shipping", good, metadata={"kind": "order"})
        await organism.send("shipping", bad, metadata={"kind": "order"})
        await organism.idle()
    # "123" is a string in the knowledge: the XSD sees the text 123, a valid xs:string.
    assert [s.knowledge for s in seen["shipping"]] == [good]
    [letter] = organism.dead_letters
    assert letter.reason == "schema"
    assert "knowledge.line[1].qty: Element 'qty': '0' is not a valid value" in letter.error
    assert "order.xsd of agent 'shipping'" in letter.error


async def test_xsd_root_is_knowledge_when_the_spore_has_no_kind() -> None:
    organism, seen = _organism()
    async with organism.running():
        await organism.send("shipping", {"id": 7, "line": {"sku": "a", "qty": 1}})
        await organism.idle()
    assert seen["shipping"] == []
    [letter] = organism.dead_letters
    assert letter.error.startswith(
        "SchemaViolation: knowledge: Element 'knowledge': No matching global declaration")


async def test_xml_reply_spores_are_checked_and_the_sender_stats_show_refusals() -> None:
    reply = ('Here are the orders: <order to="shipping"><id>1</id><line><sku>a</sku>'
             '<qty>3</qty></line></order> and then <order to="shipping"><id>2</id>'
             '<line><sku>b</sku><qty>-1</qty></line>')

    async def clerk(spore: Spore, ctx: Any) -> str:
        return reply

    organism, seen = _organism({"clerk": {"handler": clerk}})
    async with organism.running():
        await organism.send("clerk", {"go": True})
        await organism.idle()
    assert [s.knowledge for s in seen["shipping"]] == [{"id": 1, "line": {"sku": "a", "qty": 3}}]
    [letter] = organism.dead_letters
    assert "knowledge.line.qty" in letter.error
    stats = organism.stats()["agents"]
    assert stats["clerk"]["refused_sent"] == 1
    assert stats["clerk"]["refused_by_reason"] == {"schema": 1}
    assert stats["orders"]["refused_by_reason"] == {}


async def test_broadcast_is_refused_only_to_the_subscriber_whose_schema_fails() -> None:
    async def editor(spore: Spore, ctx: Any) -> dict[str, Any]:
        return dict(spore.knowledge)

    organism, seen = _organism({"editor": {"handler": editor, "emit": {"channel": "news"}}})
    async with organism.running():
        await organism.send("editor", {"headline": "rain"})
        await organism.send("editor", {"headline": 5})
        await organism.idle()
    assert [s.knowledge for s in seen["loose"]] == [{"headline": "rain"}, {"headline": 5}]
    assert [s.knowledge for s in seen["strict"]] == [{"headline": "rain"}]
    [letter] = organism.dead_letters
    assert letter.reason == "schema"
    assert "knowledge.headline: 5 is not of type 'string'" in letter.error
    assert "of agent 'strict'" in letter.error
    assert organism.stats()["agents"]["editor"]["refused_by_reason"] == {"schema": 1}


async def test_agents_without_schemas_get_no_check() -> None:
    organism, seen = _organism()
    async with organism.running():
        await organism.broadcast({"anything": [1, {"goes": None}]}, channel="news")
        await organism.idle()
        checked = set(organism.wiring().schemas)
    assert checked == {"orders", "strict", "shipping"}
    assert [s.knowledge for s in seen["loose"]] == [{"anything": [1, {"goes": None}]}]


def test_bad_schema_files_are_located_config_errors_all_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_organism(SCHEMAS / "bad_schemas.yaml")
    found = {p.path: (p.line, p.column, p.message) for p in caught.value.problems}
    expected = {
        "agents.missing.schema": (4, 54, "does not exist; the path is relative to the"),
        "agents.broken_json.schema": (5, 58, "the schema is not JSON"),
        "agents.not_a_schema.schema": (6, 59, "not a valid JSON Schema: schema.type:"),
        "agents.unknown_draft.schema": (7, 60, "unknown $schema 'https://example.com/my"),
        "agents.remote_ref.schema": (8, 57, "points outside the schema file"),
        "agents.dangling_ref.schema": (9, 59, "'#/$defs/missing' points at nothing"),
        "agents.broken_xsd.schema": (10, 57, "not a valid XML Schema:"),
        "agents.unclosed_xsd.schema": (11, 59, "the XML Schema does not parse"),
        "agents.entities_xsd.schema": (12, 59, "refuses DTDs and entities"),
        "agents.includes_xsd.schema": (13, 59, "reads no other document"),
        "agents.wrong_suffix.schema": (14, 59, "name a JSON Schema (.json, .yaml, .yml)"),
    }
    assert set(found) == set(expected)
    for path, (line, column, hint) in expected.items():
        assert found[path][:2] == (line, column), path
        assert hint in found[path][2], path


def test_schema_is_compiled_at_load_and_an_edit_makes_the_agent_differ(tmp_path: Path) -> None:
    shutil.copy(SCHEMAS / "headline.yaml", tmp_path / "headline.yaml")
    (tmp_path / "organism.yaml").write_text(
        "agents:\n  strict: {handler: 'h:accept', schema: headline.yaml}\n")
    (tmp_path / "h.py").write_text("async def accept(spore, ctx): return None\n")
    first = load_organism(tmp_path / "organism.yaml")
    again = load_organism(tmp_path / "organism.yaml")
    assert first.agents["strict"] == again.agents["strict"]
    schema = first.agents["strict"].schema
    assert schema is not None
    assert (schema.language, schema.path) == ("json-schema", tmp_path / "headline.yaml")
    (tmp_path / "headline.yaml").write_text("type: object\nrequired: [title]\n")
    edited = load_organism(tmp_path / "organism.yaml")
    assert edited.agents["strict"] != first.agents["strict"]
    schema.check({"headline": "x"})  # the compiled schema keeps its own rules
    edited_schema = edited.agents["strict"].schema
    assert edited_schema is not None
    with pytest.raises(SchemaViolation, match=r"knowledge: 'title' is a required property"):
        edited_schema.check({"headline": "x"})


def test_deeply_nested_xsd_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / "deep.xsd"
    deep.write_text("<a>" * 10_000 + "</a>" * 10_000)
    with pytest.raises(SchemaFileError, match="does not parse: Excessive depth"):
        load_schema(deep)


def test_xsd_with_a_network_dtd_is_refused_without_connecting(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        xsd = tmp_path / "remote.xsd"
        xsd.write_text(f'<!DOCTYPE xs:schema SYSTEM "http://127.0.0.1:{port}/x.dtd">'
                       f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
        with pytest.raises(SchemaFileError, match="refuses DTDs and entities"):
            load_schema(xsd)
        with pytest.raises(BlockingIOError):
            server.accept()


def test_oversized_schema_file_is_refused_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schemas, "MAX_SCHEMA_BYTES", 64)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"description": "x" * 100}))
    with pytest.raises(SchemaFileError, match=r"is 1\d\d bytes, over the 64-byte cap"):
        load_schema(big)


def test_remote_refs_are_never_fetched() -> None:
    with pytest.raises(SchemaFileError, match="does not fetch or read"):
        load_schema(SCHEMAS / "remote_ref.json")


@pytest.mark.parametrize(("parts", "rendered"), [
    ((), "knowledge"),
    (("items", 2, "count"), "knowledge.items[2].count"),
    (("1 a", "é", "_x"), 'knowledge["1 a"]["é"]._x'),
])
def test_field_path_renders_keys_and_indexes(parts: tuple[Any, ...], rendered: str) -> None:
    assert field_path(parts) == rendered


def test_a_yaml_schema_with_an_alias_bomb_is_refused_as_the_organism_file_would_be(
        tmp_path: Path) -> None:
    # Found by an attacker: a .yaml schema was read with yaml.safe_load, without the
    # organism loader's check of aliases: nine levels of nine aliases hung `check`.
    lines = ["  a0: &a0 {type: string}"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("type: object\n$defs:\n" + "\n".join(lines) + "\n")
    with pytest.raises(SchemaFileError, match="aliases expand this value to over"):
        load_schema(bomb)
