"""What `sporeflow send` (and POST /v1/send) says became of a spore whose recipient runs
in another process over a broker (``service.operations.send_spore``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import BrokerError
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.service import operations

BACKSTOP = 10.0


async def price(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"price": 3}


async def ingest(spore: Spore, ctx: Any) -> None:
    return None


class _Losing(MemoryBackend):
    """A broker that loses (refuses) every spore whose knowledge says ``lost``."""

    async def publish(self, spore: Spore, **options: Any) -> None:
        if spore.knowledge.get("lost"):
            raise BrokerError(f"{self.address}: lost spore {spore.id}")
        await super().publish(spore, **options)


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[Organism, Organism]]:
    """One organism over one broker in two processes: ingest here, pricer there (what
    this one publishes with knowledge ``lost`` is lost)."""
    (tmp_path / "sku.json").write_text(json.dumps({
        "type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}))
    data = {"organism": {"name": "shop"},
            "agents": {"ingest": {"handler": ingest},
                       "pricer": {"handler": price, "schema": "sku.json"}}}
    broker = MemoryBroker()
    here = Organism.from_dict(data, base_dir=tmp_path, backend=_Losing(broker),
                              hosted=["ingest"])
    there = Organism.from_dict(data, base_dir=tmp_path, backend=MemoryBackend(broker),
                               hosted=["pricer"])
    async with there.running(drain_timeout=BACKSTOP), here.running(drain_timeout=BACKSTOP):
        yield here, there


async def test_a_spore_this_process_refused_is_dead_lettered_not_sent(
        two_processes: tuple[Organism, Organism]) -> None:
    # Found by a new user: `sporeflow send --to pricer '{"sku": 5}'` (its schema wants a
    # string) printed "sent over the broker; its recipient runs in another process" and
    # exited 0, while the sending process itself had refused it (the chain's schema stage
    # runs there) and kept the dead letter.
    here, there = two_processes
    refused = await operations.send_spore(here, {"sku": 5}, to="pricer", timeout=BACKSTOP)
    assert (refused.status, refused.reason) == ("dead-lettered", "schema")
    assert refused.error is not None
    assert "sku" in refused.error
    assert not refused.ok
    sent = await operations.send_spore(here, {"sku": "apple"}, to="pricer", timeout=BACKSTOP)
    assert (sent.status, sent.ok) == ("sent", True)
    assert [letter.reason for letter in here.dead_letters] == ["schema"]


async def test_a_send_from_the_control_endpoint_does_not_swallow_another_senders_loss(
        two_processes: tuple[Organism, Organism]) -> None:
    # Review: send_spore (`sporeflow send`, POST /v1/send) awaits organism.confirmed(),
    # which reports a lost spore once, to whichever caller awaits it first, and then
    # forgets it. A program that sends with confirm=False and acknowledges its own source
    # after confirmed() (README: "acknowledge it upstream") was told nothing of its lost
    # spore when a `sporeflow send` ran in between: it acknowledged a spore never sent.
    here, _ = two_processes
    await here.send("pricer", {"sku": "pear", "lost": True}, confirm=False)  # a program's
    told = await operations.send_spore(here, {"sku": "apple"}, to="pricer",
                                       timeout=BACKSTOP)  # an operator's send meanwhile
    assert told.status == "sent"
    with pytest.raises(BrokerError):  # the program's own confirmed(): its spore is lost
        await here.confirmed()
