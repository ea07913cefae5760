"""gather and sequence agents, and ``ctx.gather``: combined answers, missing ones named."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sporeflow.pipeline import ConfigError, HandlerError, Organism, Spore
from sporeflow.pipeline.agents.orchestration import Gathered
from tests.conftest import VirtualClockLoop, wait_until

Virtual = Callable[[Callable[[VirtualClockLoop], Coroutine[Any, Any, Any]]], Any]


def answer(value: int) -> Callable[[Spore, Any], Coroutine[Any, Any, dict[str, Any]]]:
    async def handler(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"vote": value, "asked": spore.knowledge["question"]}

    return handler


async def silent(spore: Spore, ctx: Any) -> None:
    return None  # never answers a request


async def judge(spore: Spore, ctx: Any) -> None:
    ctx.state.setdefault("verdicts", []).append(spore.knowledge)


def test_gather_delivers_the_combined_spore_after_the_timeout_naming_the_missing(
        virtual: Virtual) -> None:
    async def main(loop: VirtualClockLoop) -> tuple[list[dict[str, Any]], float, Any]:
        organism = Organism.from_dict({
            "agents": {
                "poll": {"gather": {"to": ["a", "b", "mute"], "timeout": "2s"},
                         "emit": {"to": "judge"}},
                "a": {"handler": answer(1)}, "b": {"handler": answer(2)},
                "mute": {"handler": silent}, "judge": {"handler": judge},
            }}, base_dir=".")
        async with organism.running():
            started = loop.time()
            await organism.send("poll", {"question": "ship it?"})
            await organism.idle()
            waited = loop.time() - started
            return organism.wiring().agents["judge"].state["verdicts"], waited, organism.stats()

    verdicts, waited, stats = virtual(main)
    assert verdicts == [{
        "replies": {"a": {"vote": 1, "asked": "ship it?"}, "b": {"vote": 2, "asked": "ship it?"}},
        "missing": ["mute"], "failed": {}}]
    assert waited == pytest.approx(2.0)  # virtual time: the gather waited out its timeout
    assert stats["totals"]["dead_letters"] == 0


async def test_sequence_of_three_agents_yields_the_composed_result() -> None:
    async def inc(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"] + 1}

    async def double(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"n": spore.knowledge["n"] * 2}

    async def show(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"text": f"={spore.knowledge['n']}"}

    organism = Organism.from_dict({"agents": {
        "chain": {"sequence": ["inc", "double", "show"]},
        "chain_out": {"sequence": {"steps": ["double", "inc", "inc"], "timeout": "1s"},
                      "emit": {"to": "judge"}},
        "inc": {"handler": inc}, "double": {"handler": double}, "show": {"handler": show},
        "judge": {"handler": judge}}})
    async with organism.running():
        response = await organism.request("chain", {"n": 3}, timeout=5)
        await organism.send("chain_out", {"n": 5})
        await organism.idle()
        emitted = organism.wiring().agents["judge"].state["verdicts"]
    assert response.knowledge == {"text": "=8"}  # (3 + 1) * 2, shown
    assert emitted == [{"n": 12}]  # 5 * 2 + 1 + 1 (a step may repeat), to the emit


async def test_failing_step_fails_the_sequence_naming_the_step() -> None:
    async def boom(spore: Spore, ctx: Any) -> dict[str, Any]:
        raise ValueError("no such customer")

    organism = Organism.from_dict({"agents": {
        "chain": {"sequence": ["ok", "boom", "ok"]},
        "ok": {"handler": answer(0)}, "boom": {"handler": boom}}})
    async with organism.running():
        with pytest.raises(HandlerError, match=r"sequence 'chain' stopped at step 2 of 3 "
                                               r"\('boom'\): HandlerError: .*no such customer"):
            await organism.request("chain", {"question": "?"}, timeout=5)
        await organism.idle()
    reasons = {(letter.agent, letter.reason) for letter in organism.dead_letters}
    assert reasons == {("boom", "handler failed"), ("chain", "handler failed")}


def test_sequence_step_that_never_answers_times_out_instead_of_hanging(
        virtual: Virtual) -> None:
    async def main(loop: VirtualClockLoop) -> list[str]:
        organism = Organism.from_dict({"agents": {
            "chain": {"sequence": {"steps": ["mute"], "timeout": "3s"}},
            "mute": {"handler": silent}}})
        async with organism.running():
            await organism.send("chain", {})
            await organism.idle()
        return [letter.error for letter in organism.dead_letters]

    [error] = virtual(main)
    assert "stopped at step 1 of 1 ('mute'): RequestTimeout: no response from 'mute'" in error


async def test_gather_over_a_channel_asks_its_current_subscribers() -> None:
    organism = Organism.from_dict({
        "channels": {"voters": {}},
        "agents": {
            "poll": {"gather": {"channel": "voters", "timeout": "5s"}},
            "a": {"handler": answer(1), "subscribe": ["voters"]},
            "b": {"handler": answer(2), "subscribe": ["voters"]}}})
    async with organism.running():
        response = await organism.request("poll", {"question": "lunch?"}, timeout=10)
    assert sorted(response.knowledge["replies"]) == ["a", "b"]
    assert response.knowledge["missing"] == []


async def test_ctx_gather_reports_failed_agents_and_keeps_the_lane_usable() -> None:
    async def refuse(spore: Spore, ctx: Any) -> dict[str, Any]:
        raise RuntimeError("out of order")

    results: list[Gathered] = []

    async def asker(spore: Spore, ctx: Any) -> None:
        results.append(await ctx.gather(["a", "broken", "asker_echo"], {"question": "?"},
                                        timeout=5))

    organism = Organism.from_dict({"agents": {
        "asker": {"handler": asker, "concurrency": 1},
        "asker_echo": {"handler": answer(3)},
        "a": {"handler": answer(1)}, "broken": {"handler": refuse}}})
    async with organism.running():
        for _ in range(3):  # one slot: each gather lends it once and takes it back once
            await organism.send("asker", {})
        await organism.idle()
        assert organism.stats()["agents"]["asker"]["in_flight"] == 0
    assert len(results) == 3
    first = results[0]
    assert sorted(first.replies) == ["a", "asker_echo"]
    assert first.missing == ()
    assert "RuntimeError: out of order" in first.failed["broken"]
    assert not first.complete


@pytest.mark.parametrize(("agents", "message"), [
    ({"g": {"gather": {"to": ["x"], "channel": "main"}}, "x": {"handler": silent}},
     "agents.g.gather: give exactly one of 'to'"),
    ({"s": {"sequence": ["alpha", "betta"]}, "alpha": {"handler": silent},
      "beta": {"handler": silent}},
     "agents.s.sequence.1: unknown agent 'betta' (did you mean 'beta'?)"),
    ({"s": {"sequence": ["x"], "handler": silent}, "x": {"handler": silent}},
     "agents.s: give one of handler, handlers, gather or sequence, not handler and sequence"),
    ({"g": {"gather": {"channel": "nowhere"}}}, "agents.g.gather.channel: unknown channel"),
])
def test_orchestration_mistakes_are_config_problems(agents: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Organism.from_dict({"agents": agents})
    assert message in str(caught.value)


async def test_requests_awaited_together_never_run_an_agent_past_its_concurrency() -> None:
    # Found in review: each ctx.request awaited in a task of its own (asyncio.gather wraps
    # each in one) lent the handler's one slot again: a slot that task did not hold. An
    # agent of concurrency 1 then ran three other handlers at once.
    asked, release = asyncio.Event(), asyncio.Event()
    questions = running = peak = 0

    async def asker(spore: Spore, ctx: Any) -> None:
        nonlocal running, peak
        if spore.knowledge.get("ask"):
            await asyncio.gather(*(ctx.request("answerer", {"k": k}) for k in range(3)))
            return
        running += 1
        peak = max(peak, running)
        for _ in range(5):  # work that yields: handlers given a slot each overlap
            await asyncio.sleep(0)
        running -= 1

    async def answerer(spore: Spore, ctx: Any) -> dict[str, Any]:
        nonlocal questions
        questions += 1
        if questions == 3:
            asked.set()
        await release.wait()
        return {"k": spore.knowledge["k"]}

    org = Organism.from_dict({"agents": {
        "asker": {"handler": asker, "concurrency": 1},
        "answerer": {"handler": answerer, "concurrency": 3}}})
    async with org.running():
        await org.send("asker", {"ask": True})
        await asyncio.wait_for(asked.wait(), 5)
        for n in range(3):
            await org.send("asker", {"n": n})
        await wait_until(lambda: org.stats()["agents"]["asker"]["received"] == 4)
        release.set()
        await org.idle()
        assert org.stats()["agents"]["asker"]["handled"] == 4
    assert peak == 1


@pytest.mark.parametrize("form", ["wait_for", "task", "gather"])
async def test_a_request_awaited_in_a_task_of_its_own_lends_the_slot_once(form: str) -> None:
    # Found in review: after the fix above, only the handler's own task lent its slot,
    # so asyncio.wait_for (a task of its own on Python 3.11) around a request to this
    # same agent of concurrency 1 waited until the request timed out. The handler's slot
    # is lent once, whichever task waits, for as long as any of its requests waits.
    async def asker(spore: Spore, ctx: Any) -> dict[str, Any]:
        if "ask" not in spore.knowledge:
            return {"answer": spore.knowledge["n"]}
        asking = [ctx.request("asker", {"n": n}, timeout=5) for n in range(2)]
        if form == "wait_for":
            answers = [await asyncio.wait_for(asking[0], 5), await asking[1]]
        elif form == "task":
            answers = [await asyncio.ensure_future(a) for a in asking]
        else:
            answers = list(await asyncio.gather(*asking))
        return {"answers": [answer.knowledge["answer"] for answer in answers]}

    org = Organism.from_dict({"agents": {"asker": {"handler": asker, "concurrency": 1}}})
    async with org.running():
        response = await org.request("asker", {"ask": True}, timeout=10)
        await org.idle()
        lane = org.wiring().lanes["asker"]
        assert (lane.busy, lane.lent) == (0, 0)  # the books balance
    assert response.knowledge == {"answers": [0, 1]}
