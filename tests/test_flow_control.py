"""Flow control: admission, reply storms, nested requests, priorities, failures, limits.

Time-based behaviour (timeouts, backoff, expiry) runs on the virtual clock of
``conftest.virtual``: it takes no real time and no test sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import HandlerError, Organism, RequestTimeout, Spore
from sporeflow.pipeline.core.deadletters import DeadLetter, DeadLetterStore
from tests.conftest import wait_until

BACKSTOP = 30.0  # seconds of real time; a healthy run of any test here takes far less


def letters(org: Organism, reason: str | None = None) -> list[Any]:
    return [d for d in org.dead_letters if reason is None or d.reason == reason]


# -- reply storm and admission -----------------------------------------------------------

FANOUT, LEVELS = 10, 4
SUBTREE = sum(FANOUT**level for level in range(LEVELS + 1))  # 11,111 spores per seed
LEAVES = FANOUT**LEVELS


async def test_reply_storm_completes_without_deadlock_and_admission_bounds_what_is_held() -> None:
    """Each spore makes 10 replies for 4 levels: replies never block, outside senders wait.

    The bound on what is held: a seed is admitted only while fewer than
    ``max_in_flight`` spores are held, and each active seed holds at least one, so at
    most ``max_in_flight`` seeds are active at once. The spores of one seed's tree held
    at any moment are pairwise unrelated (a spore exists only once its parent was
    handled), so there are at most as many as the tree has leaves (10**4). Hence
    held <= max_in_flight * 10**4; without admission control all 20 seeds could be
    active, i.e. up to 20 * 10**4.
    """
    max_in_flight, seeds, senders = 8, 20, 4
    org: Organism
    peak = 0
    handled = 0

    async def storm(spore: Spore, ctx: Any) -> list[dict[str, int]] | None:
        nonlocal peak, handled
        handled += 1
        assert org._run is not None
        peak = max(peak, org._run.intake.held)
        level = spore.knowledge["level"]
        if level >= LEVELS:
            return None
        return [{"level": level + 1} for _ in range(FANOUT)]

    org = Organism.from_dict({
        "organism": {"name": "storm"},
        "channels": {"c": {"capacity": 100}},
        "agents": {"storm": {"handler": storm, "emit": {"to": "storm"}, "concurrency": 4}},
        "limits": {"max_in_flight": max_in_flight, "max_hops": 5},
    })
    handled_when_admitted: list[int] = []

    async def sender() -> None:
        for _ in range(seeds // senders):
            await org.send("storm", {"level": 0}, channel="c")
            handled_when_admitted.append(handled)

    async with org.running():
        await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(senders))), BACKSTOP)
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()

    assert stats["totals"]["handled"] == seeds * SUBTREE == handled
    assert stats["totals"]["admitted"] == seeds
    assert stats["totals"]["replies"] == seeds * (SUBTREE - 1)
    assert stats["dead_letters"]["total"] == 0
    # The first max_in_flight sends went straight in; every later one waited for work
    # to finish (it was admitted only after some spores had been handled).
    assert sorted(handled_when_admitted)[:max_in_flight] == [0] * max_in_flight
    assert all(n > 0 for n in sorted(handled_when_admitted)[max_in_flight:])
    # Replies were not throttled (they grew far beyond max_in_flight) ...
    assert peak > max_in_flight * FANOUT
    # ... but admission kept the total within the bound derived above.
    assert peak <= max_in_flight * LEAVES


async def test_thousand_concurrent_requests_to_a_single_slot_responder_all_get_their_answer(
) -> None:
    async def double(spore: Spore, ctx: Any) -> dict[str, int]:
        return {"n": spore.knowledge["n"], "double": 2 * spore.knowledge["n"]}

    org = Organism.from_dict({"agents": {"doubler": {"handler": double, "concurrency": 1}}})
    async with org.running():
        responses = await asyncio.wait_for(asyncio.gather(
            *(org.request("doubler", {"n": n}, timeout=BACKSTOP) for n in range(1000))),
            BACKSTOP)
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()
    assert [r.knowledge for r in responses] == [{"n": n, "double": 2 * n} for n in range(1000)]
    assert all(r.spore_type == "response" and r.from_agent == "doubler" for r in responses)
    assert stats["agents"]["doubler"]["handled"] == 1000
    assert stats["dead_letters"]["total"] == 0


async def test_nested_requests_twenty_deep_between_two_single_slot_agents_compose_the_answer(
) -> None:
    depth = 20

    def asker(me: str, other: str) -> Callable[..., Any]:
        async def handle(spore: Spore, ctx: Any) -> dict[str, Any]:
            level = spore.knowledge["level"]
            if level == depth:
                return {"path": [f"{me}{level}"]}
            response = await ctx.request(other, {"level": level + 1}, timeout=BACKSTOP)
            return {"path": [f"{me}{level}", *response.knowledge["path"]]}
        return handle

    org = Organism.from_dict({"agents": {
        "a": {"handler": asker("a", "b"), "concurrency": 1},
        "b": {"handler": asker("b", "a"), "concurrency": 1},
    }})
    async with org.running():
        response = await org.request("a", {"level": 0}, timeout=BACKSTOP)
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()
    assert response.knowledge["path"] == [
        f"{'ab'[level % 2]}{level}" for level in range(depth + 1)]
    assert stats["agents"]["a"]["handled"] == 11
    assert stats["agents"]["b"]["handled"] == 10
    assert stats["dead_letters"]["total"] == 0


async def test_a_single_slot_agent_can_request_itself() -> None:
    async def recursive(spore: Spore, ctx: Any) -> dict[str, int]:
        n = spore.knowledge["n"]
        if n == 0:
            return {"sum": 0}
        response = await ctx.request("self", {"n": n - 1}, timeout=BACKSTOP)
        return {"sum": n + response.knowledge["sum"]}

    org = Organism.from_dict({"agents": {"self": {"handler": recursive, "concurrency": 1}}})
    async with org.running():
        response = await asyncio.wait_for(org.request("self", {"n": 10}), BACKSTOP)
    assert response.knowledge == {"sum": 55}


async def test_a_handler_whose_response_arrived_resumes_before_newer_queued_spores() -> None:
    """``reclaim``: waiting handlers go before new spores. Once the response of ``R``'s
    request has arrived, the next free slot is R's, not the next queued spore's; else
    a steady inflow of work starves R (and whoever awaits it) indefinitely."""
    log: list[str] = []
    responder_started, responder_gate = asyncio.Event(), asyncio.Event()
    filler_started, filler_gate = asyncio.Event(), asyncio.Event()

    async def worker(spore: Spore, ctx: Any) -> None:
        name = spore.knowledge["name"]
        log.append(name)
        if name == "R":
            await ctx.request("responder", {}, timeout=BACKSTOP)
            log.append("R resumed")
        elif name == "f0":
            filler_started.set()
            await filler_gate.wait()

    async def responder(spore: Spore, ctx: Any) -> dict[str, bool]:
        responder_started.set()
        await responder_gate.wait()
        return {"ok": True}

    org = Organism.from_dict({"agents": {
        "worker": {"handler": worker, "concurrency": 1},
        "responder": {"handler": responder},
    }})
    async with org.running():
        await org.send("worker", {"name": "R"})
        await asyncio.wait_for(responder_started.wait(), BACKSTOP)
        for n in range(10):
            await org.send("worker", {"name": f"f{n}"})
        await asyncio.wait_for(filler_started.wait(), BACKSTOP)  # f0 holds the only slot
        responder_gate.set()
        lane = org.wiring().agents["worker"].lane
        await wait_until(lambda: bool(lane._resumers))  # R has its response, wants a slot
        filler_gate.set()
        await asyncio.wait_for(org.idle(), BACKSTOP)

    assert log == ["R", "f0", "R resumed", *(f"f{n}" for n in range(1, 10))]


# -- priorities ---------------------------------------------------------------------------


async def test_queued_spores_are_handled_highest_priority_first_fifo_within_a_priority() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    order: list[tuple[int, int]] = []

    async def slow(spore: Spore, ctx: Any) -> None:
        if spore.knowledge["seq"] == 0:
            started.set()
            await gate.wait()
        order.append((spore.priority, spore.knowledge["seq"]))

    org = Organism.from_dict({"agents": {"slow": {"handler": slow, "concurrency": 1}}})
    priorities = [3, 7, 5, 7, 3, 9, 1, 5, 7, 10, 3, 9]
    async with org.running():
        await org.send("slow", {"seq": 0}, priority=1)
        await asyncio.wait_for(started.wait(), BACKSTOP)
        for seq, priority in enumerate(priorities, start=1):
            await org.send("slow", {"seq": seq}, priority=priority)
        await wait_until(lambda: org.stats()["agents"]["slow"]["queued"] == len(priorities))
        gate.set()
        await asyncio.wait_for(org.idle(), BACKSTOP)

    expected = sorted(((p, s) for s, p in enumerate(priorities, start=1)),
                      key=lambda item: (-item[0], item[1]))
    assert order == [(1, 0), *expected]


# -- failures, timeouts and retries (virtual clock) ----------------------------------------


def test_failures_timeouts_and_retries_are_counted_exactly_while_other_spores_flow(
    virtual: Any,
) -> None:
    async def main(loop: Any) -> None:
        attempts: list[tuple[int, float]] = []

        async def flaky(spore: Spore, ctx: Any) -> None:
            if spore.knowledge["n"] % 3 == 0:
                raise ValueError(f"bad spore {spore.knowledge['n']}")

        async def hang(spore: Spore, ctx: Any) -> None:
            await asyncio.Event().wait()

        async def third_time_lucky(spore: Spore, ctx: Any) -> dict[str, int]:
            attempts.append((ctx.attempt, loop.time()))
            if ctx.attempt < 3:
                raise ConnectionError(f"attempt {ctx.attempt} failed")
            return {"ok": ctx.attempt}

        steady_seen: list[int] = []

        async def steady(spore: Spore, ctx: Any) -> None:
            steady_seen.append(spore.knowledge["n"])

        async def sink(spore: Spore, ctx: Any) -> None:
            return None

        org = Organism.from_dict({"agents": {
            "flaky": {"handler": flaky, "concurrency": 2},
            "hang": {"handler": hang, "timeout": "2s"},
            "retrier": {"handler": third_time_lucky, "emit": {"to": "sink"},
                        "retry": {"attempts": 3, "backoff": "100ms", "max_backoff": "1s"}},
            "steady": {"handler": steady, "concurrency": 3},
            "sink": {"handler": sink},
        }})
        async with org.running():
            started = loop.time()
            await org.send("retrier", {})
            await org.send("hang", {"n": 1})
            await org.send("hang", {"n": 2})
            for n in range(1, 31):
                await org.send("flaky", {"n": n})
                await org.send("steady", {"n": n})
            await org.idle()
            stats = org.stats()

        agents = stats["agents"]
        assert (agents["flaky"]["handled"], agents["flaky"]["failed"]) == (20, 10)
        assert agents["flaky"]["retried"] == 0
        failed = letters(org, "handler failed")
        assert sorted(d.spore.knowledge["n"] for d in failed) == list(range(3, 31, 3))
        for letter in failed:
            assert letter.agent == "flaky"
            assert letter.attempts == 1
            assert letter.error == f"ValueError: bad spore {letter.spore.knowledge['n']}"
            assert letter.traceback is not None
            assert "ValueError: bad spore" in letter.traceback
            assert "in flaky" in letter.traceback  # the handler's own frame is kept

        timeouts = letters(org, "timeout")
        assert sorted(d.spore.knowledge["n"] for d in timeouts) == [1, 2]
        assert all(d.agent == "hang" and "2.0s" in d.error for d in timeouts)
        assert (agents["hang"]["handled"], agents["hang"]["failed"]) == (0, 2)
        assert loop.time() - started >= 4.0  # one slot: two 2 s timeouts one after another

        assert [a for a, _ in attempts] == [1, 2, 3]
        assert (agents["retrier"]["handled"], agents["retrier"]["failed"]) == (1, 0)
        assert agents["retrier"]["retried"] == 2
        assert agents["sink"]["handled"] == 1  # the successful attempt's reply went on
        first_wait = attempts[1][1] - attempts[0][1]
        second_wait = attempts[2][1] - attempts[1][1]
        # Exponential backoff with equal jitter: [b/2, b], then [b, 2b] with b = 100 ms.
        assert 0.05 <= first_wait <= 0.1 + 1e-9
        assert 0.1 <= second_wait <= 0.2 + 1e-9
        assert attempts[2][1] - attempts[0][1] >= 0.1

        assert sorted(steady_seen) == list(range(1, 31))
        assert agents["steady"]["failed"] == 0
        assert stats["dead_letters"]["total"] == 12
        assert stats["dead_letters"]["by_reason"] == {"handler failed": 10, "timeout": 2}

    virtual(main)


def test_a_retry_in_backoff_does_not_hold_the_agents_only_slot(virtual: Any) -> None:
    async def main(loop: Any) -> None:
        log: list[tuple[str, float]] = []
        failed_once = asyncio.Event()

        async def worker(spore: Spore, ctx: Any) -> None:
            name = spore.knowledge["name"]
            log.append((f"{name}{ctx.attempt}", loop.time()))
            if name == "x" and ctx.attempt == 1:
                failed_once.set()
                raise RuntimeError("first try fails")

        org = Organism.from_dict({"agents": {"worker": {
            "handler": worker, "concurrency": 1,
            "retry": {"attempts": 2, "backoff": "10s", "max_backoff": "10s"}}}})
        async with org.running():
            await org.send("worker", {"name": "x"})
            await failed_once.wait()
            await org.send("worker", {"name": "y"})
            await org.idle()
            stats = org.stats()

        assert [entry for entry, _ in log] == ["x1", "y1", "x2"]
        times = dict(log)
        assert times["y1"] < 5.0 <= times["x2"]  # y ran during x's backoff (>= 5 s)
        assert stats["agents"]["worker"]["handled"] == 2
        assert stats["agents"]["worker"]["retried"] == 1
        assert stats["dead_letters"]["total"] == 0

    virtual(main)


# -- requests: timeouts, late responses, failing responders (virtual clock) ------------------


def test_a_request_whose_handler_returned_nothing_times_out_saying_so(virtual: Any) -> None:
    # Found by a new user: a request to a handler returning None waited its whole
    # timeout, then said only "no response", with no dead letter and no log line.
    async def main(loop: Any) -> None:
        async def mute(spore: Spore, ctx: Any) -> None:
            return None

        async def slow(spore: Spore, ctx: Any) -> dict[str, bool]:
            await asyncio.sleep(5)
            return {"late": True}

        org = Organism.from_dict({"agents": {"mute": {"handler": mute},
                                             "slow": {"handler": slow}}})
        async with org.running():
            with pytest.raises(RequestTimeout) as mute_said:
                await org.request("mute", {}, timeout=1.0)
            with pytest.raises(RequestTimeout) as slow_said:
                await org.request("slow", {}, timeout=1.0)
        assert str(mute_said.value).endswith(
            "within 1.0s; 'mute' handled it, and no response came back (a request is "
            "answered by what its handler returns, or by ctx.reply: did it return None?)")
        assert str(slow_said.value).endswith("within 1.0s")  # still running: no such hint

    virtual(main)


def test_request_timeout_raises_and_the_late_response_is_dead_lettered(virtual: Any) -> None:
    async def main(loop: Any) -> None:
        async def slow(spore: Spore, ctx: Any) -> dict[str, bool]:
            await asyncio.sleep(5)
            return {"late": True}

        org = Organism.from_dict({"agents": {"slow": {"handler": slow}}})
        async with org.running():
            started = loop.time()
            with pytest.raises(RequestTimeout, match="within 1.0s"):
                await org.request("slow", {}, timeout=1.0)
            assert loop.time() - started == pytest.approx(1.0)
            await org.idle()
            stats = org.stats()

        late = letters(org, "late response")
        assert len(late) == 1
        assert late[0].spore.knowledge == {"late": True}
        assert late[0].spore.spore_type == "response"
        assert stats["agents"]["slow"]["handled"] == 1
        assert stats["dead_letters"]["by_reason"] == {"late response": 1}

    virtual(main)


def test_a_response_to_a_request_whose_asker_was_cancelled_is_a_late_response(
        virtual: Any) -> None:
    # Found by fault injection (reqrep): an asker cancelled while it waited (its task
    # cancelled, asyncio.wait_for, a handler's timeout around ctx.request) left no trace
    # of its request, and the response that came later was an 'unexpected response',
    # "answers ..., which is no pending request", as a forged one is.
    async def main(loop: Any) -> None:
        gate = asyncio.Event()

        async def slow(spore: Spore, ctx: Any) -> dict[str, bool]:
            await gate.wait()
            return {"late": True}

        async def asker(spore: Spore, ctx: Any) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.request("slow", {}, timeout=60), 1)

        org = Organism.from_dict({"agents": {
            "slow": {"handler": slow, "concurrency": 2},
            "asker": {"handler": asker, "peers": ["slow"]}}})
        async with org.running():
            waiting = asyncio.create_task(org.request("slow", {}, timeout=60))
            await org.send("asker", {})
            await asyncio.sleep(2)  # virtual time: both askers stopped waiting
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            gate.set()
            await org.idle()

        late = letters(org, "late response")
        assert len(late) == 2, [(d.reason, d.error) for d in org.dead_letters]
        assert all("stopped waiting" in letter.error for letter in late)
        assert org.stats()["dead_letters"]["by_reason"] == {"late response": 2}

    virtual(main)


async def test_a_response_that_resolved_the_request_as_its_timeout_fired_is_returned() -> None:
    # Found by a randomized stress: the response resolved the request's future in the
    # turn of the loop in which its timeout fired; request() then raised a bare
    # TimeoutError (no SporeflowError, no RequestTimeout), and the response, settled
    # as resolved, was neither returned nor a dead letter.
    async def blocker(spore: Spore, ctx: Any) -> dict[str, bool]:
        time.sleep(0.05)  # noqa: ASYNC251 - the fault: holds the loop past the deadline
        return {"ok": True}

    org = Organism.from_dict({"agents": {"blocker": {"handler": blocker}},
                              "limits": {"loop_stall_warning": 0}})
    async with org.running():
        answer = await org.request("blocker", {}, timeout=0.01)
        await org.idle()
    assert answer.knowledge == {"ok": True}
    assert list(org.dead_letters) == []


def test_request_to_a_failing_responder_raises_handler_error_at_once_caused_by_it(
    virtual: Any,
) -> None:
    async def main(loop: Any) -> None:
        async def failing(spore: Spore, ctx: Any) -> dict[str, bool]:
            raise KeyError("missing-thing")

        org = Organism.from_dict({"agents": {"failing": {"handler": failing}}})
        async with org.running():
            started = loop.time()
            with pytest.raises(HandlerError) as caught:
                await org.request("failing", {}, timeout=30.0)
            assert loop.time() - started < 0.01  # not the 30 s timeout
            await org.idle()
        assert isinstance(caught.value.__cause__, KeyError)
        assert caught.value.__cause__.args == ("missing-thing",)
        assert caught.value.agent == "failing"
        assert [d.reason for d in org.dead_letters] == ["handler failed"]

    virtual(main)


# -- limits ---------------------------------------------------------------------------------


async def test_a_ping_pong_loop_is_dead_lettered_at_max_hops_and_the_pipeline_goes_on() -> None:
    async def bounce(spore: Spore, ctx: Any) -> dict[str, int]:
        return {"hops_seen": spore.hops}

    async def echo(spore: Spore, ctx: Any) -> dict[str, str]:
        return {"echo": spore.knowledge["say"]}

    org = Organism.from_dict({
        "agents": {
            "ping": {"handler": bounce, "emit": {"to": "pong"}},
            "pong": {"handler": bounce, "emit": {"to": "ping"}},
            "echo": {"handler": echo},
        },
        "limits": {"max_hops": 5},
    })
    async with org.running():
        await org.send("ping", {"start": 1})
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()
        assert (stats["agents"]["ping"]["handled"], stats["agents"]["pong"]["handled"]) == (3, 3)
        [letter] = letters(org)
        assert letter.reason == "limit exceeded"
        assert "max_hops" in letter.error
        assert "5" in letter.error
        assert letter.spore.hops == 6
        assert letter.spore.to_agent == "ping"

        response = await org.request("echo", {"say": "still alive"}, timeout=BACKSTOP)
        assert response.knowledge == {"echo": "still alive"}
        await org.send("pong", {"start": 2})
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()
    assert (stats["agents"]["ping"]["handled"], stats["agents"]["pong"]["handled"]) == (6, 6)
    assert stats["dead_letters"]["by_reason"] == {"limit exceeded": 2}


def test_spores_that_expire_while_queued_are_dead_lettered_as_expired(virtual: Any) -> None:
    async def main(loop: Any) -> None:
        handled: list[str] = []

        async def slow(spore: Spore, ctx: Any) -> None:
            if spore.knowledge["name"] == "blocker":
                await asyncio.sleep(10)
            handled.append(spore.knowledge["name"])

        org = Organism(organism_from_dict({"agents": {"slow": {"handler": slow}}}),
                       now=loop.wall)
        async with org.running():
            await org.send("slow", {"name": "blocker"})
            for n in range(3):
                await org.send("slow", {"name": f"short{n}"}, expires_in=1.0)
            await org.send("slow", {"name": "long"}, expires_in=100.0)
            await org.send("slow", {"name": "forever"})
            await org.send("slow", {"name": "dead-on-arrival"}, expires_in=0.0)
            await org.idle()
            stats = org.stats()

        assert handled == ["blocker", "long", "forever"]
        expired = letters(org, "expired")
        assert sorted(d.spore.knowledge["name"] for d in expired) == [
            "dead-on-arrival", "short0", "short1", "short2"]
        assert stats["dead_letters"]["total"] == 4
        assert stats["agents"]["slow"]["handled"] == 3

    virtual(main)


async def test_the_dead_letter_store_keeps_the_newest_and_counts_the_evicted() -> None:
    async def always_fails(spore: Spore, ctx: Any) -> None:
        raise RuntimeError(f"no {spore.knowledge['n']}")

    org = Organism.from_dict({"agents": {"bad": {"handler": always_fails}},
                              "limits": {"max_dead_letters": 3}})
    async with org.running():
        for n in range(10):
            await org.send("bad", {"n": n})
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()
    assert [d.spore.knowledge["n"] for d in org.dead_letters] == [7, 8, 9]
    assert len(org.dead_letters) == 3
    assert stats["dead_letters"]["total"] == 10
    assert stats["dead_letters"]["kept"] == 3
    assert stats["dead_letters"]["evicted"] == 7
    assert stats["dead_letters"]["by_reason"] == {"handler failed": 10}


async def test_the_dead_letter_store_is_bounded_by_bytes_as_well_as_by_count() -> None:
    # Ten thousand refused spores of a megabyte each were ten gigabytes kept: the count
    # alone did not bound the memory.
    async def always_fails(spore: Spore, ctx: Any) -> None:
        raise RuntimeError("no")

    org = Organism.from_dict({"agents": {"bad": {"handler": always_fails}},
                              "limits": {"max_dead_letter_bytes": "100KiB"}})
    async with org.running():
        for n in range(30):
            await org.send("bad", {"n": n, "text": "x" * 10_000})
        await asyncio.wait_for(org.idle(), BACKSTOP)
        await org.send("bad", {"n": 30, "text": "y" * 300_000})  # alone over the bound
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()
    assert [d.spore.knowledge["n"] for d in org.dead_letters] == [30]  # the newest stays
    assert (stats["dead_letters"]["total"], stats["dead_letters"]["evicted"]) == (31, 30)
    assert stats["dead_letters"]["bytes"] > 100 * 1024  # weighed no further than the bound


def test_dead_letters_kept_by_bytes_keep_the_newest_that_fit() -> None:
    letter = DeadLetter.of(Spore(knowledge={"text": "x" * 1000}), "handler failed", None)
    store = DeadLetterStore(100, max_bytes=10_000)
    for _ in range(30):
        store.add(letter)
    weight = store.bytes // len(store)
    assert 1000 < weight < 2000  # its JSON and its error's text
    assert len(store) == 10_000 // weight
    assert store.evicted == 30 - len(store)
    assert [stored.number for stored in store.numbered()][-1] == 30
    taken = store.take([30])  # a replay takes it, and a refused one puts it back
    assert store.bytes == weight * len(store)
    store.restore(taken)
    assert store.bytes == weight * len(store)
    assert len(store) == 10_000 // weight


async def test_handler_exceptions_never_stop_the_pipeline() -> None:
    async def raises(spore: Spore, ctx: Any) -> None:
        raise RuntimeError("async boom")

    def raises_sync(spore: Spore, ctx: Any) -> None:
        raise ZeroDivisionError("sync boom")

    async def returns_garbage(spore: Spore, ctx: Any) -> int:
        return 42

    async def cancels_itself(spore: Spore, ctx: Any) -> None:
        raise asyncio.CancelledError("inner cancel")

    good_seen: Counter[int] = Counter()

    async def good(spore: Spore, ctx: Any) -> None:
        good_seen[spore.knowledge["n"]] += 1

    org = Organism.from_dict({
        "channels": {"news": {}},
        "agents": {
            "raises": {"handler": raises, "subscribe": ["news"]},
            "raises_sync": {"handler": raises_sync, "subscribe": ["news"]},
            "garbage": {"handler": returns_garbage, "subscribe": ["news"]},
            "cancels": {"handler": cancels_itself, "subscribe": ["news"]},
            "good": {"handler": good, "subscribe": ["news"], "concurrency": 2},
        },
    })
    async with org.running():
        for n in range(25):
            await org.broadcast({"n": n}, channel="news")
        await asyncio.wait_for(org.idle(), BACKSTOP)
        for n in range(25, 30):
            await org.send("good", {"n": n})
        await asyncio.wait_for(org.idle(), BACKSTOP)
        stats = org.stats()

    assert good_seen == Counter(range(30))
    for name in ("raises", "raises_sync", "garbage", "cancels"):
        assert (stats["agents"][name]["handled"], stats["agents"][name]["failed"]) == (0, 25)
    assert stats["dead_letters"]["by_reason"] == {"handler failed": 100}
    errors = Counter(d.error.split(":")[0] for d in org.dead_letters)
    assert errors == {"RuntimeError": 25, "ZeroDivisionError": 25, "SporeError": 25,
                      "CancelledError": 25}
    assert stats["state"] == "running"
