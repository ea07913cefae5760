"""Pipelined sends with a journal: ``send(confirm=False)`` returns at admission, the
journal writes such spores in group commits, and ``confirmed()`` is the promise: once it
returned, every spore sent before it is on disk, a ``kill -9`` notwithstanding."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.journal.offline import JournalFile

BACKSTOP_S = 30.0
COUNT = 1000
BEHIND = 16_384  # journal.store._BEHIND: queued operations past which senders wait


def held(journal: Path) -> tuple[Organism, asyncio.Event]:
    """An organism whose one agent holds every spore until the event is set."""
    release = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await release.wait()

    spec = Organism.from_dict({"agents": {"slow": {"handler": slow}},
                               "channels": {"main": {"capacity": COUNT * 2}}}).spec
    return Organism(spec, journal=journal), release


async def test_pipelined_sends_are_group_committed_and_on_disk_once_confirmed(
        tmp_path: Path) -> None:
    org, release = held(tmp_path / "j.db")
    async with org.running():
        sent = [await org.send("slow", {"n": n}, confirm=False) for n in range(COUNT)]
        await org.confirmed()
        with JournalFile(tmp_path / "j.db") as file:  # another connection: what is on disk
            assert {s.id for s in file.pending()} == {s.id for s in sent}
        commits = org.stats()["journal"]["commits"]
        release.set()
        await org.idle()
    # Awaited one by one, each send would have been its own commit.
    assert commits < COUNT / 10, commits
    with JournalFile(tmp_path / "j.db") as file:
        assert file.pending() == []


async def test_confirmed_returns_at_once_without_a_journal(tmp_path: Path) -> None:
    seen: list[int] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        seen.append(spore.knowledge["n"])

    org = Organism.from_dict({"agents": {"sink": {"handler": sink}}})
    async with org.running():
        await org.send("sink", {"n": 1}, confirm=False)
        await org.confirmed()
        await org.idle()
    assert seen == [1]


CHILD = textwrap.dedent("""
    import asyncio, sys
    from sporeflow.pipeline import Organism

    async def slow(spore, ctx):
        await asyncio.Event().wait()  # never finishes: every spore stays pending

    async def main():
        spec = Organism.from_dict({"agents": {"slow": {"handler": slow}},
                                   "channels": {"main": {"capacity": 4000}}}).spec
        org = Organism(spec, journal=sys.argv[1])
        async with org.running():
            for n in range(int(sys.argv[2])):
                spore = await org.send("slow", {"n": n}, confirm=False)
                print(spore.id, flush=True)
            await org.confirmed()
            print("confirmed", flush=True)
            await asyncio.Event().wait()  # killed here

    asyncio.run(main())
""")


def test_a_kill_after_confirmed_loses_no_pipelined_spore(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    ids: list[str] = []
    with subprocess.Popen([sys.executable, "-c", CHILD, str(journal), str(COUNT)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        watchdog = threading.Timer(BACKSTOP_S, proc.kill)  # a stuck child ends the read
        watchdog.start()
        try:
            for line in proc.stdout:  # the child prints its ids, then "confirmed"
                if line.strip() == "confirmed":
                    proc.send_signal(signal.SIGKILL)
                    break
                ids.append(line.strip())
        finally:
            watchdog.cancel()
        proc.wait(timeout=BACKSTOP_S)
        errors = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, errors
    assert len(ids) == COUNT
    with JournalFile(journal) as file:
        assert {s.id for s in file.pending()} == set(ids)


async def test_pipelined_senders_wait_once_the_journal_falls_behind(tmp_path: Path) -> None:
    """What waits for the disk stays bounded: with the writer held, a pipelined sender
    stops at the bound instead of queueing every spore it sends in memory."""
    import threading as _threading

    gate = _threading.Event()
    release = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await release.wait()

    many = BEHIND * 4  # admission must not be what stops the sender
    spec = Organism.from_dict({"agents": {"slow": {"handler": slow}},
                               "channels": {"main": {"capacity": many}},
                               "limits": {"max_in_flight": many}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        journal = org._journal  # noqa: SLF001 - the test holds its writer
        assert journal is not None
        commit = journal._commit  # noqa: SLF001

        def held_commit(ops: Any) -> None:
            gate.wait(BACKSTOP_S)  # the writer thread waits here until released
            commit(ops)

        journal._commit = held_commit  # type: ignore[method-assign]  # noqa: SLF001
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for n in range(BEHIND * 3):
                await org.send("slow", {"n": n}, confirm=False)
                sent += 1

        task = asyncio.create_task(sender())
        for _ in range(BEHIND * 4):  # until the sender stops
            await asyncio.sleep(0)
            if task.done():
                break
        queued = org.stats()["journal"]["queued"]
        assert not task.done()
        assert sent <= BEHIND + 2, sent
        assert queued <= BEHIND + 2, queued
        gate.set()
        release.set()
        await asyncio.wait_for(task, BACKSTOP_S)
        await org.idle()
    assert sent == BEHIND * 3
