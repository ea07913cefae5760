"""Expiry inside one process runs on the loop's monotonic clock (issue 16, point 9).

A spore's ``expires_at`` is wall-clock UTC, and stays its serialized form. Where it
passes the expire stage, it is turned once into a deadline on the event loop's clock
(``loop.time()``); every later check in this process (the lane's, just before a handler
runs) compares that deadline, so a step of the wall clock neither expires a waiting
spore early nor keeps one alive past its time.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.amqp_codec import spore_to_amqp
from sporeflow.steps import Spore, expire_filter
from sporeflow.steps.expire import expired

from .conftest import VirtualClockLoop, aiter_of, collect

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


class SteppedWall:
    """An organism's wall clock: the virtual loop's, plus a step we choose."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        self.loop = loop
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return self.loop.wall() + self.offset


def gated(wall: SteppedWall, hold: float, step: timedelta,
          handled: list[Any]) -> Organism:
    """An organism whose one agent, ``gate`` (one slot), holds its first spore ``hold``
    virtual seconds, then steps the wall clock by ``step``: the rest wait in its mailbox."""

    async def gate(spore: Spore, ctx: Any) -> None:
        if spore.knowledge.get("first"):
            await asyncio.sleep(hold)
            wall.offset += step
        handled.append(spore.knowledge["n"])

    spec = organism_from_dict({"agents": {"gate": {"handler": gate, "concurrency": 1}}})
    return Organism(spec, now=wall)


def test_a_wall_clock_step_forward_expires_no_waiting_spore(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        wall, handled = SteppedWall(loop), list[int]()
        org = gated(wall, hold=0.5, step=HOUR, handled=handled)
        async with org.running():
            await org.send("gate", {"first": True, "n": -1})
            for n in range(150):
                await org.send("gate", {"n": n}, expires_in=60)
            await org.idle()
            assert loop.time() < 1  # they waited under a second of their 60
            assert wall() > NOW + HOUR  # while the wall clock moved an hour
        assert [d.reason for d in org.dead_letters] == []
        assert handled == [-1, *range(150)]

    virtual(main)


def test_a_spore_past_its_monotonic_deadline_expires_though_the_wall_clock_stepped_back(
        virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        wall, handled = SteppedWall(loop), list[int]()
        org = gated(wall, hold=10, step=-HOUR, handled=handled)
        async with org.running():
            await org.send("gate", {"first": True, "n": -1})
            short = [await org.send("gate", {"n": n}, expires_in=1) for n in range(3)]
            await org.send("gate", {"n": 99}, expires_in=100)
            await org.idle()
        assert sorted((d.reason, d.spore.id) for d in org.dead_letters) == sorted(
            ("expired", spore.id) for spore in short)
        assert handled == [-1, 99]

    virtual(main)


async def test_the_stage_turns_expires_at_into_a_monotonic_deadline_once() -> None:
    spore = Spore(knowledge={}, expires_at=NOW + timedelta(seconds=60))
    out = await collect(expire_filter.raw(
        aiter_of([spore]), on_reject=lambda *a: None, now=lambda: NOW, clock=lambda: 1000.0))
    assert out == [[spore]]
    # Later checks read the deadline alone: whatever the wall clock says meanwhile.
    assert not expired(spore, 1059.9, wall=lambda: NOW + HOUR)
    assert expired(spore, 1060.0, wall=lambda: NOW - HOUR)
    # Entering a chain again (another organism, another loop) converts it again.
    await collect(expire_filter.raw(
        aiter_of([spore]), on_reject=lambda *a: None, now=lambda: NOW, clock=lambda: 5.0))
    assert not expired(spore, 64.9)
    assert expired(spore, 65.0)


async def test_the_stage_reads_no_clock_for_a_batch_without_expiry() -> None:
    def never() -> Any:
        raise AssertionError("read a clock for spores that never expire")

    out = await collect(expire_filter.raw(aiter_of([Spore(knowledge={})] * 3),
                                          on_reject=lambda *a: None, now=never, clock=never))
    assert len(out[0]) == 3


def test_a_spore_never_admitted_gets_its_deadline_at_its_first_check() -> None:
    spore = Spore(knowledge={}, expires_at=NOW + timedelta(seconds=1))
    assert not expired(spore, 0.0, wall=lambda: NOW)  # converted here: deadline 1.0
    assert not expired(spore, 0.9, wall=lambda: NOW + HOUR)
    assert expired(spore, 1.0, wall=lambda: NOW - HOUR)
    assert expired(Spore(knowledge={}, expires_at=NOW), 0.0, wall=lambda: NOW)
    assert not expired(Spore(knowledge={}), 1e9)  # no expires_at: never


async def test_the_deadline_stays_in_this_process_and_expires_at_is_never_rewritten() -> None:
    at = NOW + timedelta(seconds=60)
    spore = Spore(knowledge={"k": 1}, expires_at=at, id="s1", created_at=NOW)
    twin = Spore(knowledge={"k": 1}, expires_at=at, id="s1", created_at=NOW)
    before = (spore.to_dict(), spore.to_json(), spore.to_xml(), repr(spore),
              spore_to_amqp(spore, now=NOW))
    await collect(expire_filter.raw(aiter_of([spore]), on_reject=lambda *a: None,
                                    now=lambda: NOW + timedelta(seconds=30),
                                    clock=lambda: 7.0))
    assert spore.expires_at == at
    assert (spore.to_dict(), spore.to_json(), spore.to_xml(), repr(spore),
            spore_to_amqp(spore, now=NOW)) == before
    assert spore == twin
    # A copy, a pickle or a replace is a new spore: converted where it is admitted.
    for other in (copy.copy(spore), copy.deepcopy(spore), pickle.loads(pickle.dumps(spore)),
                  replace(spore, priority=9)):
        assert other.expires_at == at
        assert not expired(other, 0.0, wall=lambda: NOW)  # its own deadline: 60.0
        assert expired(other, 60.0, wall=lambda: NOW)
    assert not expired(spore, 36.9)  # the original's: 7 + 30
    assert expired(spore, 37.0)
