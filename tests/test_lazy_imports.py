"""What an organism imports: only what it uses. lxml, SQLite, multiprocessing and
aiohttp cost a process megabytes each, and most organisms need none of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sporeflow.config import lazy_names

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"
HEAVY = ["aiohttp", "lxml.etree", "multiprocessing", "sporeflow.pipeline.journal.store",
         "sqlite3", "urllib.request"]

# The small organism (JSON, in memory, a thread-run handler, a broadcast) handling a
# spore end to end, then whatever AFTER does; prints which of HEAVY were imported.
SCRIPT = """
import asyncio, json, sys
from sporeflow.pipeline import Organism

async def main(journal):
    org = Organism.from_file(sys.argv[1], journal=journal)
    async with org.running():
        await org.send("intake", {"text": "hi"})
        await org.idle()
        assert org.stats()["agents"]["ear1"]["handled"] == 1, org.stats()
JOURNAL = None
AFTER
asyncio.run(main(JOURNAL))
print(json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
"""


def imported_by(after: str = "") -> list[str]:
    script = SCRIPT.replace("AFTER", after).replace("HEAVY", repr(HEAVY))
    shown = subprocess.run([sys.executable, "-c", script, str(SMALL)], capture_output=True,
                           text=True, check=True).stdout
    loaded: list[str] = json.loads(shown)
    return loaded


def test_a_plain_organism_imports_no_xml_sqlite_processes_or_http() -> None:
    assert imported_by() == []


def test_xml_reads_lxml_in_through_the_lazy_module() -> None:
    round_trip = ("from sporeflow.steps import Spore\n"
                  "xml = Spore(knowledge={'k': 1}, to_agent='b').to_xml()\n"
                  "assert Spore.from_xml(xml).knowledge == {'k': 1}")
    assert imported_by(round_trip) == ["lxml.etree"]


def test_a_journal_reads_sqlite_in(tmp_path: Path) -> None:
    loaded = imported_by(f"JOURNAL = {str(tmp_path / 'j.sqlite')!r}")
    assert loaded == ["sporeflow.pipeline.journal.store", "sqlite3"]


def test_a_lazy_module_is_loaded_by_its_first_lookup_and_then_is_the_module() -> None:
    lazy = lazy_names.LazyModule("json")
    assert "dumps" not in vars(lazy)
    assert lazy.dumps({"a": 1}) == '{"a": 1}'
    assert vars(lazy)["dumps"] is json.dumps  # later lookups never reach __getattr__
