"""The crash marks behind ``poison``: a mark is in the operating system's hands the moment
it is made (a shared memory map of the file, no system call), so a process killed while
stuck never counts the spore it finished last as running; a line cut short by the
death is left out; a full file is made anew with what still runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.journal import inflight
from sporeflow.pipeline.journal.inflight import HEADER, CrashCount, InFlightMarks
from sporeflow.pipeline.journal.marking import HandlerMarking


class NoSuspects:
    def dead(self, letter: DeadLetter) -> None:
        raise AssertionError("no suspect here")

    async def flush(self) -> None:
        raise AssertionError("no suspect here")


def running_on_disk(path: Path) -> set[str]:
    """What a start after a kill -9 now would count as running (a reader of the file)."""
    previous = InFlightMarks(path).previous()
    assert previous is not None
    return set(previous[1])


def test_a_settled_spore_is_on_disk_at_once(tmp_path: Path) -> None:
    path = tmp_path / "j.db-inflight"
    marks = InFlightMarks(path)
    marks.start()
    marks.mark("worker", "a")
    assert running_on_disk(path) == {"a"}
    marks.settled("a", "worker")
    assert running_on_disk(path) == set()
    marks.mark("worker", "b")  # stuck in b's handler from here on
    assert running_on_disk(path) == {"b"}
    marks.close(remove=True)
    assert not path.exists()


async def test_a_handler_call_is_unmarked_once_it_returns(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    marking = HandlerMarking(tmp_path / "j.db", NoSuspects(), failures.append)
    marking.start()
    seen: list[set[str]] = []

    async def handler(spore: object, attempt: int) -> None:
        seen.append(running_on_disk(tmp_path / "j.db-inflight"))
        await asyncio.sleep(0)

    class Spore:
        id = "a"

    await marking.marked("worker", handler)(Spore(), 1)
    assert seen == [{"a"}]  # marked before the handler started
    assert running_on_disk(tmp_path / "j.db-inflight") == set()  # and not after
    assert failures == []
    marking.close(remove=True)


def test_a_line_cut_short_by_the_death_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "j.db-inflight"
    full = f"{HEADER}t0\n+worker\ta\n+worker\tb\n".encode()
    # A copy killed halfway may have written its end before its middle.
    torn = full[:-6] + b"\0\0\0" + full[-3:] + b"\0" * 64
    path.write_bytes(torn)
    assert InFlightMarks(path).previous() == ("t0", {"a": "worker"})
    path.write_bytes(full + b"-a\n+wor" + b"\0" * 64)
    assert InFlightMarks(path).previous() == ("t0", {"b": "worker"})


def test_a_full_file_is_made_anew_with_what_still_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inflight, "FILE_SIZE", 256)
    path = tmp_path / "j.db-inflight"
    marks = InFlightMarks(path)
    marks.start()
    marks.mark("worker", "keeps-running")
    for n in range(100):  # some 2,000 bytes of lines through a file of 256
        marks.mark("worker", f"spore-{n}")
        marks.settled(f"spore-{n}", "worker")
        assert running_on_disk(path) == {"keeps-running"}
    assert path.stat().st_size == 256
    for n in range(20):  # more running at once than the file holds: it grows
        marks.mark("worker", f"long-{n:02}")
    assert running_on_disk(path) == {"keeps-running"} | {f"long-{n:02}" for n in range(20)}
    marks.close(remove=False)  # a death: the file stays for the next start
    assert len(running_on_disk(path)) == 21


def test_one_agent_finishing_a_broadcast_leaves_the_others_running(tmp_path: Path) -> None:
    path = tmp_path / "j.db-inflight"
    marks = InFlightMarks(path)
    marks.start()
    marks.mark("fast", "b1")
    marks.mark("slow", "b1")  # the same spore, broadcast to both
    marks.settled("b1", "fast")
    assert InFlightMarks(path).previous() == (marks.token, {"b1": "slow"})
    marks.close(remove=False)
    # An older file's "-id" settled every agent's run of it.
    path.write_bytes(f"{HEADER}t0\n+fast\tb1\n+slow\tb1\n+slow\tb2\n-b1\n".encode())
    assert InFlightMarks(path).previous() == ("t0", {"b2": "slow"})


async def test_a_suspect_is_marked_only_once_its_handler_starts(tmp_path: Path) -> None:
    # A suspect (it crashed the process before it was in the journal) is written to the
    # journal before it runs again; a death during that flush is not a crash of its.
    flushing = asyncio.Event()
    flushed = asyncio.Event()

    class Journal(NoSuspects):
        async def flush(self) -> None:
            flushing.set()
            await flushed.wait()

    failures: list[BaseException] = []
    marking = HandlerMarking(tmp_path / "j.db", Journal(), failures.append)
    marking.start()
    marking.counted(CrashCount([], {"s": (1, "worker")}))
    during: list[set[str]] = []

    async def handler(spore: object, attempt: int) -> None:
        during.append(running_on_disk(tmp_path / "j.db-inflight"))

    class Spore:
        id = "s"

    run = asyncio.ensure_future(marking.marked("worker", handler)(Spore(), 1))
    await flushing.wait()
    assert running_on_disk(tmp_path / "j.db-inflight") == set()  # flushing: not running
    flushed.set()
    await run
    assert during == [{"s"}]
    assert running_on_disk(tmp_path / "j.db-inflight") == set()
    assert failures == []
    marking.close(remove=True)
