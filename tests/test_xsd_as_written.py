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


async def test_over_a_broker_a_send_hosted_here_tells_its_dead_letter() -> None:
    # It was "sent" (exit 0, nothing said) although this process refused it at once.
    from sporeflow.pipeline.broker.memory_backend import MemoryBackend
    from sporeflow.pipeline.service import operations

    spec = organism_from_dict({"organism": {"name": "xsd"}, "agents": {
        "notes": {"handler": "tests.organisms.schemas.schema_handlers:accept",
                  "schema": "note.xsd"}}}, base_dir=SCHEMAS)
    organism = Organism(spec, backend=MemoryBackend())
    async with organism.running():
        assert organism.brokered
        payload = payload_from_xml(NOTE.replace(">2<", ">0<"))
        refused = await operations.send_spore(
            organism, payload.knowledge, to="notes", timeout=5,
            extra={"metadata": {"kind": "note"}})
        handled = await operations.send_spore(
            organism, {"id": "n2", "title": "Spores", "priority": 1}, to="notes", timeout=5,
            extra={"metadata": {"kind": "note", "xml": NOTE.replace("n1", "n2").replace(
                ">2<", ">1<")}})
    assert (refused.status, refused.reason) == ("dead-lettered", "schema")
    assert handled.status == "handled"


async def test_over_a_broker_a_send_to_an_agent_run_elsewhere_is_sent() -> None:
    from sporeflow.pipeline.broker.memory_backend import MemoryBackend
    from sporeflow.pipeline.service import operations

    spec = organism_from_dict({"organism": {"name": "split"}, "channels": {"news": {}},
                               "agents": {
        "here": {"handler": "tests.organisms.schemas.schema_handlers:accept"},
        "there": {"handler": "tests.organisms.schemas.schema_handlers:accept",
                  "subscribe": ["news"]}}})
    organism = Organism(spec, backend=MemoryBackend(), hosted=["here"])
    async with organism.running():
        assert organism.hosted == {"here"}
        here = await operations.send_spore(organism, {}, to="here", timeout=5)
        there = await operations.send_spore(organism, {}, to="there", timeout=5)
        everyone = await operations.send_spore(organism, {}, channel="news", timeout=5)
        # Nobody hears 'main': refused in this process, which says so (it said 'sent').
        unheard = await operations.send_spore(organism, {}, channel="main", timeout=5)
    assert (here.status, there.status, everyone.status) == ("handled", "sent", "sent")
    assert (unheard.status, unheard.reason) == ("dead-lettered", "no subscribers")


def test_the_cli_says_a_spore_was_sent_elsewhere_rather_than_nothing() -> None:
    import click

    from sporeflow.pipeline.cli.control import send_outcome

    @click.command()
    @click.pass_context
    def show(ctx: click.Context) -> None:
        send_outcome(ctx, 202, {"status": "sent", "id": "s-1"}, timeout=5)

    result = CliRunner().invoke(show, [])
    assert (result.exit_code, result.stdout) == (0, "s-1\n")
    assert result.stderr.startswith("spore s-1: sent over the broker; its recipient runs in "
                                    "another process")


def test_what_the_mapping_writes_back_keeps_no_copy() -> None:
    from sporeflow.steps.xmldocument import payload_metadata

    def kept(text: str) -> bool:
        return "xml" in payload_metadata(payload_from_xml(text))

    # Indentation, addressing attributes and the spelling of numbers are not kept for.
    assert not kept('<note to="a">\n  <title>t</title>\n  <n>1.50</n>\n</note>')
    assert not kept("<note><tags>a</tags><tags>b</tags><x><y>1</y></x></note>")
    assert kept('<note><title lang="en">t</title></note>')        # an attribute inside
    assert kept("<note>hi</note>")                                # text of the root
    assert kept("<note><a>1</a>and<b/></note>")                   # text beside children
    assert kept("<note><a>1</a><b/><a>2</a></note>")              # repeated apart
    assert kept('<n:note xmlns:n="urn:x"><title>t</title></n:note>')  # a namespace
