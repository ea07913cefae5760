"""An XSD checks the XML as it was written (attributes stay attributes), while handlers
get the same JSON knowledge as before; a forged copy of the document is not believed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from click.testing import CliRunner

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.cli.main import cli
from sporeflow.steps import payload_from_xml

from .test_schemas import SCHEMAS

NOTE = '<note id="n1"><title>Spores</title><priority>2</priority></note>'


def _organism(extra: dict[str, Any] | None = None) -> tuple[Organism, dict[str, list[Spore]]]:
    seen: dict[str, list[Spore]] = defaultdict(list)

    async def record(spore: Spore, ctx: Any) -> None:
        seen["notes"].append(spore)

    agents: dict[str, Any] = {"notes": {"handler": record, "schema": "note.xsd",
                                        "subscribe": ["memo"]}, **(extra or {})}
    spec = organism_from_dict({"organism": {"name": "xsd"}, "channels": {"memo": {}},
                               "agents": agents}, base_dir=SCHEMAS)
    return Organism(spec), seen


async def test_an_xml_reply_with_attributes_passes_the_xsd_written_for_it() -> None:
    async def writer(spore: Spore, ctx: Any) -> str:
        return "Here it is: " + NOTE.replace("<note ", '<note to="notes" ')

    organism, seen = _organism({"writer": {"handler": writer}})
    async with organism.running():
        await organism.send("writer", {"go": True})
        await organism.idle()
    assert [letter.error for letter in organism.dead_letters] == []
    [spore] = seen["notes"]
    assert spore.knowledge == {"id": "n1", "title": "Spores", "priority": 2}  # unchanged
    assert spore.metadata["kind"] == "note"


async def test_the_written_document_is_checked_and_its_faults_are_named() -> None:
    async def writer(spore: Spore, ctx: Any) -> str:
        return '<note to="notes"><id>n1</id><title>t</title><priority>2</priority></note>'

    organism, seen = _organism({"writer": {"handler": writer}})
    async with organism.running():
        await organism.send("writer", {"go": True})
        await organism.idle()
    assert seen["notes"] == []
    [letter] = organism.dead_letters
    assert "The attribute 'id' is required but missing" in letter.error


async def test_a_forged_document_is_not_believed() -> None:
    # The written document must read as the knowledge, or the XSD checks the mapping's.
    organism, seen = _organism()
    async with organism.running():
        await organism.send("notes", {"id": "n1", "title": "t", "priority": 0},
                            metadata={"kind": "note", "xml": NOTE})
        await organism.idle()
    assert seen["notes"] == []
    [letter] = organism.dead_letters
    assert letter.reason == "schema"


def test_plain_child_elements_keep_no_copy_of_the_document() -> None:
    from sporeflow.steps.xmldocument import payload_metadata

    assert payload_metadata(payload_from_xml("<note><title>t</title></note>")) == {
        "kind": "note"}
    assert payload_metadata(payload_from_xml(NOTE))["xml"] == NOTE


def _send(*args: str) -> tuple[int, str, str]:
    organism = SCHEMAS / "notes.yaml"
    result = CliRunner().invoke(cli, ["send", str(organism), "--start", *args])
    return result.exit_code, result.stdout, result.stderr


def test_send_xml_to_an_agent_validates_the_document_as_written() -> None:
    code, out, err = _send("--to", "notes", "--xml", NOTE)
    assert (code, err) == (0, ""), err
    assert out.strip()  # the spore's id


def test_send_xml_on_a_channel_keeps_the_kind() -> None:
    code, _, err = _send("--channel", "memo", "--xml", NOTE)
    assert (code, err) == (0, ""), err


def test_send_that_ends_in_a_dead_letter_says_so_and_exits_1() -> None:
    code, _, err = _send("--to", "notes", "--xml", NOTE.replace(">2<", ">0<"))
    assert code == 1
    assert err.startswith("dead letter")
    assert ": schema: " in err
    assert "knowledge.priority" in err
