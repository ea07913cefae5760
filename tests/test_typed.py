"""Typed payloads: a handler annotated with a dataclass or pydantic model gets that type,
checked by the chain's schema stage, and what it returns is dumped to knowledge."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sporeflow.config import ConfigError, load_organism, organism_from_dict
from sporeflow.config import typed as typed_module
from sporeflow.config.typed import TYPE_LANGUAGE, payload_type, to_knowledge
from sporeflow.pipeline import Organism
from sporeflow.steps import Spore
from sporeflow.testing import TestOrganism
from tests import typed_handlers as h


@pytest.fixture(autouse=True)
def _fresh_seen() -> None:
    h.SEEN.clear()


def _order(*counts: Any) -> dict[str, Any]:
    return {"customer": "ada", "items": [{"sku": f"s{i}", "count": c}
                                         for i, c in enumerate(counts)]}


async def test_typed_handler_gets_its_dataclass_and_refuses_a_malformed_payload() -> None:
    async with TestOrganism({"agents": {"shop": {"handler": h.take_order}}}) as t:
        await t.send("shop", _order(2, "3"))  # "3": pydantic's lax mode makes it 3
        await t.send("shop", _order(2, "many"))
        await t.send("shop", {"items": []})
        await t.idle()
        assert h.SEEN == [h.Order("ada", [h.Item("s0", 2), h.Item("s1", 3)])]
        refusals = sorted((letter.reason, letter.error) for letter in t.dead_letters)
    assert [reason for reason, _ in refusals] == ["schema", "schema"]
    assert "knowledge.items[1].count: Input should be a valid integer" in refusals[0][1] + \
        refusals[1][1]
    assert any("knowledge.customer: Field required" in error for _, error in refusals)
    assert all("of agent 'shop'" in error and "typed_handlers.Order" in error
               for _, error in refusals)


async def test_a_returned_model_is_serialised_to_knowledge() -> None:
    async with TestOrganism({"agents": {"shop": {"handler": h.take_order}}}) as t:
        await t.send("shop", _order(2, 5))
        await t.idle()
        assert t.knowledge("shop") == [{"customer": "ada", "total": 7}]


async def test_a_list_of_dataclasses_and_a_stream_of_them_become_knowledge_each() -> None:
    agents = {"counter": {"handler": h.count_items}, "streamer": {"handler": h.stream_items}}
    async with TestOrganism({"agents": agents}) as t:
        await t.send("counter", _order(1, 2))
        await t.send("streamer", _order(3, 4))
        await t.idle()
        assert t.knowledge("counter") == [{"sku": "s0", "count": 1}, {"sku": "s1", "count": 2}]
        assert t.knowledge("streamer") == [{"sku": "s0", "count": 3}, {"sku": "s1", "count": 4}]


async def test_a_class_agent_with_a_typed_handle_method_gets_the_type() -> None:
    async with TestOrganism({"agents": {"clerk": {"handler": h.Clerk}}}) as t:
        await t.send("clerk", _order(1))
        await t.send("clerk", {"customer": 1})
        await t.idle()
        assert h.SEEN == [h.Order("ada", [h.Item("s0", 1)])]
        assert t.knowledge("clerk") == [{"customer": "ada", "total": 1}]
        assert [letter.reason for letter in t.dead_letters] == ["schema"]


async def test_plain_handlers_get_the_spore_unchanged() -> None:
    async with TestOrganism({"agents": {"plain": {"handler": h.plain}}}) as t:
        await t.send("plain", {"anything": [1, "x"]})
        await t.idle()
    assert isinstance(h.SEEN[0], Spore)
    assert h.SEEN[0].knowledge == {"anything": [1, "x"]}
    spec = organism_from_dict({"agents": {"plain": {"handler": h.plain}}})
    assert spec.agents["plain"].payloads is None
    assert spec.agents["plain"].schema is None


def test_only_a_dataclass_or_model_on_the_first_parameter_makes_a_handler_typed() -> None:
    def spore_annotated(spore: Spore, ctx: Any) -> None: ...

    def dict_annotated(spore: dict[str, Any], ctx: Any) -> None: ...

    def ctx_typed(spore: Any, ctx: h.Item) -> None: ...

    assert [payload_type(f) for f in (spore_annotated, dict_annotated, ctx_typed, h.plain)] \
        == [None, None, None, None]
    assert payload_type(h.take_order) is h.Order
    assert payload_type(h.on_refund) is h.Refund
    assert payload_type(h.Clerk) is h.Order


async def test_handlers_are_chosen_by_payload_type_and_a_misfit_is_dead_lettered() -> None:
    agents = {"shop": {"handlers": [h.take_order, h.on_refund]}}
    async with TestOrganism({"agents": agents}) as t:
        await t.send("shop", {"order_id": 7, "amount": 2.5, "reason": "broken"})
        await t.send("shop", _order(4))
        await t.send("shop", {"order_id": "seven", "amount": 1, "reason": "late"})
        await t.idle()
        assert h.SEEN == [h.Refund(order_id=7, amount=2.5, reason="broken"),
                          h.Order("ada", [h.Item("s0", 4)])]
        assert sorted(map(str, t.knowledge("shop"))) == sorted(map(str, [
            {"refunded": 2.5, "spore": True}, {"customer": "ada", "total": 4}]))
        [letter] = t.dead_letters
    assert letter.reason == "schema"
    # Located at the type it fits best, naming every type it was tried as.
    assert letter.error.startswith("SchemaViolation: knowledge.order_id: Input should be a "
                                   "valid integer")
    assert "(as Refund; it fits none of Order, Refund)" in letter.error


def test_the_generated_json_schema_matches_the_type() -> None:
    spec = organism_from_dict({"agents": {"shop": {"handler": h.take_order},
                                          "both": {"handlers": [h.take_order, h.on_refund]}}})
    shop = spec.agents["shop"]
    assert shop.schema is not None
    assert shop.schema.language == TYPE_LANGUAGE
    assert shop.payloads is not None
    schema = shop.payloads.json_schema()
    assert schema["required"] == ["customer", "items"]
    assert set(schema["properties"]) == {"customer", "items", "note"}
    item = schema["$defs"]["Item"]
    assert item["properties"] == {"sku": {"title": "Sku", "type": "string"},
                                  "count": {"title": "Count", "type": "integer"}}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(to_knowledge(h.Order("ada", [h.Item("a", 1)])))
    assert not validator.is_valid({"customer": "ada", "items": [{"sku": "a"}]})
    both = spec.agents["both"].payloads
    assert both is not None
    assert [branch["$ref"] for branch in both.json_schema()["anyOf"]] == [
        "#/$defs/Order", "#/$defs/Refund"]
    assert spec.agents["both"].handler_ref == (
        "tests.typed_handlers:take_order, tests.typed_handlers:on_refund")


def _write(tmp_path: Path, organism: str) -> Path:
    (tmp_path / "shopmod.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Order:\n    sku: str\n    qty: int\n"
        "@dataclass\nclass Refund:\n    order_id: int\n    amount: float\n"
        "async def on_order(order: Order, ctx): return {'qty': order.qty}\n"
        "async def on_refund(refund: Refund, ctx): return refund\n"
        "async def untyped(spore, ctx): return None\n")
    path = tmp_path / "organism.yaml"
    path.write_text(organism)
    return path


async def test_handlers_listed_in_yaml_are_imported_and_dispatched(tmp_path: Path) -> None:
    path = _write(tmp_path, "agents:\n  shop:\n    handlers: [shopmod:on_order, "
                            "shopmod:on_refund]\n")
    spec = load_organism(path)
    assert spec.agents["shop"].handler_ref == "shopmod:on_order, shopmod:on_refund"
    async with TestOrganism(path) as t:
        await t.send("shop", {"order_id": 1, "amount": 3})
        await t.send("shop", {"sku": "x", "qty": 2})
        await t.idle()
        assert sorted(map(str, t.knowledge("shop"))) == sorted(map(str, [
            {"order_id": 1, "amount": 3.0}, {"qty": 2}]))


@pytest.mark.parametrize(("agent", "where", "message"), [
    ("{handlers: [shopmod:on_order, shopmod:untyped]}", "agents.shop.handlers",
     "'shopmod:untyped' takes no typed payload"),
    ("{handlers: [shopmod:on_order, shopmod:on_order]}", "agents.shop.handlers",
     "two handlers take Order"),
    ("{handler: shopmod:on_order, schema: order.json}", "agents.shop.schema",
     "generated from its payload type (Order); remove schema:"),
    ("{handler: shopmod:on_order, cpu_bound: true}", "agents.shop.cpu_bound",
     "a typed handler cannot be cpu_bound"),
    ("{handlers: [shopmod:on_order], gather: {to: [x]}}", "agents.shop",
     "give one of handler, handlers, gather or sequence"),
    ("{handler: shopmod:on_order, key: knowledge.customer}", "agents.shop.key",
     "a typed handler cannot be keyed"),
])
def test_declarations_that_cannot_work_are_located_problems(
        tmp_path: Path, agent: str, where: str, message: str) -> None:
    (tmp_path / "order.json").write_text("{}")
    path = _write(tmp_path, f"agents:\n  x: {{handler: shopmod:untyped}}\n  shop: {agent}\n")
    with pytest.raises(ConfigError) as caught:
        load_organism(path)
    text = str(caught.value)
    assert f"{where}: " in text, text
    assert message in text, text


def test_without_pydantic_a_typed_handler_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(typed_module, "has_modules", lambda *names: False)
    path = _write(tmp_path, "agents:\n  shop: {handler: shopmod:on_order}\n")
    with pytest.raises(ConfigError) as caught:
        load_organism(path)
    assert ("agents.shop.handler: a typed handler (a dataclass or model payload) needs "
            "pydantic, which is not installed; install it with: "
            "pip install 'sporeflow[typed]'") in str(caught.value)


async def test_an_edit_to_any_module_of_a_handlers_list_is_reimported_by_reload(
        tmp_path: Path, handler_modules: Callable[[str, str | None], str]) -> None:
    orders = handler_modules(
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Order:\n    sku: str\n"
        "async def on_order(order: Order, ctx): return {'v': 1}\n", None)
    refund = ("from dataclasses import dataclass\n"
              "@dataclass\nclass Refund:\n    amount: int\n"
              "async def on_refund(refund: Refund, ctx): return {'v': 1}\n")
    refunds = handler_modules(refund, None)
    path = tmp_path / "organism.yaml"
    path.write_text(f"agents:\n  shop: {{handlers: [{orders}:on_order, {refunds}:on_refund]}}\n")
    organism = Organism.from_file(path)
    async with organism.running():
        handler_modules(refund.replace("{'v': 1}", "{'v': 2}"), refunds)
        report = await organism.reload()
        answer = await organism.request("shop", {"amount": 3}, timeout=5)
    assert report.reimported == (refunds,)
    assert dict(report.changed) == {"shop": ("handler",)}
    assert answer.knowledge == {"v": 2}


async def test_a_payload_is_validated_once_on_its_way_to_the_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema stage's selection is the one the invoker uses: pydantic ran twice per
    spore before (in the stage, then again in the invoker)."""
    calls: list[type] = []
    validate = typed_module._validate

    def counted(kind: type, knowledge: Any, label: str) -> Any:
        calls.append(kind)
        return validate(kind, knowledge, label)

    monkeypatch.setattr(typed_module, "_validate", counted)
    async with TestOrganism({"agents": {"shop": {"handler": h.take_order}}}) as t:
        for n in range(20):
            await t.send("shop", _order(n + 1))
        await t.idle()
    assert len(h.SEEN) == 20
    assert len(calls) == 20


TYPE_CHECKING_CONTEXT = '''
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sporeflow import Context

@dataclass
class Order:
    customer: str
    total: int

async def on_order(order: Order, ctx: Context) -> dict:
    return {"customer": order.customer, "kind": type(order).__name__}
'''


async def test_a_typed_handler_whose_context_type_is_only_for_type_checkers_stays_typed(
        tmp_path: Path, handler_modules: Callable[..., str]) -> None:
    # Found by a new user: `Context` imported under TYPE_CHECKING (as linters ask) made
    # get_type_hints fail on the whole handler, which was then taken as plain: check
    # said ok, and the handler got a Spore ('Spore' object has no attribute 'customer').
    module = handler_modules(TYPE_CHECKING_CONTEXT)
    (tmp_path / "organism.yaml").write_text(
        f"agents:\n  till: {{handler: {module}:on_order}}\n")
    organism = Organism.from_file(tmp_path / "organism.yaml")
    assert payload_type(organism.spec.agents["till"].handler).__name__ == "Order"
    async with organism.running():
        answer = await organism.request("till", {"customer": "ada", "total": 3})
    assert answer.knowledge == {"customer": "ada", "kind": "Order"}
