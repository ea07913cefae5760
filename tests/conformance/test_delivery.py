"""Direct delivery and emit rules, on every backend."""

from __future__ import annotations

from typing import Any

from sporeflow.pipeline import NotAPeer, Spore

from .harness import Harness


async def test_direct_spores_reach_their_agent_once_each_in_order(backend: Harness) -> None:
    seen: list[int] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    async with backend.running({"agents": {"sink": {"handler": sink}}}) as org:
        for n in range(200):
            await org.send("sink", {"n": n})
        await backend.quiet(org)
    assert seen == list(range(200))
    assert org.stats()["totals"]["dead_letters"] == 0


async def test_returned_knowledge_follows_emit_through_two_hops(backend: Harness) -> None:
    got: list[dict[str, Any]] = []

    async def double(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"] * 2}

    async def collect(spore: Spore, ctx: Any) -> None:
        got.append({"n": spore.knowledge["n"], "from": spore.from_agent, "hops": spore.hops})

    data = {"agents": {"doubler": {"handler": double, "emit": {"to": "collector"}},
                       "collector": {"handler": collect}}}
    async with backend.running(data) as org:
        for n in range(5):
            await org.send("doubler", {"n": n})
        await backend.quiet(org)
    assert sorted(g["n"] for g in got) == [0, 2, 4, 6, 8]
    assert {(g["from"], g["hops"]) for g in got} == {("doubler", 1)}


async def test_a_spore_to_an_agent_outside_its_peers_is_refused_and_dead_lettered(
        backend: Harness) -> None:
    refusals: list[str] = []

    async def rude(spore: Spore, ctx: Any) -> None:
        try:
            await ctx.send("secret", {"x": 1})
        except NotAPeer as exc:
            refusals.append(str(exc))

    async def secret(spore: Spore, ctx: Any) -> None:
        raise AssertionError("secret must never be reached")

    data = {"agents": {"rude": {"handler": rude, "peers": []},
                       "secret": {"handler": secret}}}
    async with backend.running(data) as org:
        await org.send("rude", {})
        await backend.quiet(org)
    assert len(refusals) == 1
    assert "may not address 'secret'" in refusals[0]
    assert [d.reason for d in org.dead_letters] == ["not a peer"]


async def test_replies_to_an_outside_sender_come_back_to_it(backend: Harness) -> None:
    async def echo(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"echo": spore.knowledge["text"]}

    async with backend.running({"agents": {"echo": {"handler": echo}}}) as org:
        returned: list[Spore] = []
        org.on_outside(returned.append)
        await org.send("echo", {"text": "hi"}, sender="tester")
        await backend.quiet(org)
    assert [(s.to_agent, s.knowledge) for s in returned] == [("tester", {"echo": "hi"})]


async def test_sync_handlers_answer_requests_on_every_backend(backend: Harness) -> None:
    def blocking(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"] + 1}

    async with backend.running({"agents": {"inc": {"handler": blocking}}}) as org:
        answers = [await org.request("inc", {"n": n}, timeout=10) for n in range(3)]
    assert [a.knowledge["n"] for a in answers] == [1, 2, 3]
