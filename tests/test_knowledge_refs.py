"""Knowledge references: ``ctx.store`` / ``ctx.resolve`` through a pluggable store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import ConfigError, Organism, Spore, SporeError
from sporeflow.pipeline.agents.knowledge import MemoryKnowledgeStore

BIG = {"text": "word " * 10_000}


async def writer(spore: Spore, ctx: Any) -> Spore:
    ref = await ctx.store(BIG)
    return Spore(knowledge={"about": "a long text"}, to_agent="reader",
                 knowledge_references=(ref,))


async def reader(spore: Spore, ctx: Any) -> None:
    ctx.state["resolved"] = await ctx.resolve()
    ctx.state["light"] = spore.knowledge


def light_organism(**head: Any) -> Organism:
    return Organism.from_dict({"organism": {"name": "light", **head},
                               "agents": {"writer": {"handler": writer},
                                          "reader": {"handler": reader}}})


async def test_a_light_spore_carries_a_reference_the_receiver_resolves() -> None:
    organism = light_organism()
    async with organism.running():
        await organism.send("writer", {})
        await organism.idle()
        state = organism.wiring().agents["reader"].state
    assert state["light"] == {"about": "a long text"}
    assert state["resolved"] == [BIG]


async def test_outside_senders_store_through_the_organism() -> None:
    organism = light_organism(knowledge_store="memory")
    async with organism.running():
        refs = (await organism.knowledge_store.put({"a": 1}),
                await organism.knowledge_store.put({"b": 2}))
        await organism.send("reader", {}, knowledge_references=refs)
        await organism.idle()
        assert organism.wiring().agents["reader"].state["resolved"] == [{"a": 1}, {"b": 2}]


async def test_an_unknown_reference_fails_the_handler_naming_it() -> None:
    organism = light_organism()
    async with organism.running():
        await organism.send("reader", {}, knowledge_references=("sha256:nothing",))
        await organism.idle()
    [letter] = list(organism.dead_letters)
    assert letter.reason == "handler failed"
    assert "knowledge reference 'sha256:nothing' is not in the memory store" in letter.error


async def test_a_store_named_in_the_organism_file_is_used(tmp_path: Path) -> None:
    (tmp_path / "stores.py").write_text(
        "class Shelf:\n"
        "    def __init__(self):\n        self.items = {}\n"
        "    async def put(self, knowledge):\n"
        "        ref = f'shelf:{len(self.items)}'\n        self.items[ref] = knowledge\n"
        "        return ref\n"
        "    async def get(self, ref):\n        return self.items[ref]\n"
        "def make():\n    return Shelf()\n"
        "def broken():\n    return object()\n"
        "def echo(spore, ctx):\n    return None\n")
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: shelf, knowledge_store: stores:make}\n"
        "agents:\n  echo: {handler: stores:echo}\n")
    organism = Organism.from_file(tmp_path / "organism.yaml")
    assert type(organism.knowledge_store).__name__ == "Shelf"
    assert await organism.knowledge_store.put({"x": 1}) == "shelf:0"

    (tmp_path / "organism.yaml").write_text(
        "organism: {name: shelf, knowledge_store: stores:mkae}\n"
        "agents:\n  echo: {handler: stores:echo}\n")
    with pytest.raises(ConfigError, match=r"organism.knowledge_store: knowledge store "
                                          r"'stores:mkae': module 'stores' has no 'mkae' "
                                          r"\(did you mean 'make'\?\)"):
        Organism.from_file(tmp_path / "organism.yaml")

    (tmp_path / "organism.yaml").write_text(
        "organism: {name: shelf, knowledge_store: stores:broken}\n"
        "agents:\n  echo: {handler: stores:echo}\n")
    with pytest.raises(ConfigError, match="'stores:broken' returned an object, which lacks "
                                          "async put"):
        Organism.from_file(tmp_path / "organism.yaml")


async def test_memory_store_is_content_addressed_and_bounded() -> None:
    store = MemoryKnowledgeStore(capacity=2)
    first = await store.put({"a": 1, "b": 2})
    assert await store.put({"b": 2, "a": 1}) == first  # same content, same reference
    await store.put({"c": 3})
    await store.put({"d": 4})
    assert (len(store), store.evicted) == (2, 1)
    with pytest.raises(SporeError, match="evicted after 2 newer entries"):
        await store.get(first)
    with pytest.raises(SporeError, match="not JSON"):
        await store.put({"when": object()})
