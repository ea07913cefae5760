"""``sporeflow schema --agent``: the schema made from a typed agent's payload types (JSON
Schema or XSD), a declared schema file as written, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from lxml import etree

from sporeflow.pipeline.cli.main import cli

SCHEMAS = Path(__file__).parent / "organisms" / "schemas"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def organism(tmp_path: Path) -> Path:
    (tmp_path / "shop.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Order:\n    sku: str\n    qty: int\n"
        "async def take(order: Order, ctx): return None\n"
        "async def plain(spore, ctx): return None\n")
    (tmp_path / "order.xsd").write_text((SCHEMAS / "order.xsd").read_text())
    path = tmp_path / "organism.yaml"
    path.write_text("agents:\n  shop: {handler: shop:take}\n  free: {handler: shop:plain}\n"
                    "  shipping: {handler: shop:plain, schema: order.xsd}\n")
    return path


def test_a_typed_agent_s_json_schema_is_made_from_its_type(organism: Path) -> None:
    code, out, err = invoke("schema", str(organism), "--agent", "shop")
    assert code == 0, err
    schema = json.loads(out)
    assert schema["title"] == "Order"
    assert schema["required"] == ["sku", "qty"]
    assert schema["properties"]["qty"]["type"] == "integer"


def test_a_typed_agent_s_xsd_is_made_from_its_type(organism: Path) -> None:
    code, out, err = invoke("schema", str(organism), "--agent", "shop", "--xsd")
    assert code == 0, err
    xsd = etree.XMLSchema(etree.fromstring(out.encode()))
    assert xsd.validate(etree.fromstring(b"<Order><qty>2</qty><sku>a</sku></Order>"))
    assert not xsd.validate(etree.fromstring(b"<Order><qty>two</qty><sku>a</sku></Order>"))


def test_a_declared_schema_file_is_printed_as_written(organism: Path) -> None:
    code, out, _ = invoke("schema", str(organism), "--agent", "shipping", "--xsd")
    assert code == 0
    assert out == (SCHEMAS / "order.xsd").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (("--agent", "shp"), "SporeflowError: --agent 'shp': no such agent in 'organism' (did you mean "
                         "'shop'?)"),
    (("--agent", "free"), "SporeflowError: agent 'free' declares no schema and takes no typed "
                          "payload: it accepts any JSON object"),
    (("--agent", "shipping"), "SporeflowError: the schema of agent 'shipping' is order.xsd, "
                              "written by hand: sporeflow makes a JSON Schema only from "
                              "payload types; add --xsd"),
])
def test_what_has_no_schema_is_refused_in_one_line(
        organism: Path, args: tuple[str, ...], message: str) -> None:
    code, _, err = invoke("schema", str(organism), *args)
    assert code == 1
    assert err.strip() == message
