"""A reload of an agent whose previous swap still waits on a handler in flight
(README, Hot reload: changes stack, the newest settings win).

Found by a fault injector: a handler that never ends (no ``timeout``) kept the swap of
its agent waiting, and every later reload that touched the agent waited on that swap,
holding the reload lock: each reload after it (``sporeflow reload``, SIGHUP, the control
API, ``--watch``) waited forever too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism
from sporeflow.pipeline.reload import reloader

from .conformance.harness import wait_for
from .test_reload import module, started, state, until, write_organism

__all__ = ["module"]  # the fixture, imported for pytest

TEXT = """
    organism: {{name: pending}}
    agents:
      slow: {{handler: {mod}:gated, concurrency: {n}}}
      fwd: {{handler: {mod}:forward, emit: {{to: {to}}}}}
      a: {{handler: {mod}:sink}}
      b: {{handler: {mod}:sink}}
"""


async def test_a_reload_of_an_agent_still_swapping_returns_at_once_and_its_newest_settings_win(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, TEXT, mod=mod, n=1, to="a")
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["main"] = asyncio.Event()  # the handler hangs until the test sets it
    async with organism.running():
        await organism.send("slow", {"n": 1})
        await started(handlers, 1)
        write_organism(tmp_path, TEXT, mod=mod, n=2, to="a")
        first = await organism.reload()  # applied: slow's new mailbox waits for handler 1
        async with asyncio.timeout(5):  # a backstop: before the fix, this waited forever
            write_organism(tmp_path, TEXT, mod=mod, n=3, to="a")
            second = await organism.reload()
            write_organism(tmp_path, TEXT, mod=mod, n=3, to="b")
            third = await organism.reload()  # and the reloads after it do not queue
        for n in range(2, 6):
            await organism.send("slow", {"n": n})
        await organism.send("fwd", {"n": 9})
        await until(lambda: state(organism, "b") == [9], organism.events)
        lane = organism.wiring().lanes["slow"]
        held, running = (lane.paused, lane.queued), handlers.RUNNING[0]
        handlers.GATES["main"].set()
        await organism.idle()
    assert dict(first.changed) == dict(second.changed) == {"slow": ("concurrency",)}
    assert dict(third.changed) == {"fwd": ("emit",)}
    # The newest mailbox ran nothing while the old handler held its slot ...
    assert held == (True, 4)
    assert running == 1
    # ... then ran with the newest settings.
    assert organism.wiring().lanes["slow"].policy.concurrency == 3
    assert handlers.PEAK[0] <= 3
    assert sorted(state(organism, "slow")) == [1, 2, 3, 4, 5]
    counts = organism.stats()["agents"]["slow"]
    assert (counts["received"], counts["handled"], counts["failed"]) == (5, 5, 0)
    assert len(organism.dead_letters) == 0


async def test_removing_an_agent_still_swapping_returns_at_once_and_it_finishes_what_it_holds(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: pending-removal}}
        agents:
          keep: {{handler: {mod}:sink}}
    """
    slow = "      slow: {{handler: {mod}:gated, concurrency: {n}}}\n"
    file = write_organism(tmp_path, text + slow, mod=mod, n=1)
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["main"] = asyncio.Event()
    async with organism.running():
        await organism.send("slow", {"n": 1})
        await organism.send("slow", {"n": 2})  # queued behind the hanging handler
        await started(handlers, 1)
        seen = organism.wiring().agents["slow"].state.setdefault("seen", [])
        write_organism(tmp_path, text + slow, mod=mod, n=2)
        await organism.reload()
        await organism.send("slow", {"n": 3})  # into the new mailbox, which waits
        await organism.send("keep", {"n": 9})  # once it is handled, 3 is in that mailbox
        await until(lambda: state(organism, "keep") == [9], organism.events)
        write_organism(tmp_path, text, mod=mod)
        async with asyncio.timeout(5):  # a backstop: before the fix, this waited forever
            removed = await organism.reload()
        handlers.GATES["main"].set()  # the removed agent finishes what it held
        await organism.idle()
    assert removed.removed == ("slow",)
    assert sorted(seen) == [1, 2, 3]
    assert len(organism.dead_letters) == 0
    assert organism.stats()["totals"]["handled"] == 4


async def test_stop_while_stacked_swaps_wait_on_a_hung_handler_dead_letters_what_they_hold(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, TEXT, mod=mod, n=1, to="a")
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["main"] = asyncio.Event()  # never set: the handler never ends
    await organism.start()
    await organism.send("slow", {"n": 1})
    await started(handlers, 1)
    for n in (2, 3):
        write_organism(tmp_path, TEXT, mod=mod, n=n, to="a")
        async with asyncio.timeout(5):
            await organism.reload()
        await organism.send("slow", {"n": n})
    async with asyncio.timeout(5):  # the drain timeout bounds it
        left = await organism.stop(drain_timeout=0.2)
    assert left == 3
    assert sorted(letter.spore.knowledge["n"] for letter in organism.dead_letters) == [1, 2, 3]
    assert {letter.reason for letter in organism.dead_letters} == {"shutdown"}


async def test_a_removed_class_agent_whose_on_stop_hangs_is_let_go_within_a_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Found in review: the stop bounds on_stop hooks, a reload did not: the retirement
    # (and every swap stacked behind one) waited on the hook for ever.
    monkeypatch.setattr(reloader, "HOOK_LIMIT", 0.2, raising=False)

    class Stubborn:
        async def handle(self, spore: Any, ctx: Any) -> None:
            return None

        async def on_stop(self) -> None:
            await asyncio.Event().wait()  # never ends

    organism = Organism.from_dict({"agents": {"s": {"handler": Stubborn, "lazy": False},
                                              "keep": {"handler": lambda s, c: None}}})
    async with organism.running():
        await organism.remove_agent("s")
        await wait_for(lambda: not organism.wiring().retired.lanes, timeout=10)


async def test_what_an_old_lane_did_while_its_swap_waited_stays_counted_after_a_stop(
        tmp_path: Path, module: Callable[..., str]) -> None:
    """Found by tests/random_reloads.py: a stop ended the swap before it added what the
    old lane handled or failed after the reload to the agent's counts, so the totals
    said 2 received and none handled or failed."""
    mod = module()
    file = write_organism(tmp_path, TEXT, mod=mod, n=2, to="a")
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES.update(hang=asyncio.Event(), done=asyncio.Event())  # hang never set
    await organism.start()
    await organism.send("slow", {"n": 1, "gate": "hang"})
    await organism.send("slow", {"n": 2, "gate": "done"})
    await started(handlers, 1, 2)
    write_organism(tmp_path, TEXT, mod=mod, n=3, to="a")
    await organism.reload()  # the swap waits on the old lane's handler of spore 1
    handlers.GATES["done"].set()
    await until(lambda: state(organism, "slow") == [2], organism.events)
    await organism.stop(drain_timeout=0.2)  # spore 1: cancelled, a shutdown dead letter
    counts = organism.stats()["agents"]["slow"]
    assert (counts["received"], counts["handled"], counts["failed"]) == (2, 1, 1)
    assert [letter.spore.knowledge["n"] for letter in organism.dead_letters] == [1]
