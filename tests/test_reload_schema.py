"""A reload that gives a changed agent a new schema: what its mailbox already holds is
checked against it, as every spore sent after the reload is (README: the held spores
run with the new settings)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from sporeflow.pipeline import Organism

from .test_reload import module, started, state, write_organism

__all__ = ["module"]  # the fixture, imported for pytest

TEXT = """
    organism: {{name: schemas}}
    agents:
      slow: {{handler: {mod}:gated{schema}}}
"""


async def test_spores_held_at_a_reload_are_checked_against_the_new_schema(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    (tmp_path / "need.json").write_text(json.dumps(
        {"type": "object", "required": ["need"]}))
    file = write_organism(tmp_path, TEXT, mod=mod, schema="")
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES.update(first=asyncio.Event(), rest=asyncio.Event())
    async with organism.running():
        await organism.send("slow", {"n": 1, "gate": "first"})
        await organism.send("slow", {"n": 2, "gate": "rest"})  # held; the new schema refuses
        await organism.send("slow", {"n": 3, "gate": "rest", "need": 1})  # held; passes
        await started(handlers, 1)
        write_organism(tmp_path, TEXT, mod=mod, schema=", schema: need.json")
        report = await organism.reload()
        await organism.send("slow", {"n": 4, "gate": "rest", "need": 1})
        handlers.GATES["first"].set()
        handlers.GATES["rest"].set()
        await organism.idle()
    assert dict(report.changed) == {"slow": ("schema",)}
    assert sorted(state(organism, "slow")) == [1, 3, 4]
    [letter] = organism.dead_letters
    assert (letter.reason, letter.spore.knowledge["n"]) == ("schema", 2)
    assert "need" in letter.error
    counts = organism.stats()["agents"]["slow"]
    # Received into its mailbox before the reload, then refused there: failed, as a spore
    # expired in the mailbox is, so that received == handled + failed.
    assert (counts["received"], counts["handled"], counts["failed"]) == (4, 3, 1)
