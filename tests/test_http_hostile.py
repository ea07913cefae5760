"""What an attacker found on the HTTP ingress and the control endpoint, each fixed where
the rule lives (the ingress's refusals, the outbox's bound, the body reader, the
endpoint's guard), with the request that found it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.core.outbox import Outbox

from .test_http_ingress import TOKEN, TOKEN_ENV, organism_with_api, post, serving


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


async def test_a_spore_to_an_outside_sender_is_404_and_never_kept(tmp_path: Path) -> None:
    # Found: 202, each spore kept in organism.outbox (10,000 of up to max_spore_bytes: ~10 GB
    # from one client); POST /requests and organism.send already said 404 for the same.
    organism = organism_with_api(tmp_path, {})
    async with serving(organism) as (session, url):
        for target in ("api", "system", "cli"):
            status, answer, _ = await post(session, f"{url}/spores",
                                           {"to": target, "knowledge": {"pad": "x" * 1000}})
            assert status == 404, (target, answer)
            assert answer["reason"] == "unknown agent"
    assert len(organism.outbox) == 0


def test_the_outbox_is_bounded_in_bytes_as_well_as_in_count() -> None:
    organism = Organism.from_dict({"agents": {"a": {"handler": "builtins:print"}}})
    outbox = Outbox(organism.spec.limits, capacity=100, max_bytes=50_000)
    big = "x" * 10_000
    for n in range(20):
        outbox.append(Spore(knowledge={"n": n, "pad": big}, from_agent="a", to_agent="cli"))
    kept = [spore.knowledge["n"] for spore in outbox]
    assert kept == list(range(16, 20))  # each ~10.6 KB as JSON: four fit in 50,000 bytes
    assert outbox.forgotten == 16
    assert 40_000 < outbox.bytes <= 50_000
    by_count = Outbox(organism.spec.limits, capacity=100, max_bytes=1 << 30)
    for n in range(200):
        by_count.append(Spore(knowledge={"n": n}, from_agent="a", to_agent="cli"))
    assert [spore.knowledge["n"] for spore in by_count] == list(range(100, 200))


async def test_the_organisms_outbox_is_that_bounded_one() -> None:
    async def back(spore: Spore, ctx: Any) -> dict[str, Any]:
        return dict(spore.knowledge)

    organism = Organism.from_dict({"agents": {"back": {"handler": back}}})
    assert isinstance(organism.outbox, Outbox)
    async with organism.running():
        await organism.send("back", {"n": 1}, sender="tester")
        await organism.idle()
    assert [spore.knowledge for spore in organism.outbox] == [{"n": 1}]
