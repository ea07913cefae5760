"""Limits hold wherever spores enter: outside callers get the refusal raised at once;
what handlers send through ``ctx`` is dead-lettered and raised into the handler; what
they return (dicts, spores, XML) is dead-lettered. Each refusal names limit and value.
A spore sent already expired is dead-lettered as ``expired``, whoever sent it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import Limits
from sporeflow.pipeline import (
    Context,
    DeliveryError,
    LimitExceeded,
    Organism,
    Spore,
    SporeError,
)
from sporeflow.pipeline.cli.main import cli
from sporeflow.steps import check_spore

from .conftest import VirtualClockLoop

SMALL_LIMITS = {"max_spore_bytes": "1KiB", "max_hops": 3, "max_depth": 4}


def nested(depth: int) -> dict[str, Any]:
    knowledge: dict[str, Any] = {}
    for _ in range(depth - 1):
        knowledge = {"n": knowledge}
    return knowledge


async def sink(spore: Spore, ctx: Context) -> None:
    ctx.state.setdefault("got", []).append(spore.knowledge)


def organism(**agents: Any) -> Organism:
    return Organism.from_dict({"agents": {"sink": {"handler": sink}, **agents},
                               "limits": SMALL_LIMITS})


# -- outside callers: raised at once, nothing admitted -------------------------------------


@pytest.mark.parametrize(
    ("send", "error", "message"),
    [
        (lambda o: o.send("sink", {"text": "x" * 2000}), LimitExceeded,
         r"is \d+ bytes as JSON, over limits.max_spore_bytes=1024 \(2.3 KiB > 1 KiB\)"),
        (lambda o: o.send("sink", nested(5)), LimitExceeded,
         "nested deeper than limits.max_depth=4"),
        (lambda o: o.send("sink", {}, priority=0), LimitExceeded,
         r"priority 0 is out of range; use 1..10"),
        (lambda o: o.send("sink", {}, priority="high"), LimitExceeded,
         r"priority must be a whole number from 1 to 10, got 'high' \(a str\)"),
        (lambda o: o.send("sink", {}, sender="x" * 200), SporeError,
         "from_agent must be a non-empty string of at most 128 characters"),
        (lambda o: o.send("sink", {}, channel="c" * 129), SporeError,
         "channel must be a non-empty string of at most 128 characters"),
        (lambda o: o.submit(Spore(knowledge={}, to_agent="sink", hops=4)), LimitExceeded,
         "made 4 hops, over limits.max_hops=3"),
        (lambda o: o.submit(Spore(knowledge={}, to_agent="sink", hops="4")), SporeError,
         "hops must be an integer >= 0, got '4'"),
        (lambda o: o.submit(Spore(knowledge={}, to_agent="sink",
                                  expires_at=datetime(2030, 1, 1))), SporeError,
         "expires_at must be a timezone-aware datetime"),
        (lambda o: o.send("sink", {"f": float("nan")}), SporeError,
         "which JSON cannot represent"),
    ],
)
async def test_outside_sends_breaking_a_limit_raise_at_once(
        send: Callable[[Organism], Coroutine[Any, Any, Any]], error: type[Exception],
        message: str) -> None:
    org = organism()
    async with org.running():
        with pytest.raises(error, match=message):
            await send(org)
        await org.send("sink", {"ok": True})
        await org.idle()
    assert org.wiring().agents["sink"].state["got"] == [{"ok": True}]
    assert org.stats()["totals"]["admitted"] == 1
    assert list(org.dead_letters) == []


def test_expiry_in_the_past_at_send_is_dead_lettered_as_expired(virtual: Any) -> None:
    async def early(spore: Spore, ctx: Context) -> None:
        await ctx.send("sink", {"late": True}, expires_in=-1)
        await ctx.send("sink", {"from": "handler"}, expires_in=5)

    async def main(loop: VirtualClockLoop) -> tuple[list[Any], list[Any]]:
        org = Organism(organism(early={"handler": early}).spec, now=loop.wall)
        async with org.running():
            await org.send("sink", {"stale": True}, expires_in=-5)
            await org.send("sink", {"fresh": True}, expires_in=60)
            await org.send("early", {})
            await org.idle()
        return list(org.dead_letters), org.wiring().agents["sink"].state["got"]

    letters, got = virtual(main)
    assert [(letter.reason, letter.spore.knowledge) for letter in letters] == [
        ("expired", {"stale": True}), ("expired", {"late": True})]
    assert "expired at 2025-12-31T23:59:55+00:00" in letters[0].error
    assert got == [{"fresh": True}, {"from": "handler"}]


def test_expires_in_may_be_a_timedelta_from_a_handler_and_from_outside(virtual: Any) -> None:
    async def early(spore: Spore, ctx: Context) -> None:
        await ctx.send("sink", {"late": True}, expires_in=timedelta(seconds=-1))
        await ctx.send("sink", {"from": "handler"}, expires_in=timedelta(minutes=5))

    async def main(loop: VirtualClockLoop) -> tuple[list[Any], list[Any], list[Any]]:
        org = Organism(organism(early={"handler": early}).spec, now=loop.wall)
        async with org.running():
            stale = await org.send("sink", {"stale": True}, expires_in=timedelta(seconds=-5))
            fresh = await org.send("sink", {"fresh": True}, expires_in=timedelta(hours=1))
            await org.send("early", {})
            await org.idle()
        return ([stale.expires_at, fresh.expires_at], list(org.dead_letters),
                org.wiring().agents["sink"].state["got"])

    expiries, letters, got = virtual(main)
    assert expiries[1] - expiries[0] == timedelta(hours=1, seconds=5)
    assert [(letter.reason, letter.spore.knowledge) for letter in letters] == [
        ("expired", {"stale": True}), ("expired", {"late": True})]
    assert got == [{"fresh": True}, {"from": "handler"}]


def test_expires_in_of_another_kind_is_refused_with_what_to_write() -> None:
    org = organism()
    with pytest.raises(SporeError, match=r"expires_in must be a number of seconds or a "
                                         r"timedelta, got \[30\]; write expires_in=30"):
        asyncio.run(_send_in(org, expires_in=[30]))
    with pytest.raises(SporeError, match=r"^expires_in: duration 'soon' is not understood"):
        asyncio.run(_send_in(org, expires_in="soon"))
    asyncio.run(_send_in(org, expires_in="30s"))  # as organism.yaml writes durations
    for longer in (1e20, float("nan"), "999999999h"):  # was: OverflowError, ValueError
        with pytest.raises(SporeError, match=r"^expires_in.* year"):
            asyncio.run(_send_in(org, expires_in=longer))


async def _send_in(org: Organism, **options: Any) -> None:
    async with org.running():
        await org.send("sink", {}, **options)


def test_cli_send_over_the_size_limit_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "limit_handlers.py").write_text("def sink(spore, ctx):\n    return None\n")
    path = tmp_path / "organism.yaml"
    path.write_text("agents: {sink: {handler: limit_handlers:sink}}\n"
                    "limits: {max_spore_bytes: 1KiB}\n")
    result = CliRunner().invoke(cli, ["send", str(path), "--start", "--to", "sink",
                                      '{"text": "' + "x" * 2000 + '"}'])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("refused: limit exceeded: LimitExceeded: spore ")
    assert "over limits.max_spore_bytes=1024 (2.3 KiB > 1 KiB)" in lines[0]


# -- what handlers send through ctx: dead-lettered, and raised into the handler -------------


async def test_ctx_sends_breaking_a_limit_are_dead_lettered_and_raised_in_the_handler() -> None:
    async def greedy(spore: Spore, ctx: Context) -> None:
        attempts = {
            "big": lambda: ctx.send("sink", {"text": "x" * 2000}),
            "deep": lambda: ctx.send("sink", nested(6)),
            "priority": lambda: ctx.send("sink", {}, priority=42),
            "broadcast": lambda: ctx.broadcast({"text": "x" * 2000}),
        }
        for name, attempt in attempts.items():
            try:
                await attempt()
            except (SporeError, DeliveryError) as exc:
                ctx.state[name] = exc
        await ctx.send("sink", {"after": "all that"})

    org = organism(greedy={"handler": greedy})
    async with org.running():
        await org.send("greedy", {})
        await org.idle()
        caught = dict(org.wiring().agents["greedy"].state)
    assert isinstance(caught["big"], LimitExceeded)
    assert "limits.max_spore_bytes=1024" in str(caught["big"])
    assert "limits.max_depth=4" in str(caught["deep"])
    assert "priority 42 is out of range" in str(caught["priority"])
    assert isinstance(caught["broadcast"], LimitExceeded)
    assert [letter.reason for letter in org.dead_letters] == ["limit exceeded"] * 4
    assert all(letter.agent == "greedy" for letter in org.dead_letters)
    assert org.wiring().agents["sink"].state["got"] == [{"after": "all that"}]
    assert org.stats()["agents"]["greedy"]["failed"] == 0


# -- what handlers return: dead-lettered ------------------------------------------------------


@pytest.mark.parametrize(
    ("returned", "reason", "message"),
    [
        ({"text": "x" * 2000}, "limit exceeded", "over limits.max_spore_bytes=1024"),
        (nested(5), "limit exceeded", "limits.max_depth=4"),
        (Spore(knowledge={}, to_agent="sink", priority=-1), "limit exceeded",
         "priority -1 is out of range"),
        (Spore(knowledge={}, to_agent="sink", priority=None), "limit exceeded",  # type: ignore[arg-type]
         "priority must be a whole number from 1 to 10, got None (a NoneType)"),
        (Spore(knowledge={}, to_agent="sink", priority="x"), "limit exceeded",  # type: ignore[arg-type]
         "priority must be a whole number from 1 to 10, got 'x' (a str)"),
        (Spore(knowledge={}, to_agent="s" * 300), "invalid",
         "to_agent must be a non-empty string of at most 128"),
        (Spore(knowledge={}, to_agent="sink", expires_at=datetime(2000, 1, 1, tzinfo=UTC)),
         "expired", "expired at 2000-01-01"),
        (Spore(knowledge={}, to_agent="sink", reply_to=["not", "an", "id"]),  # type: ignore[arg-type]
         "invalid", "reply_to must be a spore id"),
        ('<note to="sink" priority="42">hi</note>', "limit exceeded",
         "priority 42 is out of range"),
        ("<note to='sink'>" + "<n>" * 6 + "deep" + "</n>" * 6 + "</note>", "limit exceeded",
         "limits.max_depth=4"),
        ("<note to='sink'>" + "x" * 2000 + "</note>", "limit exceeded",
         "over limits.max_spore_bytes=1024"),
    ],
)
async def test_handler_replies_breaking_a_limit_are_dead_lettered(
        returned: Any, reason: str, message: str) -> None:
    async def replier(spore: Spore, ctx: Context) -> Any:
        return returned if spore.knowledge.get("go") else {"fine": True}

    org = organism(replier={"handler": replier, "emit": {"to": "sink"}})
    async with org.running():
        await org.send("replier", {"go": True})
        await org.send("replier", {})
        await org.idle()
        state = org.state
    letters = list(org.dead_letters)
    assert [letter.reason for letter in letters] == [reason]
    assert message in letters[0].error
    assert letters[0].spore.from_agent == "replier"
    assert org.wiring().agents["sink"].state["got"] == [{"fine": True}]
    assert state == "running"


async def test_a_reply_loop_stops_at_max_hops_naming_the_limit() -> None:
    async def ping(spore: Spore, ctx: Context) -> dict[str, Any]:
        return {"n": spore.knowledge.get("n", 0) + 1}

    org = Organism.from_dict({"agents": {"ping": {"handler": ping, "emit": {"to": "pong"}},
                                         "pong": {"handler": ping, "emit": {"to": "ping"}}},
                              "limits": SMALL_LIMITS})
    async with org.running():
        await org.send("ping", {})
        await org.idle()
    [letter] = org.dead_letters
    assert letter.reason == "limit exceeded"
    assert "made 4 hops, over limits.max_hops=3" in letter.error
    assert letter.spore.knowledge == {"n": 4}


def test_size_message_speaks_in_mebibytes() -> None:
    spore = Spore(knowledge={"text": "x" * int(2.1 * 1024 * 1024)})
    with pytest.raises(LimitExceeded, match=r"over limits.max_spore_bytes=1048576 "
                                             r"\(2.1 MiB > 1 MiB\)"):
        check_spore(spore, Limits())


def test_a_size_just_over_the_limit_is_told_with_the_digits_that_differ() -> None:
    # Found by a new user: a spore of 1,100,350 bytes was "(1 MiB > 1 MiB)".
    spore = Spore(knowledge={"text": "x" * 1_100_000})
    with pytest.raises(LimitExceeded, match=r"\(1.05 MiB > 1 MiB\)$"):
        check_spore(spore, Limits())


async def test_a_request_timeout_of_another_kind_is_refused_at_the_call() -> None:
    # Found by a new user: timeout="2s" raised TypeError (float + str) naming no place,
    # after the request was opened (its future reported 'never retrieved' at the stop);
    # timeout=-1 sent the request and failed 'within -1s'.
    async def echo(spore: Spore, ctx: Context) -> dict[str, Any]:
        return {"echo": spore.knowledge}

    async def asker(spore: Spore, ctx: Context) -> None:
        for timeout in ("soon", -1):
            try:
                await ctx.request("echo", {}, timeout=timeout)
            except SporeError as exc:
                ctx.state.setdefault("refused", []).append(str(exc))

    org = Organism.from_dict({"agents": {"echo": {"handler": echo},
                                         "asker": {"handler": asker}}})
    async with org.running():
        for timeout in (None, 0, float("nan")):
            with pytest.raises(SporeError, match=r"^timeout must be a number of seconds above "
                                                 r"0 or a timedelta, got .*; write timeout=5"):
                await org.request("echo", {}, timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(SporeError, match=r"^timeout: duration 'soon' is not understood"):
            await org.request("echo", {}, timeout="soon")
        answer = await org.request("echo", {"n": 1}, timeout=timedelta(seconds=5))
        # A duration as organism.yaml writes them (found by a new user: refused here only)
        written = await org.request("echo", {"n": 2}, timeout="2s")
        await org.send("asker", {})
        await org.idle()
        refused = org.wiring().agents["asker"].state["refused"]
    assert answer.knowledge == {"echo": {"n": 1}}
    assert written.knowledge == {"echo": {"n": 2}}
    assert refused[0].startswith("timeout: duration 'soon' is not understood")
    assert refused[1].split(", got ")[1].split(";")[0] == "-1"
    assert org.stats()["agents"]["echo"]["received"] == 2  # nothing else was sent
