"""State keyed by input stays bounded (issue 17): sender names, channel names, labels.

Anyone who can send may send under any name and on any channel; none of the structures
those names key may grow with them.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.broker.memory_backend import MemoryBackend
from sporeflow.pipeline.core.recent import RecentNames
from sporeflow.pipeline.observe.prometheus import StatsCollector, take_snapshot
from sporeflow.steps.signing import signed

from .conformance.harness import wait_for


async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
    return {"n": spore.knowledge["n"]}


async def listen(spore: Spore, ctx: Any) -> None:
    return None


def test_recent_names_forget_the_least_recently_seen_and_keep_the_pinned() -> None:
    names = RecentNames({"system"}, cap=3)
    for name in ("a", "b", "c"):
        names.add(name)
    assert names.full
    names.add("a")  # seen again: now the most recent
    names.add("d")  # forgets b, the least recently seen
    assert set(names) == {"system", "a", "c", "d"}
    assert names.forgotten == 1
    names.add("system")
    names.discard("system")  # pinned: stays
    assert "system" in names
    assert len(names) == 4


async def test_twenty_thousand_outside_senders_leave_bounded_state() -> None:
    organism = Organism.from_dict({"agents": {"echo": {"handler": echo}}})
    returned: list[Spore] = []
    organism.on_outside(returned.append)
    async with organism.running():
        for n in range(20_000):
            await organism.send("echo", {"n": n}, sender=f"sender-{n}")
        await organism.idle()
    # The default limits.max_outside_senders, and the two built-in senders.
    assert len(organism._outside) <= 10_000 + 2
    totals = organism.stats()["totals"]
    assert totals["outside_senders"] == len(organism._outside)
    assert totals["outside_senders_forgotten"] == 20_000 + 2 - len(organism._outside)
    assert "sender-19999" in organism._outside
    assert "sender-0" not in organism._outside
    # Each sender was remembered while its reply was on its way: every reply came back.
    assert len(returned) == 20_000
    assert not organism.dead_letters


async def test_foreign_senders_over_a_broker_are_bounded_by_the_same_limit() -> None:
    spec = organism_from_dict({"organism": {"name": "remote"},
                               "limits": {"max_outside_senders": 1000},
                               "agents": {"sink": {"handler": listen}}})
    backend = MemoryBackend()
    organism = Organism(spec, backend=backend)
    topology = Topology.of(spec)
    async with organism.running():
        for n in range(3000):
            spore = Spore(knowledge={"n": n}, from_agent=f"praval-{n}", to_agent="sink")
            await backend.publish(spore, routing_key=topology.routing_key(spore))
        bridge = organism._bridge
        assert bridge is not None
        await wait_for(lambda: bridge.counts["acked"] == 3000)
        remote = bridge._remote
    assert len(remote) == 1000
    assert "praval-2999" in remote
    assert len(organism._outside) <= 1000 + 2


async def test_five_thousand_channel_names_leave_bounded_state() -> None:
    organism = Organism.from_dict({
        "organism": {"name": "chan"}, "channels": {"news": {}},
        "agents": {"reader": {"handler": listen, "subscribe": ["news"]}}})
    async with organism.running():
        for n in range(5000):  # ready-made spores, as a source or a broker hands them in
            await organism.submit(Spore(knowledge={"n": n}, channel=f"made-up-{n}"))
        await organism.broadcast({"n": -1}, channel="news")
        await organism.idle()
        stats = organism.stats()
        run = organism._run
        assert run is not None
        registry = CollectorRegistry(auto_describe=False)
        snapshot = take_snapshot(organism)
        registry.register(StatsCollector(lambda: snapshot))
        scrape = generate_latest(registry)
    # Declared channels by name, every other name under one: "other".
    assert set(stats["channels"]) == {"main", "dead-letter", "news", "other"}
    assert stats["channels"]["other"]["refused"] == 5000
    assert stats["channels"]["news"]["broadcasts"] == 1
    assert set(run.ledger.refused_on) == {"other"}
    assert run.intake.queued_by_channel == {}
    assert b'channel="other"' in scrape
    assert b"made-up" not in scrape
    assert len(scrape) < 20_000, f"a scrape of {len(scrape)} bytes"


async def test_with_signing_only_a_proven_sender_is_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by an attacker: a foreign sender's name was remembered as its spore arrived,
    # before its signature was checked; 1,000 forgeries under new names (each refused,
    # no key needed) pushed out the senders whose replies were on their way.
    monkeypatch.setenv("SF_BOUNDED_KEY", "bounded-state-key-" + "k" * 16)
    spec = organism_from_dict({"organism": {"name": "signed-remote",
                                            "signing_key_env": "SF_BOUNDED_KEY"},
                               "limits": {"max_outside_senders": 1000},
                               "agents": {"sink": {"handler": listen}}})
    assert spec.signing is not None
    backend = MemoryBackend()
    organism = Organism(spec, backend=backend)
    topology = Topology.of(spec)
    async with organism.running():
        honest = signed(Spore(knowledge={"n": -1}, from_agent="webhook", to_agent="sink"),
                        spec.signing)
        await backend.publish(honest, routing_key=topology.routing_key(honest))
        for n in range(1500):
            spore = Spore(knowledge={"n": n}, from_agent=f"forger-{n}", to_agent="sink")
            await backend.publish(spore, routing_key=topology.routing_key(spore))
        bridge = organism._bridge
        assert bridge is not None
        await wait_for(lambda: bridge.counts["acked"] == 1501)  # each settled
        remote = set(bridge._remote)
    assert remote == {"webhook"}
    assert "webhook" in organism._outside
    assert not any(name.startswith("forger-") for name in organism._outside)
    assert [letter.reason for letter in organism.dead_letters] == ["bad signature"] * 1500
