"""A request expires with its timeout: found by a new user. A request queued behind a
busy responder past the time its asker waits was still handled, its work wasted, and its
response a `late response` dead letter; over RabbitMQ the broker kept it for a responder
that was down, where RabbitMQ's own RPC pattern gives it a TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sporeflow.config import HandlerError, RequestTimeout
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.core.requests import RequestBook

from .conftest import VirtualClockLoop


def test_a_request_its_asker_gave_up_on_is_an_expired_letter_never_handled(
        virtual: Callable[..., Any]) -> None:
    handled: list[Any] = []
    gate, busy = asyncio.Event(), asyncio.Event()

    async def kb(spore: Spore, ctx: Any) -> dict[str, Any]:
        handled.append(spore.knowledge["q"])
        if spore.knowledge["q"] == "first":
            busy.set()
            await gate.wait()  # busy: the second request waits in the mailbox
        return {"a": spore.knowledge["q"]}

    async def main(loop: VirtualClockLoop) -> Organism:
        organism = Organism.from_dict({
            "organism": {"name": "asking"},
            "agents": {"kb": {"handler": kb, "concurrency": 1}}})
        async with organism.running():
            first = asyncio.create_task(organism.request("kb", {"q": "first"}, timeout=60))
            await busy.wait()
            with pytest.raises(RequestTimeout):
                await organism.request("kb", {"q": "second"}, timeout=1)
            gate.set()
            assert (await first).knowledge == {"a": "first"}
            await organism.idle()
        return organism

    organism = virtual(main)
    assert handled == ["first"]  # the second was never worked on
    [letter] = organism.dead_letters
    assert (letter.reason, letter.spore.knowledge) == ("expired", {"q": "second"})


def test_a_spore_that_expires_in_a_mailbox_is_logged_as_expired_not_failed(
        virtual: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    # Found by a new user: "agent 'kb' failed on spore ... (attempt 1)" for a spore
    # whose handler never ran.
    gate, busy = asyncio.Event(), asyncio.Event()

    async def kb(spore: Spore, ctx: Any) -> None:
        busy.set()
        await gate.wait()

    async def main(loop: VirtualClockLoop) -> Organism:
        organism = Organism.from_dict({
            "organism": {"name": "expiring"},
            "agents": {"kb": {"handler": kb, "concurrency": 1}}}, now=loop.wall)
        async with organism.running():
            await organism.send("kb", {"n": 1})
            await busy.wait()
            await organism.send("kb", {"n": 2}, expires_in=1)
            await asyncio.sleep(2)  # virtual time: the second expires in the mailbox
            gate.set()
            await organism.idle()
        return organism

    organism = virtual(main)
    [letter] = organism.dead_letters
    assert letter.reason == "expired"
    [line] = [r.getMessage() for r in caplog.records if letter.spore.id in r.getMessage()]
    assert line.startswith(f"spore {letter.spore.id} expired waiting for agent 'kb'")
    assert "failed" not in line


def test_a_gathered_request_its_asker_gave_up_on_is_never_handled(
        virtual: Callable[..., Any]) -> None:
    """Found by review: ctx.gather's requests (Context._gather's ``ask``) are still made
    with ``expires_in=None``: the rule of e8d8149 reached ctx.request and
    organism.request, not this sibling, so a gathered request queued past its asker's
    timeout is still worked on, and its response is a 'late response' dead letter."""
    handled: list[Any] = []
    gate, busy = asyncio.Event(), asyncio.Event()
    gathered: list[Any] = []
    given_up = asyncio.Event()

    async def kb(spore: Spore, ctx: Any) -> dict[str, Any]:
        handled.append(spore.knowledge["q"])
        if spore.knowledge["q"] == "first":
            busy.set()
            await gate.wait()  # busy: the gathered request waits in the mailbox
        return {"a": spore.knowledge["q"]}

    async def asker(spore: Spore, ctx: Any) -> None:
        gathered.append(await ctx.gather(["kb"], {"q": "gathered"}, timeout=1))
        given_up.set()

    async def main(loop: VirtualClockLoop) -> Organism:
        organism = Organism.from_dict({
            "organism": {"name": "gathering"},
            "agents": {"kb": {"handler": kb, "concurrency": 1},
                       "asker": {"handler": asker, "peers": ["kb"]}}}, now=loop.wall)
        async with organism.running():
            first = asyncio.create_task(organism.request("kb", {"q": "first"}, timeout=60))
            await busy.wait()
            await organism.send("asker", {})
            await given_up.wait()  # virtual time: the gather's timeout passes
            gate.set()
            assert (await first).knowledge == {"a": "first"}
            await organism.idle()
        return organism

    organism = virtual(main)
    assert handled == ["first"]  # the gathered request was never worked on
    assert [(letter.reason, letter.spore.knowledge) for letter in organism.dead_letters] == [
        ("expired", {"q": "gathered"})]


def test_a_request_that_expires_before_its_responder_runs_is_a_timeout_not_a_failure(
        virtual: Callable[..., Any]) -> None:
    """Found by fault injection (reqrep): a handler blocking the loop past a queued
    request's timeout made the lane find the request expired before the asker's timer
    fired, and the asker got ``HandlerError: agent 'kb' failed on request ... (expired)``
    for an agent that never ran; a ``gather`` counted it as ``failed``, not ``missing``.
    A request's expiry is its asker's timeout: ``RequestTimeout``, on every path."""
    gathered: list[Any] = []

    async def hog(spore: Spore, ctx: Any) -> None:
        asyncio.get_running_loop()._now += 3.0  # type: ignore[attr-defined]  # time.sleep(3)

    async def kb(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"a": 1}

    async def asker(spore: Spore, ctx: Any) -> None:
        await ctx.send("hog", {})
        gathered.append(await ctx.gather(["kb"], {}, timeout=1))

    async def main(loop: VirtualClockLoop) -> tuple[Organism, BaseException]:
        organism = Organism.from_dict({
            "organism": {"name": "blocked-loop"}, "limits": {"loop_stall_warning": 0},
            "agents": {"kb": {"handler": kb}, "hog": {"handler": hog},
                       "asker": {"handler": asker, "peers": ["kb", "hog"]}}}, now=loop.wall)
        async with organism.running():
            await organism.send("hog", {})
            try:
                await organism.request("kb", {}, timeout=1)
            except Exception as exc:  # noqa: BLE001  # what it is, is what is asserted
                raised: BaseException = exc
            await organism.send("asker", {})
            await organism.idle()
        return organism, raised

    organism, raised = virtual(main)
    assert isinstance(raised, RequestTimeout), repr(raised)
    assert "before 'kb' could answer it" in str(raised)
    [result] = gathered
    assert (result.missing, result.failed) == (("kb",), {})
    assert [letter.reason for letter in organism.dead_letters] == ["expired", "expired"]


@pytest.mark.parametrize("reason", ["expired", "handler failed"])
async def test_a_failure_told_to_a_request_whose_asker_was_cancelled_raises_nothing(
        reason: str) -> None:
    # Between its asker's cancellation and the asker's own `finally` (a turn of the loop),
    # the request is still in the book, its future cancelled: telling it a failure must
    # not raise InvalidStateError into the ledger that tells it.
    book = RequestBook()
    request = Spore(knowledge={}, to_agent="kb")
    future = book.open(request)
    future.cancel()
    book.fail(request.id, HandlerError("boom", agent="kb", spore_id=request.id),
              reason=reason)
    assert future.cancelled()
