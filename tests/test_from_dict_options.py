"""``Organism.from_dict`` takes what ``from_file`` takes: a journal, a backend, the agents
this process hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import ConfigError
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker

DATA = {"organism": {"name": "options"}, "agents": {
    "worker": {"handler": "tests.test_from_dict_options:work"},
    "other": {"handler": "tests.test_from_dict_options:work"}}}


def work(spore: Spore, ctx: Any) -> None:
    return None


async def test_from_dict_takes_a_journal(tmp_path: Path) -> None:
    organism = Organism.from_dict(DATA, journal=tmp_path / "j.db")
    async with organism.running():
        await organism.send("worker", {"n": 1})
        await organism.idle()
    assert organism.journal is not None
    assert (tmp_path / "j.db").exists()


async def test_from_dict_takes_a_backend_and_the_agents_it_hosts() -> None:
    # Over a broker, this process hosts worker only: a spore to other stays queued.
    broker = MemoryBroker()
    organism = Organism.from_dict(DATA, backend=MemoryBackend(broker), hosted=["worker"])
    async with organism.running():
        assert organism.brokered
        await organism.send("worker", {"n": 1})
        await organism.send("other", {"n": 2})
        await organism.idle()
        stats = organism.stats()["agents"]
    assert (stats["worker"]["handled"], stats["other"]["handled"]) == (1, 0)


async def test_from_dict_refuses_hosting_without_a_broker() -> None:
    # Checked as from_file checks it: hosting some agents needs a broker.
    organism = Organism.from_dict(DATA, hosted=["worker"])
    with pytest.raises(ConfigError, match="hosting some agents .* needs a broker"):
        await organism.start()
