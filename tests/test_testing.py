"""``sporeflow.testing``: the helper users test their own organisms with."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sporeflow import Context, Spore
from sporeflow.config import OrganismStateError, RequestTimeout
from sporeflow.config.errors import UsageError
from sporeflow.pipeline import virtual_clock
from sporeflow.testing import TestOrganism, VirtualClock


def greeter_organism() -> dict[str, Any]:
    async def greet(spore: Spore, ctx: Context) -> dict[str, Any]:
        return {"text": f"hello, {spore.knowledge['name']}"}

    async def shout(spore: Spore, ctx: Context) -> None:
        await ctx.send("printer", {"text": spore.knowledge["text"].upper()})

    def show(spore: Spore, ctx: Context) -> None:
        ctx.state.setdefault("shown", []).append(spore.knowledge["text"])

    return {"channels": {"greetings": {}},
            "agents": {"greeter": {"handler": greet, "emit": {"channel": "greetings"}},
                       "shouter": {"handler": shout, "subscribe": ["greetings"]},
                       "printer": {"handler": show}}}


async def test_outputs_are_captured_per_agent_and_per_channel() -> None:
    async with TestOrganism(greeter_organism()) as t:
        sent = await t.send("greeter", {"name": "Ada"})
        await t.idle()
    assert t.knowledge("greeter") == [{"text": "hello, Ada"}]  # returned: broadcast
    assert [s.knowledge for s in t.broadcasts("greetings")] == [{"text": "hello, Ada"}]
    assert t.knowledge("shouter") == [{"text": "HELLO, ADA"}]  # sent with ctx.send
    assert t.outputs("shouter")[0].to_agent == "printer"
    assert [s.id for s in t.handled("greeter")] == [sent.id]
    assert t.knowledge("printer") == []
    assert len(t.handled("printer")) == 1
    assert sent.from_agent == "test"
    assert t.dead_letters == []


async def test_a_misspelt_agent_or_channel_is_an_error_naming_the_closest() -> None:
    # Found by a new user: t.knowledge("triag") and t.broadcasts("nochan") returned [],
    # which a test asserting "nothing came out" takes for a pass.
    async with TestOrganism(greeter_organism()) as t:
        await t.send("greeter", {"name": "Ada"})
        await t.idle()
        for look in (t.knowledge, t.outputs, t.handled):
            with pytest.raises(ValueError, match=r"no agent 'greeterr' in organism .* \(did "
                                                 r"you mean 'greeter'\?\)"):
                look("greeterr")
        with pytest.raises(ValueError, match=r"no channel 'greeting' .* \(did you mean "
                                             r"'greetings'\?\)"):
            t.broadcasts("greeting")
        assert t.broadcasts("dead-letter") == []  # a built-in channel is one


async def test_a_failing_handler_is_a_dead_letter_with_its_error() -> None:
    def broken(spore: Spore, ctx: Context) -> None:
        raise ValueError(f"cannot take {spore.knowledge['n']}")

    async with TestOrganism({"agents": {"b": {"handler": broken}}}) as t:
        await t.send("b", {"n": 7})
        await t.idle()
    [letter] = t.dead_letters
    assert (letter.agent, letter.spore.knowledge) == ("b", {"n": 7})
    assert "ValueError: cannot take 7" in letter.error


async def test_a_request_gets_its_response() -> None:
    async with TestOrganism(greeter_organism()) as t:
        response = await t.request("greeter", {"name": "Bob"})
    assert response.knowledge == {"text": "hello, Bob"}


async def test_expiry_follows_the_virtual_clock_in_a_lane_too() -> None:
    release, passed = asyncio.Event(), asyncio.Event()

    async def gate(spore: Spore, ctx: Context) -> None:
        if spore.knowledge["n"] == 1:
            await release.wait()  # holds the one slot: the next spore waits in the lane

    async def marker(spore: Spore, ctx: Context) -> None:
        passed.set()

    organism = {"agents": {"gate": {"handler": gate}, "marker": {"handler": marker}}}
    async with TestOrganism(organism) as t:
        await t.send("gate", {"n": 1})
        await t.send("gate", {"n": 2}, expires_in=30)
        await t.send("marker", {})  # handled: the spore before it is in gate's lane
        await asyncio.wait_for(passed.wait(), 5)
        await t.advance(31)  # past its expiry, by the loop's clock as by the wall's
        release.set()
        await t.idle()
    assert [s.knowledge["n"] for s in t.handled("gate")] == [1]
    [letter] = t.dead_letters
    assert (letter.reason, letter.spore.knowledge) == ("expired", {"n": 2})


async def test_an_hour_of_retry_backoff_passes_in_an_advance() -> None:
    failing = asyncio.Event()

    async def flaky(spore: Spore, ctx: Context) -> dict[str, int]:
        if ctx.attempt == 1:
            failing.set()  # the lane schedules the retry as this raises, in this task
            raise ConnectionError("the first try fails")
        return {"attempt": ctx.attempt}

    organism = {"agents": {"f": {"handler": flaky, "retry": {"attempts": 2,
                                                             "backoff": "1h"}}}}
    async with TestOrganism(organism) as t:
        await t.send("f", {})
        await asyncio.wait_for(failing.wait(), 5)
        assert t.organism.stats()["agents"]["f"]["retried"] == 1
        await t.advance(3600)  # the backoff is jittered within 30 to 60 minutes
        await t.idle(timeout=5)
    assert t.knowledge("f") == [{"attempt": 2}]
    assert t.dead_letters == []


async def test_the_clock_is_frozen_until_advanced_and_the_loop_gets_its_own_back() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    loop = asyncio.get_running_loop()
    async with TestOrganism(greeter_organism(), start=start) as t:
        assert t.now() == start
        assert "time" in vars(loop)  # moved with the virtual clock
        before = loop.time()
        await t.advance(90)
        assert t.now() == start + timedelta(seconds=90)
        assert loop.time() - before == pytest.approx(90)  # frozen: it moved by 90 alone
    assert "time" not in vars(loop)
    assert "call_at" not in vars(loop)


async def test_one_virtual_clock_per_loop() -> None:
    async with TestOrganism(greeter_organism()):
        with pytest.raises(OrganismStateError, match="virtual clock already"):
            VirtualClock().attach(asyncio.get_running_loop())
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2030, 1, 1))  # noqa: DTZ001 - the mistake under test


BOOTED = """
def hello(spore, ctx):
    return {"booted": True}
"""


async def test_from_a_file_with_no_boot_spores_unless_asked(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    mod = handler_modules(BOOTED)
    file = tmp_path / "organism.yaml"
    file.write_text(f"agents:\n  hello: {{handler: {mod}:hello, boot: {{}}, "
                    f"emit: {{channel: out}}}}\nchannels: {{out: {{}}}}\n")
    async with TestOrganism(file) as quiet:
        await quiet.idle()
    async with TestOrganism(file, boot=True) as booted:
        await booted.idle()
    assert quiet.handled("hello") == []
    assert booted.knowledge("hello") == [{"booted": True}]


async def test_idle_past_its_backstop_says_what_is_held_and_to_advance_the_clock() -> None:
    async def flaky(spore: Spore, ctx: Context) -> None:
        raise ConnectionError("fails; the retry waits on the virtual clock")

    organism = {"agents": {"f": {"handler": flaky, "retry": {"attempts": 2,
                                                             "backoff": "1h"}}}}
    async with TestOrganism(organism) as t:
        await t.send("f", {})
        with pytest.raises(TimeoutError) as caught:
            await t.idle(timeout=0.1)  # nothing advances the clock: the retry never comes
        await t.advance(3600)
        await t.idle(timeout=5)
    message = str(caught.value)
    assert message.startswith("TestOrganism.idle(): 1 spore(s) still held after 0.1s of real")
    assert "await t.advance(seconds)" in message


@pytest.mark.parametrize("sync", [False, True])
async def test_one_long_advance_runs_every_retry_due_within_it(sync: bool) -> None:
    """Advancing 5 hours is 5 hours passing: a retry that fails again within the span is
    retried within it, and each attempt sees the clock at its own time."""
    seen: list[tuple[int, datetime]] = []
    clock: list[TestOrganism] = []

    def attempt(spore: Spore, ctx: Context) -> dict[str, int]:
        seen.append((ctx.attempt, clock[0].now()))
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} fails")
        return {"attempt": ctx.attempt}

    async def attempt_async(spore: Spore, ctx: Context) -> dict[str, int]:
        return attempt(spore, ctx)

    start = datetime(2030, 1, 1, tzinfo=UTC)
    organism = {"agents": {"f": {"handler": attempt if sync else attempt_async, "retry": {
        "attempts": 3, "backoff": "1h", "max_backoff": "2h"}}}}
    async with TestOrganism(organism, start=start) as t:
        clock.append(t)
        await t.send("f", {})
        await t.advance(5 * 3600)
        await t.idle(timeout=5)
    assert [n for n, _ in seen] == [1, 2, 3]
    assert t.knowledge("f") == [{"attempt": 3}]
    first, second, third = (when - start for _, when in seen)
    # Equal jitter: the first backoff is 0.5-1 h, the second 1-2 h, each from its attempt.
    assert first == timedelta(0)
    assert timedelta(minutes=30) <= second <= timedelta(hours=1)
    assert second + timedelta(hours=1) <= third <= second + timedelta(hours=2)


async def test_a_handlers_timeout_waits_for_the_virtual_clock() -> None:
    """A timeout is virtual time too: real time passing does not fire it."""
    async def slow(spore: Spore, ctx: Context) -> None:
        await asyncio.sleep(1000)

    async with TestOrganism({"agents": {"s": {"handler": slow, "timeout": "0.5s"}}}) as t:
        await t.send("s", {})
        with pytest.raises(TimeoutError, match="1 spore"):
            await t.idle(timeout=1)  # a second of real time: twice the timeout
        assert t.dead_letters == []
        await t.advance(0.5)
        await t.idle(timeout=5)
    [letter] = t.dead_letters
    assert letter.reason == "timeout"


async def test_a_request_never_answered_ends_in_real_time_too() -> None:
    async def silent(spore: Spore, ctx: Context) -> None:
        await asyncio.sleep(1000)

    async with TestOrganism({"agents": {"q": {"handler": silent}}}) as t:
        with pytest.raises(TimeoutError, match=r"TestOrganism.request\('q'\): no response "
                                               r"within 0.5s of real time"):
            await t.request("q", {}, timeout=0.5)
        await t.advance(1000)  # its handler ends: the stop need not wait for it


async def test_a_request_whose_handler_returned_none_says_so_not_to_move_the_clock() -> None:
    # Found by a new user: the message said to move the virtual clock, sending them after
    # the wrong thing; the handler had returned None, which answers nothing.
    async def mute(spore: Spore, ctx: Context) -> None:
        return None

    async with TestOrganism({"agents": {"q": {"handler": mute}}}) as t:
        # RequestTimeout, as organism.request raises (found by a second new user: the
        # built-in TimeoutError, not the error README names for a request).
        with pytest.raises(RequestTimeout) as said:
            await t.request("q", {}, timeout=0.5)
    assert str(said.value) == (
        "TestOrganism.request('q'): no response within 0.5s of real time; 'q' handled it "
        "and holds nothing now, and no response came back: a request is answered by what "
        "its handler returns (a dict), or by ctx.reply: did it return None?")


async def test_a_tests_own_sleep_fails_the_test_saying_why(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Found by a new user: `await asyncio.sleep(0.1)` in a test hung until pytest's own
    # timeout, without a word: the loop's clock stands still under a TestOrganism. A log
    # line alone was not enough (found by a second one): pytest shows it only for a test
    # that ends, and this one never did.
    monkeypatch.setattr(virtual_clock, "HELD_WARN_S", 0.2)

    async def mute(spore: Spore, ctx: Context) -> None:
        return None

    async def the_test() -> None:
        async with TestOrganism({"agents": {"q": {"handler": mute}}}) as t:
            await t.send("q", {})
            await t.idle()  # a helper waits: not told
            await asyncio.sleep(0.1)  # the mistake

    task = asyncio.ensure_future(the_test())
    await asyncio.wait([task])
    with pytest.raises(asyncio.CancelledError, match="waits for ever under a TestOrganism"):
        task.result()
    [told] = [r for r in caplog.records if "waits for ever" in r.getMessage()]
    assert told.levelname == "WARNING"
    assert "for a timer due in 0.1 s of virtual time" in told.getMessage()
    assert "`await t.advance(seconds)`" in told.getMessage()


async def test_a_helper_waiting_on_a_retry_is_not_told_of_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Found by a second new user: t.idle() while a retry waited logged "a test's own
    # asyncio.sleep ... waits for ever ... or wait with `await t.idle()`", next to
    # idle()'s own, right, TimeoutError.
    monkeypatch.setattr(virtual_clock, "HELD_WARN_S", 0.2)

    async def flaky(spore: Spore, ctx: Context) -> None:
        raise ValueError("not yet")

    async with TestOrganism({"agents": {"f": {"handler": flaky, "retry": {
            "attempts": 2, "backoff": "30s"}}}}) as t:
        await t.send("f", {})
        with pytest.raises(TimeoutError, match="waiting for a retry or a timer"):
            await t.idle(timeout=0.5)
        await t.advance(60)
        await t.idle()
    assert "waits for ever" not in caplog.text


# A loop's clock a hundred minutes after boot, and a timer's time that origin + offset
# does not add up to: (W - O) + O is one ulp short of W in floating point.
_ORIGIN, _WHEN = 6004.398192685, 15196.05440482509


class _ClockAtOrigin(asyncio.SelectorEventLoop):
    """asyncio's own loop, its clock reading ``_ORIGIN`` (it moves only virtually)."""

    def time(self) -> float:
        return _ORIGIN


async def _step_onto_the_timer() -> list[float]:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    async with TestOrganism(greeter_organism()) as t:
        loop.call_at(_WHEN, lambda: fired.append(loop.time()))
        await t.advance(_WHEN - _ORIGIN + 60)  # ends by its own backstop at worst
    return fired


@pytest.mark.timeout(30)
def test_an_advance_steps_onto_a_timer_that_origin_plus_offset_misses() -> None:
    """The CI hang of 8428438: stepping to origin + (when - origin) left the clock one ulp
    short of a timer the loop had fired, and the advance stepped onto it forever."""
    assert _ORIGIN + (_WHEN - _ORIGIN) != _WHEN  # the rounding this test is about
    with asyncio.Runner(loop_factory=_ClockAtOrigin) as runner:
        assert runner.run(_step_onto_the_timer()) == [_WHEN]


async def test_what_is_set_off_for_now_runs_before_the_clock_moves_on() -> None:
    """A timer set for now (call_later(0)) by a callback queued before the advance, or
    by a timer the advance fired, runs at that time, not at the next timer's."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, float]] = []
    async with TestOrganism(greeter_organism()) as t:
        origin = loop.time()

        def now(name: str) -> None:
            loop.call_later(0, lambda: seen.append((name, loop.time())))

        loop.call_soon(now, "queued")
        ten = loop.call_later(10, now, "fired")
        twenty = loop.call_later(20, lambda: seen.append(("later", loop.time())))
        await t.advance(30)
    # Each at its timer's own reading (origin + 10 need not be origin plus exactly 10).
    assert seen == [("queued", origin), ("fired", ten.when()), ("later", twenty.when())]


async def test_an_advance_that_cannot_end_says_why_in_real_time() -> None:
    """A sync handler that does not return, or a loop never without work, holds an advance:
    it gives up after ``timeout`` real seconds, saying what it waits for."""
    stop, entered = threading.Event(), threading.Event()

    def blocked(spore: Spore, ctx: Context) -> None:
        entered.set()
        stop.wait(30)

    def spin() -> None:  # a callback that keeps one ready until told to stop
        if not stop.is_set():
            asyncio.get_running_loop().call_soon(spin)

    async with TestOrganism({"agents": {"b": {"handler": blocked}}}) as t:
        await t.send("b", {})
        with pytest.raises(TimeoutError, match=r"advance\(60\): not done after 0.2s of "
                                               r"real time.*sync handler still runs"):
            await t.advance(60, timeout=0.2)
        stop.set()
        await t.idle(timeout=5)
        stop.clear()
        spin()
        with pytest.raises(TimeoutError, match="always had a callback ready"):
            await t.advance(60, timeout=0.2)
        stop.set()
    assert entered.is_set()


async def test_a_handler_reads_the_virtual_clock_through_ctx_now() -> None:
    # Found by a new user: a handler had no way to read a TestOrganism's clock
    # (ctx.now raised AttributeError), so times it stamped were the machine's.
    start = datetime(2030, 1, 1, tzinfo=UTC)

    async def stamp(spore: Spore, ctx: Context) -> dict[str, Any]:
        return {"at": ctx.now().isoformat()}

    async with TestOrganism({"agents": {"stamp": {"handler": stamp}}}, start=start) as t:
        await t.advance(30)
        await t.send("stamp", {})
        await t.idle()
    assert t.knowledge("stamp") == [{"at": "2030-01-01T00:00:30+00:00"}]



async def test_spores_are_made_at_the_virtual_clocks_time() -> None:
    # Left alone by an earlier session: created_at read the machine's clock, so that a
    # spore's age (ctx.now() - spore.created_at) was years off under start=, and an
    # advance left created_at where it was.
    start = datetime(2030, 1, 1, tzinfo=UTC)
    ages: list[float] = []

    async def relay(spore: Spore, ctx: Context) -> dict[str, Any]:
        ages.append((ctx.now() - spore.created_at).total_seconds())
        ctx.send("sink", {"sent": True})
        return {"returned": True}

    async def sink(spore: Spore, ctx: Context) -> None:
        ages.append((ctx.now() - spore.created_at).total_seconds())

    organism = {"agents": {"relay": {"handler": relay, "emit": {"to": "sink"}},
                           "sink": {"handler": sink}}}
    async with TestOrganism(organism, start=start) as t:
        await t.advance(30)
        await t.send("relay", {})
        await t.idle()
    made = [spore.created_at for spore in t.handled("relay") + t.handled("sink")]
    assert made == [start + timedelta(seconds=30)] * 3
    assert ages == [0.0, 0.0, 0.0]


async def test_an_advance_takes_durations_and_helpers_raise_sporeflow_errors() -> None:
    # Found by a new user: t.advance("5s") failed with "TypeError: '<=' not supported",
    # and t.handled("typo") raised a plain ValueError, where README says every error
    # sporeflow raises is a SporeflowError.
    from sporeflow.config import SporeflowError

    async with TestOrganism(greeter_organism(), start=datetime(2030, 1, 1, tzinfo=UTC)) as t:
        await t.advance("5s")
        await t.advance(timedelta(minutes=1))
        assert t.now() == datetime(2030, 1, 1, 0, 1, 5, tzinfo=UTC)
        for wrong in ("soon", -1, float("nan")):
            with pytest.raises(SporeflowError, match="advance"):
                await t.advance(wrong)  # type: ignore[arg-type]
        with pytest.raises(SporeflowError, match="no agent 'greeterr'"):
            t.handled("greeterr")


async def test_a_handler_that_catches_its_timeouts_cancellation_is_told_so() -> None:
    # Found by a new user: a handler with a bare `except BaseException` around its await
    # caught the cancellation its timeout sent and ran on; the dead letter said only "ran
    # past its timeout", as for a handler that blocked the loop.
    async def stubborn(spore: Spore, ctx: Context) -> None:
        for _ in range(3):
            try:
                await asyncio.sleep(1)
                break
            except BaseException:  # noqa: BLE001 - the user's mistake under test
                continue

    async with TestOrganism({"agents": {"s": {"handler": stubborn, "timeout": "0.5s"}}}) as t:
        await t.send("s", {})
        await t.advance(3)
        await t.idle()
    [letter] = t.dead_letters
    assert letter.reason == "timeout"
    assert "ran past its timeout of 0.5s: it caught the cancellation its timeout sent" in (
        letter.error)


async def test_each_organism_stamps_its_spores_with_its_own_clock() -> None:
    # Found in review: the clock was set in the context of the task that started an
    # organism, so two organisms started in one task both stamped with the last one's
    # clock, and that task kept a stopped organism's clock for good.
    from sporeflow.pipeline import Organism

    made: dict[str, list[datetime]] = {}

    async def relay(spore: Spore, ctx: Context) -> None:
        made.setdefault(ctx.agent, []).append(spore.created_at)
        if "relayed" not in spore.knowledge:
            ctx.send(ctx.agent, {"relayed": True})

    clocks = {name: datetime(year, 1, 1, tzinfo=UTC) for name, year in (("a", 2030),
                                                                     ("b", 2040))}
    organisms = {name: Organism.from_dict({"organism": {"name": name},
                                           "agents": {name: {"handler": relay}}},
                                          now=lambda at=at: at)
                 for name, at in clocks.items()}
    for organism in organisms.values():
        await organism.start()
    for name, organism in organisms.items():
        await organism.send(name, {})
        await organism.idle()
    for organism in organisms.values():
        await organism.stop()
    assert made == {name: [at, at] for name, at in clocks.items()}
    assert Spore(knowledge={}).created_at.year == datetime.now(UTC).year  # this task's own


def test_an_organism_with_external_agents_is_refused_saying_what_to_test_instead() -> None:
    # Found by a documentation audit: the memory backend's refusal said to set a broker
    # URL, which a TestOrganism (always in memory) cannot take.
    async def sink(spore: Spore, ctx: Context) -> None:
        return None

    with pytest.raises(UsageError, match=r"TestOrganism runs in memory, where the external "
                                         r"agents pr \(reached through a broker\) cannot be: "
                                         r"test the organism's own agents with a dict"):
        TestOrganism({"agents": {"sink": {"handler": sink},
                                 "pr": {"external": "praval"}}})


async def _work(spore: Spore, ctx: Context) -> dict[str, Any]:
    return {"ok": True}


SHARED_SPEC: dict[str, Any] = {"organism": {"name": "shared"},
                               "agents": {"worker": {"handler": _work}}}


async def test_testorganism_leaves_the_callers_dict_as_it_was() -> None:
    # A module-level dict shared by several tests must work in each of them.
    for _ in range(2):
        async with TestOrganism(SHARED_SPEC) as t:
            await t.send("worker", {})
            await t.idle()
            assert t.knowledge("worker") == [{"ok": True}]
        assert SHARED_SPEC["agents"]["worker"]["handler"] is _work
