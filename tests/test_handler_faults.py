"""Handlers that misbehave: requests under timeouts, SystemExit, blocking the loop.

In-process scenarios run on the virtual clock; the CLI case runs a real subprocess.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Organism, Spore

from .conftest import VirtualClockLoop


def test_requests_under_timeouts_keep_the_books_and_the_loop_clean(virtual: Any) -> None:
    """The issue's case: concurrency 2, timeout 500 ms, handlers awaiting ctx.request
    while siblings run past the timeout. No loop error, no negative in_flight, and
    every received spore is handled or dead-lettered."""
    errors: list[Any] = []

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_exception_handler(lambda _loop, context: errors.append(context))

        async def reader(spore: Spore, ctx: Any) -> None:
            if spore.knowledge["n"] % 3 == 0:
                await asyncio.sleep(0.7)  # runs past its timeout
                return
            await ctx.request("classifier", {"n": spore.knowledge["n"]}, timeout=5)
            await asyncio.sleep(0.1)

        async def classifier(spore: Spore, ctx: Any) -> dict[str, int]:
            await asyncio.sleep(0.2)
            return {"label": spore.knowledge["n"] % 2}

        org = Organism.from_dict({"agents": {
            "reader": {"handler": reader, "concurrency": 2, "timeout": "500ms",
                       "retry": {"attempts": 2, "backoff": "100ms"}, "peers": ["classifier"]},
            "classifier": {"handler": classifier, "concurrency": 2},
        }})
        org.now = loop.wall
        seen: list[int] = []

        def watch() -> None:
            agent = org.stats()["agents"]["reader"]
            seen.append(agent["in_flight"])
            if org.state == "running":
                loop.call_later(0.05, watch)

        async with org.running():
            watch()
            for n in range(60):
                await org.send("reader", {"n": n})
            await org.idle()
        stats = org.stats()["agents"]["reader"]
        assert min(seen) >= 0
        assert stats["in_flight"] == 0
        assert stats["received"] == 60
        assert stats["handled"] + stats["failed"] == 60
        assert stats["failed"] == 20  # the slow ones, after both tries; no other timed out
        assert {d.reason for d in org.dead_letters} == {"timeout"}

    virtual(main)
    assert errors == []


def test_system_exit_in_a_handler_is_that_spores_failure() -> None:
    async def main() -> None:
        async def quitter(spore: Spore, ctx: Any) -> None:
            if spore.knowledge["n"] == 1:
                sys.exit(3)
            if spore.knowledge["n"] == 2:
                raise KeyboardInterrupt
            if spore.knowledge["n"] == 3:
                raise GeneratorExit  # misuse: still only this spore's failure

        def sync_quitter(spore: Spore, ctx: Any) -> None:
            raise SystemExit("bad arguments")

        handled: list[int] = []

        async def innocent(spore: Spore, ctx: Any) -> None:
            handled.append(spore.knowledge["n"])

        org = Organism.from_dict({"agents": {
            "quitter": {"handler": quitter}, "sync_quitter": {"handler": sync_quitter},
            "innocent": {"handler": innocent}}})
        async with org.running():
            for n in range(4):
                await org.send("quitter", {"n": n})
                await org.send("innocent", {"n": n})
            await org.send("sync_quitter", {"n": 0})
            await org.idle()
            assert org.state == "running"
        letters = sorted((d.agent or "", d.reason, d.error.partition(":")[0])
                         for d in org.dead_letters)
        assert letters == [("quitter", "handler failed", "GeneratorExit"),
                           ("quitter", "handler failed", "KeyboardInterrupt"),
                           ("quitter", "handler failed", "SystemExit"),
                           ("sync_quitter", "handler failed", "SystemExit")]
        assert handled == [0, 1, 2, 3]

    asyncio.run(main())  # a sync handler runs on a worker thread: the real clock


class _Unprintable(Exception):
    """An exception whose str() raises (a third-party library's bug, or a hostile one)."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


async def test_an_exception_whose_str_raises_is_that_spores_dead_letter() -> None:
    """Once, its text raised inside the ledger: the runner's task died, no dead letter,
    `held` never back to 0, idle() never returned."""

    async def bad(spore: Spore, ctx: Any) -> None:
        raise _Unprintable()

    def sync_bad(spore: Spore, ctx: Any) -> None:
        raise StopIteration(_Unprintable())  # its text quotes the unprintable one

    org = Organism.from_dict({"agents": {"bad": {"handler": bad},
                                         "sync_bad": {"handler": sync_bad}}})
    async with org.running(drain_timeout=2):
        await org.send("bad", {"n": 1})
        await org.send("sync_bad", {"n": 1})
        done, _ = await asyncio.wait([asyncio.ensure_future(org.idle())], timeout=5)
        stuck = None if done else org.stats()["totals"]
    assert stuck is None, f"idle() never returned: {stuck}"
    letters = sorted((d.agent, d.reason, d.error) for d in org.dead_letters)
    assert [letter[:2] for letter in letters] == [("bad", "handler failed"),
                                                  ("sync_bad", "handler failed")]
    assert letters[0][2] == "_Unprintable: <str() failed: RuntimeError>", letters


def test_sporeflow_run_survives_a_handler_calling_sys_exit(tmp_path: Path) -> None:
    (tmp_path / "quits.py").write_text(textwrap.dedent("""
        import argparse

        def parse(spore, ctx):  # a sync handler using argparse on bad input
            argparse.ArgumentParser(prog="x").parse_args(["--nope"])

        async def done(spore, ctx):
            ctx.state["ok"] = True
    """))
    (tmp_path / "organism.yaml").write_text(textwrap.dedent("""
        organism: {name: quits}
        agents:
          parser: {handler: quits:parse, boot: {go: 1}}
          other: {handler: quits:done, boot: {go: 1}}
    """))
    result = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", "organism.yaml",
         "--until-idle"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "handler failed" in result.stdout + result.stderr


def test_a_handler_blocking_past_its_timeout_is_timed_out(virtual: Any) -> None:
    """An async handler that blocks (no await) past its timeout: the timeout could not
    fire meanwhile, but the run is still a timeout, not a success."""
    async def main(loop: VirtualClockLoop) -> None:
        async def blocker(spore: Spore, ctx: Any) -> None:
            loop._now += 3.0  # what time.sleep(3) does to the clock

        org = Organism.from_dict({"agents": {"blocker": {"handler": blocker,
                                                         "timeout": "1s"}}})
        async with org.running():
            await org.send("blocker", {})
            await org.idle()
        assert [d.reason for d in org.dead_letters] == ["timeout"]

    virtual(main)


def test_stop_abandons_a_handler_that_ignores_its_cancellation(virtual: Any,
                                                               caplog: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        released = False

        async def stubborn(spore: Spore, ctx: Any) -> None:
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    if released:
                        raise
                    # the fault: swallows every cancellation

        org = Organism.from_dict({"agents": {"stubborn": {"handler": stubborn}}})
        await org.start()
        await org.send("stubborn", {})
        began = loop.time()
        left = await org.stop(drain_timeout=2.0)
        assert loop.time() - began <= 2.0  # the drain timeout bounds the whole stop
        assert left == 1
        assert [d.reason for d in org.dead_letters] == ["shutdown"]
        assert org.state == "stopped"
        released = True  # let the abandoned task end, so the test leaves nothing behind
        left_behind = {task for task in asyncio.all_tasks()
                       if task.get_name().endswith(":runner")}
        for task in left_behind:
            task.cancel()
        await asyncio.wait(left_behind)

    virtual(main)
    assert "ignored their cancellation" in caplog.text


def test_sporeflow_run_exits_past_a_handler_that_ignores_cancellation(
        tmp_path: Path) -> None:
    (tmp_path / "stubborn.py").write_text(textwrap.dedent("""
        import asyncio

        async def loop_forever(spore, ctx):
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    pass
    """))
    (tmp_path / "organism.yaml").write_text(textwrap.dedent("""
        organism: {name: stubborn}
        agents:
          stubborn: {handler: stubborn:loop_forever, boot: {go: 1}}
    """))
    result = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", "organism.yaml", "--quiet",
         "--max-duration", "0.5s", "--drain-timeout", "1s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "abandoned" in result.stderr
    # Closing the abandoned coroutine at exit is quiet: it was reported once already.
    assert "Exception ignored" not in result.stderr
    assert "Task was destroyed" not in result.stderr


# -- how handlers are scheduled must never cost the chain or the loop (guards written by
# a fault injector against handlers run eagerly in the chain's turn; BENCHMARKS.md) -----


async def test_a_handler_that_cancels_its_own_task_before_waiting_leaves_the_chain_running(
) -> None:
    handled: list[int] = []
    arrived = [asyncio.Event(), asyncio.Event()]

    async def rude(spore: Spore, ctx: Any) -> None:
        handled.append(spore.knowledge["n"])
        if spore.knowledge["n"] == 0:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # its runner's task: never the chain's
        arrived[spore.knowledge["n"]].set()

    organism = Organism.from_dict({"agents": {"a": {"handler": rude}}})
    async with organism.running(drain_timeout=1):
        await organism.send("a", {"n": 0})
        await asyncio.wait_for(arrived[0].wait(), 10)
        await organism.send("a", {"n": 1})  # a batch of its own, after that cancellation
        await asyncio.wait_for(arrived[1].wait(), 10)
    assert handled == [0, 1]


async def test_a_handler_whose_task_is_cancelled_is_a_failure_not_a_shutdown() -> None:
    """A library cancelling the handler's task while nothing stops: once a `shutdown`
    letter ("'bad' was stopped while handling it"), which over a broker leaves the
    delivery unacked; `raise CancelledError` is `handler failed`, and so is this."""

    cancelling: list[int] = []

    async def bad(spore: Spore, ctx: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        cancelling.append(task.cancelling())
        if spore.knowledge["cancel"]:
            task.cancel()
            await asyncio.sleep(0.1)

    org = Organism.from_dict({"agents": {"bad": {"handler": bad}}})
    async with org.running(drain_timeout=3):
        await org.send("bad", {"cancel": True})
        await org.send("bad", {"cancel": False})
        await asyncio.wait_for(org.idle(), 10)
        letters = [(d.reason, d.error) for d in org.dead_letters]
    assert letters == [("handler failed",
                        "CancelledError: handler of 'bad' was cancelled from inside")]
    # Found in review: the runner task, which runs the next handler, stayed 'cancelling'.
    assert cancelling == [0, 0]


def test_the_loop_ends_when_it_is_closed_with_a_handler_in_flight() -> None:
    """asyncio.run ends by cancelling every task left, an organism's runners amid their
    handlers included (it was not stopped, or its stop was cancelled: a Ctrl-C in its
    drain). Once the runner took that cancellation for the handler's own, ran on and
    parked: asyncio.run never returned."""
    loop = asyncio.new_event_loop()
    running = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        running.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        org = Organism.from_dict({"agents": {"a": {"handler": slow}}})
        await org.start()
        await org.send("a", {})
        await asyncio.wait_for(running.wait(), 10)

    try:
        loop.run_until_complete(main())
        left = asyncio.all_tasks(loop)
        for task in left:  # what asyncio.run does at its end
            task.cancel()
        loop.run_until_complete(asyncio.wait(left, timeout=10))
        assert [task for task in left if not task.done()] == []
        assert [task for task in asyncio.all_tasks(loop) if not task.done()] == []
    finally:
        loop.close()


async def test_handlers_that_keep_replying_still_let_the_loop_turn() -> None:
    """A self-loop of replies never holds the loop for long: a callback queued at its
    first hop runs long before the hops run out."""
    loop = asyncio.get_running_loop()
    turned: list[int] = []
    hops: list[int] = []
    bound = 100_000

    async def again(spore: Spore, ctx: Any) -> None:
        if spore.hops == 0:
            loop.call_soon(turned.append, 1)
        hops.append(spore.hops)
        if not turned and spore.hops < bound:
            await ctx.send("f", {})

    organism = Organism.from_dict({"limits": {"max_hops": bound + 1},
                                   "agents": {"f": {"handler": again, "peers": ["f"]}}})
    async with organism.running():
        await organism.send("f", {})
        await asyncio.wait_for(organism.idle(), 60)
    assert turned
    assert max(hops) < bound


async def test_handlers_that_block_the_loop_one_after_another_still_let_it_turn() -> None:
    """One lane's queued spores whose handlers each block the loop (time.sleep in an
    async def) ran back to back, up to 64 of them, before the loop turned: a SIGTERM, a
    stop's drain timeout and the watchdog's end of stall all waited for the lot. A
    runner lets the loop run once it has held it 10 ms, between handlers of one lane too."""
    loop = asyncio.get_running_loop()
    order: list[str] = []

    async def blocking(spore: Spore, ctx: Any) -> None:
        if not order:
            loop.call_soon(order.append, "loop turned")
        order.append(f"handler {spore.knowledge['n']}")
        time.sleep(0.02)  # noqa: ASYNC251 - the fault under test: blocks the loop 20 ms

    organism = Organism.from_dict({"limits": {"loop_stall_warning": 0},
                                   "agents": {"b": {"handler": blocking}}})
    async with organism.running():
        for n in range(6):
            await organism.send("b", {"n": n}, confirm=False)
        await asyncio.wait_for(organism.idle(), 60)
    assert order.index("loop turned") < order.index("handler 2"), order


async def test_a_generator_an_async_handler_returns_lets_the_loop_turn() -> None:
    """Before: its items were taken on the loop with no turn between them, so the loop
    was held until the generator ended (an endless one for good) and the handler's
    timeout never fired. Here it would end by itself after 1.5 s."""

    def slow_items() -> Any:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sum(range(5000))
            yield {"x": 1}

    async def start(spore: Spore, ctx: Any) -> Any:
        return slow_items()

    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"agents": {
        "start": {"handler": start, "timeout": "300ms", "emit": {"to": "sink"}},
        "sink": {"handler": sink}}})
    async with org.running(drain_timeout=5):
        await org.send("start", {})
        began = time.monotonic()
        await asyncio.sleep(0.1)
        held = time.monotonic() - began
        await asyncio.wait_for(org.idle(), 30)
    assert held < 0.5, f"a 0.1 s sleep took {held:.1f} s: the loop was held"
    assert [d.reason for d in org.dead_letters] == ["timeout"]


async def test_a_loop_with_a_task_factory_of_its_own_still_runs_handlers() -> None:
    loop = asyncio.get_running_loop()
    seen: list[int] = []
    arrived = asyncio.Event()

    async def note(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])
        arrived.set()

    # The older form of a task factory: no context argument.
    loop.set_task_factory(lambda loop, coro: asyncio.Task(coro, loop=loop))
    try:
        organism = Organism.from_dict({"agents": {"a": {"handler": note}}})
        async with organism.running(drain_timeout=1):
            await organism.send("a", {"n": 1})
            await asyncio.wait_for(arrived.wait(), 10)
    finally:
        loop.set_task_factory(None)
    assert seen == [1]
