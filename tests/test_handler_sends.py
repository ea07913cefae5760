"""``ctx.send``, ``ctx.broadcast`` and ``ctx.reply`` are done when called (a handler's
output never waits) and return an awaitable giving the spore sent (``agents.sent``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore, SporeError


def organism(maker: Any, received: list[Spore], **limits: int) -> Organism:
    async def sink(spore: Spore, ctx: Any) -> None:
        received.append(spore)

    return Organism.from_dict({"limits": limits, "channels": {"news": {}}, "agents": {
        "maker": {"handler": maker},
        "sink": {"handler": sink, "subscribe": ["news"]}}})


async def test_a_send_without_await_is_sent_all_the_same() -> None:
    # Before: an un-awaited ctx.send was a coroutine never run: nothing was sent, and
    # the only trace was a RuntimeWarning when it was collected.
    received: list[Spore] = []

    async def maker(spore: Spore, ctx: Any) -> None:
        ctx.send("sink", {"n": 1})
        ctx.broadcast({"n": 2}, channel="news")
        ctx.reply({"n": 3})  # to the sender: outside

    org = organism(maker, received)
    async with org.running():
        await org.send("maker", {}, sender="tester")
        await org.idle()
    assert sorted(spore.knowledge["n"] for spore in received) == [1, 2]
    assert [spore.knowledge for spore in org.outbox] == [{"n": 3}]


async def test_awaiting_a_send_gives_its_spore_and_tasks_and_gather_take_it() -> None:
    received: list[Spore] = []
    seen: list[Spore] = []

    async def maker(spore: Spore, ctx: Any) -> None:
        seen.append(await ctx.send("sink", {"n": 1}))
        seen.append(await asyncio.create_task(ctx.send("sink", {"n": 2})))
        seen.extend(await asyncio.gather(ctx.send("sink", {"n": 3}),
                                         ctx.broadcast({"n": 4}, channel="news")))

    org = organism(maker, received)
    async with org.running():
        await org.send("maker", {})
        await org.idle()
    assert [spore.knowledge["n"] for spore in seen] == [1, 2, 3, 4]
    assert {spore.id for spore in seen} == {spore.id for spore in received}


async def test_a_sync_handler_that_sends_fails_saying_what_to_do() -> None:
    # Before: a sync handler (run on a thread) calling ctx.send made a coroutine it could
    # not await: nothing was sent and the handler "succeeded".
    received: list[Spore] = []

    def maker(spore: Spore, ctx: Any) -> None:
        ctx.send("sink", {"n": 1})

    org = organism(maker, received)
    async with org.running():
        await org.send("maker", {})
        await org.idle()
    assert received == []
    [letter] = org.dead_letters
    assert letter.reason == "handler failed"
    assert letter.error.startswith(
        "OrganismStateError: ctx.send was called from a sync handler's thread, off the "
        "event loop; nothing was sent: a sync handler returns its spores")


@pytest.mark.parametrize("call", ["request", "gather"])
async def test_a_sync_handler_that_requests_fails_saying_what_to_do(call: str) -> None:
    # Found by a new user: in a plain def handler, ctx.request returned a coroutine it
    # could not await: nothing was asked, and the handler "succeeded".
    def maker(spore: Spore, ctx: Any) -> None:
        if call == "request":
            ctx.request("sink", {"n": 1})
        else:
            ctx.gather(["sink"], {"n": 1})

    org = organism(maker, [])
    async with org.running():
        await org.send("maker", {})
        await org.idle()
    [letter] = org.dead_letters
    assert letter.error.startswith(
        f"OrganismStateError: ctx.{call} was called from a sync handler's thread")


@pytest.mark.parametrize("call", ["send", "broadcast"])
async def test_a_refused_send_raises_at_the_call(call: str) -> None:
    raised: list[BaseException] = []

    async def maker(spore: Spore, ctx: Any) -> None:
        try:
            if call == "send":
                ctx.send("nobody", {})
            else:
                ctx.broadcast({}, channel="nowhere")
        except Exception as exc:
            raised.append(exc)

    org = organism(maker, [])
    async with org.running():
        await org.send("maker", {})
        await org.idle()
    [error] = raised
    assert type(error).__name__ == "DeliveryError"


async def test_a_loop_of_sends_waits_while_spores_are_paged_out() -> None:
    # Found in review: a stream waited while anything was paged out, a handler sending in
    # a loop never did: 50,000 sends with max_in_memory 100 paged 49,901 out to disk.
    sends, limit = 3_000, 100
    received: list[Spore] = []
    peak = 0

    async def maker(spore: Spore, ctx: Any) -> None:
        nonlocal peak
        for n in range(sends):
            await ctx.send("sink", {"n": n})
            peak = max(peak, org.stats()["totals"]["paged_out"])

    org = organism(maker, received, max_in_memory=limit)
    async with org.running():
        await org.send("maker", {})
        await org.idle()
    assert sorted(spore.knowledge["n"] for spore in received) == list(range(sends))
    assert org.stats()["totals"]["paged_out_total"] > 0  # it did page out
    assert peak <= 2 * limit  # and the sender waited for them to be read back


@pytest.mark.parametrize("form", ["gather", "tasks"])
async def test_sends_awaited_together_never_run_an_agent_past_its_concurrency(
        form: str) -> None:
    # Found in review: each Sent awaited in a task of its own (asyncio.gather wraps each
    # in one) lent the handler's one slot again while spores were paged out: a slot it
    # did not hold. An agent of concurrency 1 then ran 5 handlers at once.
    received: list[Spore] = []
    running = peak = 0

    async def maker(spore: Spore, ctx: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            for n in range(20):
                sends = [ctx.send("sink", {"n": n, "k": k}) for k in range(50)]
                if form == "tasks":
                    sends = [asyncio.ensure_future(sent) for sent in sends]
                await asyncio.gather(*sends)
        finally:
            running -= 1

    org = Organism.from_dict({"limits": {"max_in_memory": 20}, "agents": {
        "maker": {"handler": maker, "concurrency": 1},
        "sink": {"handler": lambda spore, ctx: received.append(spore) and None}}})
    async with org.running():
        for i in range(5):
            await org.send("maker", {"i": i})
        await org.idle()
    assert len(received) == 5 * 20 * 50
    assert org.stats()["totals"]["paged_out_total"] > 0  # it did page out
    assert peak == 1


async def test_a_recipient_that_is_no_name_is_refused_naming_the_field() -> None:
    # Found by a new user: ctx.send({"x": 1}, "sink") (the arguments swapped) raised
    # "TypeError: unhashable type: 'dict'" from the recipient's lookup, which ran before
    # the fields' types were checked; organism.send({"x": 1}, {}) did the same.
    raised: list[BaseException] = []

    async def maker(spore: Spore, ctx: Any) -> None:
        try:
            ctx.send({"x": 1}, "sink")
        except Exception as exc:
            raised.append(exc)

    org = organism(maker, [])
    async with org.running():
        with pytest.raises(SporeError, match=r"to_agent must be a non-empty string.*\{'x': 1\}"):
            await org.send({"x": 1}, {})  # type: ignore[arg-type]
        await org.send("maker", {})
        await org.idle()
    assert [type(exc) for exc in raised] == [SporeError]
    assert "knowledge must be a JSON object" in str(raised[0])
    assert [letter.reason for letter in org.dead_letters] == ["invalid"]


async def test_a_send_to_no_agent_is_refused_not_broadcast() -> None:
    # Found by a new user: organism.send(None, {...}) was accepted and became a broadcast
    # on 'main', then a "no subscribers" dead letter; so did ctx.send(None, {...}).
    raised: list[BaseException] = []

    async def maker(spore: Spore, ctx: Any) -> None:
        try:
            ctx.send(None, {"n": 1})
        except Exception as exc:
            raised.append(exc)

    org = organism(maker, [])
    async with org.running():
        with pytest.raises(SporeError, match=r"organism.send needs the name of the agent"):
            await org.send(None, {})  # type: ignore[arg-type]
        await org.send("maker", {})
        await org.idle()
    assert "use broadcast(knowledge, channel=...)" in str(raised[0])
    assert [letter.reason for letter in org.dead_letters] == ["invalid"]
