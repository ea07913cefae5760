"""Graceful drain: ``Organism.stop`` and the ``sporeflow run`` command on SIGTERM/SIGINT.

In-process tests that need time (drain timeouts, backoff) run on the virtual clock.
The CLI tests run a real subprocess; the test itself never sleeps: it waits on the
child's output with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, OrganismStateError, Spore
from tests.conftest import wait_until

BACKSTOP = 30.0


def accounted(org: Organism) -> tuple[int, int]:
    """(handled + dead letters, received by the lanes): equal when nothing vanished,
    provided every dead letter of the test is of a spore that reached a lane."""
    stats = org.stats()
    totals = stats["totals"]
    return totals["handled"] + totals["dead_letters"], totals["received"]


# -- in-process drain -------------------------------------------------------------------------


async def test_stop_finishes_in_flight_handlers_and_the_replies_they_cause() -> None:
    gate = asyncio.Event()
    started = 0
    two_started = asyncio.Event()
    second_step: list[int] = []

    async def first(spore: Spore, ctx: Any) -> dict[str, int]:
        nonlocal started
        started += 1
        if started == 2:
            two_started.set()
        await gate.wait()
        return {"n": spore.knowledge["n"], "step": 2}

    async def second(spore: Spore, ctx: Any) -> None:
        await asyncio.sleep(0)
        second_step.append(spore.knowledge["n"])

    org = Organism.from_dict({"agents": {
        "first": {"handler": first, "emit": {"to": "second"}, "concurrency": 2},
        "second": {"handler": second},
    }})
    await org.start()
    for n in range(6):
        await org.send("first", {"n": n})
    await asyncio.wait_for(two_started.wait(), BACKSTOP)
    stopping = asyncio.ensure_future(org.stop(drain_timeout=BACKSTOP))
    await wait_until(lambda: org.state == "stopping")
    with pytest.raises(OrganismStateError):
        await org.send("first", {"n": 99})
    gate.set()
    unfinished = await asyncio.wait_for(stopping, BACKSTOP)

    stats = org.stats()
    assert unfinished == 0
    assert org.state == "stopped"
    assert sorted(second_step) == list(range(6))
    assert stats["agents"]["first"]["handled"] == 6
    assert stats["agents"]["second"]["handled"] == 6
    assert stats["dead_letters"]["total"] == 0
    totals = stats["totals"]
    assert (totals["admitted"], totals["replies"]) == (6, 6)
    assert totals["handled"] + totals["dead_letters"] == totals["admitted"] + totals["replies"]
    assert totals["held"] == 0


def test_stop_dead_letters_what_cannot_finish_within_the_drain_timeout(virtual: Any) -> None:
    async def main(loop: Any) -> None:
        async def stuck(spore: Spore, ctx: Any) -> None:
            await asyncio.Event().wait()

        async def quick(spore: Spore, ctx: Any) -> None:
            await asyncio.sleep(0.1)

        org = Organism.from_dict({"agents": {
            "stuck": {"handler": stuck, "concurrency": 2},
            "quick": {"handler": quick},
        }})
        await org.start()
        for n in range(5):
            await org.send("stuck", {"n": n})
        for n in range(4):
            await org.send("quick", {"n": n})
        began = loop.time()
        unfinished = await org.stop(drain_timeout=1.0)

        # The drain (less the cancellation grace) was waited for, and no longer.
        assert 0.75 <= loop.time() - began <= 1.0
        assert unfinished == 5  # 2 running + 3 queued
        shutdown = [d for d in org.dead_letters if d.reason == "shutdown"]
        assert sorted(d.spore.knowledge["n"] for d in shutdown) == list(range(5))
        assert all(d.agent == "stuck" for d in shutdown)
        stats = org.stats()
        assert stats["agents"]["quick"]["handled"] == 4
        assert stats["agents"]["stuck"]["received"] == 5
        handled_or_dead, received = accounted(org)
        assert handled_or_dead == received == 9
        assert stats["totals"]["held"] == 0
        assert org.state == "stopped"

    virtual(main)


def test_stop_loses_nothing_delivered_while_lanes_are_being_cancelled(virtual: Any) -> None:
    """A handler's cancellation cleanup may take time; meanwhile the other agents keep
    working and their replies keep being routed. None of them may vanish."""

    async def main(loop: Any) -> None:
        async def stuck(spore: Spore, ctx: Any) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.2)  # e.g. closing a connection politely, within the grace
                raise

        async def producer(spore: Spore, ctx: Any) -> dict[str, int]:
            await asyncio.sleep(0.1)
            return {"n": spore.knowledge["n"]}

        org = Organism.from_dict({"agents": {
            "stuck": {"handler": stuck},
            "producer": {"handler": producer, "emit": {"to": "stuck"}},
        }})
        await org.start()
        for n in range(50):
            await org.send("producer", {"n": n})
        unfinished = await org.stop(drain_timeout=1.0)

        stats = org.stats()
        handled_or_dead, received = accounted(org)
        assert handled_or_dead == received, (
            f"{received - handled_or_dead} spore(s) were neither handled nor dead-lettered")
        assert stats["agents"]["stuck"]["queued"] == 0
        assert stats["totals"]["held"] == 0
        assert unfinished == stats["dead_letters"]["by_reason"]["shutdown"]

    virtual(main)


def test_stop_cancels_a_handler_waiting_in_a_request_and_dead_letters_both(virtual: Any) -> None:
    async def main(loop: Any) -> None:
        async def asker(spore: Spore, ctx: Any) -> dict[str, Any]:
            response = await ctx.request("silent", {"q": 1}, timeout=3600)
            return dict(response.knowledge)

        async def silent(spore: Spore, ctx: Any) -> None:
            await asyncio.Event().wait()

        org = Organism.from_dict({"agents": {
            "asker": {"handler": asker}, "silent": {"handler": silent}}})
        await org.start()
        await org.send("asker", {})
        unfinished = await org.stop(drain_timeout=1.0)
        assert unfinished == 2
        assert sorted((d.agent, d.reason) for d in org.dead_letters) == [
            ("asker", "shutdown"), ("silent", "shutdown")]
        assert org.stats()["totals"]["held"] == 0

    virtual(main)


def test_a_retry_waiting_at_shutdown_is_dead_lettered_with_the_attempts_made(
    virtual: Any,
) -> None:
    async def main(loop: Any) -> None:
        tries: list[int] = []

        async def fails(spore: Spore, ctx: Any) -> None:
            tries.append(ctx.attempt)
            raise RuntimeError("down")

        org = Organism.from_dict({"agents": {"fails": {
            "handler": fails, "retry": {"attempts": 3, "backoff": "10s"}}}})
        await org.start()
        await org.send("fails", {})
        unfinished = await org.stop(drain_timeout=1.0)
        assert tries == [1]
        assert unfinished == 1
        [letter] = org.dead_letters
        assert letter.reason == "shutdown"
        assert letter.attempts == len(tries)  # one try was made, not two

    virtual(main)


async def test_sends_after_stop_began_raise_organism_state_error() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    async def blocker(spore: Spore, ctx: Any) -> None:
        started.set()
        await gate.wait()

    org = Organism.from_dict({"agents": {"blocker": {"handler": blocker}},
                              "limits": {"max_in_flight": 1}})
    await org.start()
    await org.send("blocker", {"n": 0})
    await asyncio.wait_for(started.wait(), BACKSTOP)
    waiting = asyncio.ensure_future(org.send("blocker", {"n": 1}))  # the organism is full
    await wait_until(lambda: bool(org._run and org._run.intake._senders))
    assert not waiting.done()

    stopping = asyncio.ensure_future(org.stop(drain_timeout=BACKSTOP))
    await wait_until(lambda: org.state == "stopping")
    with pytest.raises(OrganismStateError):
        await asyncio.wait_for(waiting, BACKSTOP)  # the waiting sender is refused too
    with pytest.raises(OrganismStateError):
        await org.send("blocker", {"n": 2})
    with pytest.raises(OrganismStateError):
        await org.broadcast({"n": 3})
    with pytest.raises(OrganismStateError):
        await org.request("blocker", {"n": 4}, timeout=BACKSTOP)
    gate.set()
    assert await asyncio.wait_for(stopping, BACKSTOP) == 0
    with pytest.raises(OrganismStateError):
        await org.send("blocker", {"n": 5})
    stats = org.stats()
    assert stats["totals"]["admitted"] == 1
    assert stats["agents"]["blocker"]["handled"] == 1
    assert stats["dead_letters"]["total"] == 0


async def test_a_stop_called_while_another_drains_returns_once_the_organism_stopped() -> None:
    """`async with organism.running():` around a `stop_when`, or two stoppers: the second
    `stop()` once returned 0 at once, the organism still draining, and the block exited
    with its handlers still running (asyncio.run's end then cut them off)."""
    gate = asyncio.Event()
    started = asyncio.Event()

    async def blocker(spore: Spore, ctx: Any) -> None:
        started.set()
        await gate.wait()

    org = Organism.from_dict({"agents": {"blocker": {"handler": blocker}}})
    await org.start()
    await org.send("blocker", {})
    await asyncio.wait_for(started.wait(), BACKSTOP)
    first = asyncio.ensure_future(org.stop(drain_timeout=BACKSTOP))
    await wait_until(lambda: org.state == "stopping")

    async def second_stop() -> tuple[int, str, int]:
        left = await org.stop(drain_timeout=BACKSTOP)
        return left, org.state, org.stats()["agents"]["blocker"]["handled"]

    second = asyncio.ensure_future(second_stop())
    await asyncio.sleep(0)  # its call runs: it must wait for the drain, not return
    gate.set()
    assert await asyncio.wait_for(second, BACKSTOP) == (0, "stopped", 1)
    assert await asyncio.wait_for(first, BACKSTOP) == 0


async def test_a_stop_cancelled_while_it_drains_ends_at_once_and_loses_nothing_unsaid(
) -> None:
    """A Ctrl-C in a script's asyncio.run while `async with organism.running():` drains
    cancels the stop: it once ended there, 'stopping' for good, the spores in flight and
    queued neither handled nor dead-lettered. Now it drains no more, dead-letters what
    is left as a timed-out drain does, ends the stop, and then raises the cancellation."""
    started = asyncio.Event()

    async def blocker(spore: Spore, ctx: Any) -> None:
        started.set()
        await asyncio.Event().wait()  # never set: only the stop ends it

    org = Organism.from_dict({"agents": {"blocker": {"handler": blocker}}})
    await org.start()
    for n in range(3):
        await org.send("blocker", {"n": n})
    await asyncio.wait_for(started.wait(), BACKSTOP)
    stopping = asyncio.ensure_future(org.stop(drain_timeout=BACKSTOP))
    await wait_until(lambda: org.state == "stopping")
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, BACKSTOP)
    assert org.state == "stopped"
    assert sorted(d.spore.knowledge["n"] for d in org.dead_letters) == [0, 1, 2]
    assert {d.reason for d in org.dead_letters} == {"shutdown"}


async def test_a_stop_awaited_in_a_handler_is_refused_with_the_way_to_stop_from_one() -> None:
    """`await organism.stop()` in a handler waits for that handler to end: its drain ran
    out, the stop cancelled the handler, so itself, and the organism stayed 'stopping'.
    It is refused, saying what to do; a stop the handler leaves to a task works."""
    refusals: list[str] = []
    holder: list[Organism] = []

    async def quitter(spore: Spore, ctx: Any) -> None:
        org = holder[0]
        try:
            await org.stop(drain_timeout=BACKSTOP)
        except OrganismStateError as exc:
            refusals.append(str(exc))
            asyncio.get_running_loop().create_task(org.stop(drain_timeout=BACKSTOP))

    org = Organism.from_dict({"agents": {"quitter": {"handler": quitter}}})
    holder.append(org)
    await org.start()
    await org.send("quitter", {})
    await wait_until(lambda: org.state == "stopped", timeout=BACKSTOP)
    assert len(refusals) == 1
    assert "the handler of 'quitter'" in refusals[0]
    assert "asyncio.create_task(organism.stop())" in refusals[0]
    assert org.stats()["agents"]["quitter"]["handled"] == 1
    assert list(org.dead_letters) == []


async def test_a_stop_under_wait_for_in_a_handler_never_leaves_the_organism_stopping(
) -> None:
    """Found by review: on Python 3.11 (supported: requires-python >=3.11)
    ``asyncio.wait_for`` runs ``organism.stop()`` in a task of its own, so
    ``lane_running_here`` sees no handler on the stack and the stop is not refused. The
    stop waits for the handler, its drain runs out, it cancels the handler; wait_for then
    cancels the stop in its grace (after the drain, where a cancellation is not caught),
    and the organism stays 'stopping' for good, as before 32f925a."""
    holder: list[Organism] = []

    async def quitter(spore: Spore, ctx: Any) -> None:
        with contextlib.suppress(OrganismStateError):  # refused: the documented outcome
            await asyncio.wait_for(holder[0].stop(drain_timeout=1), BACKSTOP)

    org = Organism.from_dict({"agents": {"quitter": {"handler": quitter}}})
    holder.append(org)
    await org.start()
    try:
        await org.send("quitter", {})
        await wait_until(lambda: org.stats()["agents"]["quitter"]["handled"]
                         + len(org.dead_letters) >= 1, timeout=BACKSTOP)
        await wait_until(lambda: org.state != "stopping", timeout=5)
        assert org.state in ("running", "stopped")
    finally:
        if org.state == "running":
            await org.stop(drain_timeout=BACKSTOP)


# -- the CLI ---------------------------------------------------------------------------------

HANDLERS = '''
import asyncio
import sys

seen = 0


async def emit_many(spore, ctx):
    return [{"i": i, "delay": spore.knowledge["delay"], "ready": spore.knowledge["ready"]}
            for i in range(spore.knowledge["count"])]


async def work(spore, ctx):
    global seen
    await asyncio.sleep(spore.knowledge["delay"])
    seen += 1
    if seen == spore.knowledge["ready"]:
        print(f"ready after {seen}", flush=True)
'''

ORGANISM = '''
organism: {{name: drainjob}}
agents:
  source:
    handler: drainjob_handlers:emit_many
    boot: {{count: {count}, delay: {delay}, ready: {ready}}}
    emit: {{to: worker}}
  worker:
    handler: drainjob_handlers:work
    concurrency: {concurrency}
'''

SUMMARY = re.compile(
    r"([\d,]+) spores? handled in [\d.]+s .*?; ([\d,]+) admitted from outside, "
    r"([\d,]+) repl(?:y|ies), ([\d,]+) dead letters?")


def write_job(tmp_path: Path, *, count: int, delay: float, ready: int,
              concurrency: int) -> Path:
    (tmp_path / "drainjob_handlers.py").write_text(textwrap.dedent(HANDLERS))
    path = tmp_path / "drainjob.yaml"
    path.write_text(ORGANISM.format(count=count, delay=delay, ready=ready,
                                    concurrency=concurrency))
    return path


def start_run(path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=path.parent)


def read_until(stream: Any, marker: bytes, timeout: float) -> bytes:
    """Read ``stream`` until ``marker`` shows up; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = b""
    fd = stream.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} not seen within {timeout}s; got {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"stream closed before {marker!r}; got {seen!r}")
            seen += chunk
    return seen


def test_cli_run_drains_on_sigterm_and_exits_zero_with_a_consistent_summary(
    tmp_path: Path,
) -> None:
    count = 3000
    path = write_job(tmp_path, count=count, delay=0.001, ready=200, concurrency=4)
    with start_run(path, "--drain-timeout", "30") as proc:
        try:
            read_until(proc.stdout, b"ready after 200", timeout=BACKSTOP)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=BACKSTOP)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert took < 30.0  # within the drain timeout
    assert "stopping: finishing in-flight work" in stderr
    match = SUMMARY.search(stderr)
    assert match is not None, stderr
    handled, admitted, replies, dead = (int(g.replace(",", "")) for g in match.groups())
    assert (admitted, replies) == (1, count)  # the boot spore, and what it emitted
    assert handled + dead == admitted + replies
    assert dead == 0  # the drain finished everything already admitted
    assert "could not finish" not in stderr


def terminated_once_ready(path: Path, ready: int, *extra: str) -> tuple[int, str]:
    """Run ``path``, SIGTERM it once its job printed ``ready after READY``; its exit code
    and what it printed on stderr."""
    with start_run(path, *extra) as proc:
        try:
            read_until(proc.stdout, f"ready after {ready}".encode(), timeout=BACKSTOP)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=BACKSTOP)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, err.decode()


@pytest.mark.parametrize(("goal", "said"), [
    (("--until-idle",), "it was idle"),
    # Found by a new user: --until's goal, unreached, exited 0 where --until-idle's did not.
    (("--until", "totals.handled >= 100000"), "'totals.handled >= 100000' held"),
])
def test_cli_run_with_a_goal_stopped_by_a_signal_before_it_held_exits_non_zero(
    tmp_path: Path, goal: tuple[str, ...], said: str,
) -> None:
    """A batch (--until-idle) that a SIGTERM ended before it was idle did not do its work
    (what was left is dead-lettered 'shutdown'): it once exited 0, as a finished batch."""
    path = write_job(tmp_path, count=3000, delay=0.05, ready=3, concurrency=1)
    code, stderr = terminated_once_ready(path, 3, *goal, "--drain-timeout", "1")
    assert code == 128 + signal.SIGTERM, stderr
    assert "could not finish and were dead-lettered" in stderr
    assert f"stopped by SIGTERM before {said}: the batch did not finish" in stderr


def test_cli_run_whose_goal_held_exits_0_though_a_signal_comes_during_the_drain(
    tmp_path: Path,
) -> None:
    """Found by a reviewer: once --until held, the run was done; a SIGTERM during the drain
    that followed made it exit 143 saying the batch did not finish."""
    path = write_job(tmp_path, count=3000, delay=0.05, ready=12, concurrency=1)
    # 12 handled: some 0.5 s after the goal held (checked every 0.1 s), while it drains
    code, stderr = terminated_once_ready(path, 12, "--until", "totals.handled >= 2",
                                         "--drain-timeout", "2")
    assert code == 0, stderr
    assert "did not finish" not in stderr


def test_cli_run_exits_at_once_on_a_second_sigint(tmp_path: Path) -> None:
    # A drain of this work would take minutes: 3000 spores at 50 ms, one at a time.
    path = write_job(tmp_path, count=3000, delay=0.05, ready=3, concurrency=1)
    with start_run(path, "--drain-timeout", "600") as proc:
        try:
            read_until(proc.stdout, b"ready after 3", timeout=BACKSTOP)
            proc.send_signal(signal.SIGINT)
            early = read_until(proc.stderr, b"stopping: finishing in-flight work",
                               timeout=BACKSTOP)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = early.decode() + err.decode()
    assert proc.returncode != 0, stderr
    assert proc.returncode == 130
    assert took < 5.0
    assert "interrupted twice" in stderr
    assert SUMMARY.search(stderr) is None  # it did not wait for the drain
    # No journal: what it held is gone, and it says how much (it once said nothing).
    lost = re.search(r"([\d,]+) spores? held in memory (?:is|are) lost", stderr)
    assert lost is not None, stderr
    assert 0 < int(lost.group(1).replace(",", "")) <= 3000


def test_cli_run_exits_at_once_on_a_second_sigterm_keeping_the_journal(tmp_path: Path) -> None:
    path = write_job(tmp_path, count=3000, delay=0.05, ready=3, concurrency=1)
    journal = tmp_path / "drain.db"
    with start_run(path, "--drain-timeout", "600", "--journal", str(journal)) as proc:
        try:
            read_until(proc.stdout, b"ready after 3", timeout=BACKSTOP)
            proc.send_signal(signal.SIGTERM)
            early = read_until(proc.stderr, b"stopping: finishing in-flight work",
                               timeout=BACKSTOP)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=BACKSTOP)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = early.decode() + err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted twice" in stderr
    assert f"stays in the journal {journal}" in stderr
    assert "lost" not in stderr
