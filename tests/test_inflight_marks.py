"""The crash marks behind ``poison``: a settled spore's ``-`` line goes out with the next
``+`` (one write), and at the latest at the end of the loop's turn, never later: a
process killed while stuck must not count the spore it finished last as running."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.journal.inflight import InFlightMarks
from sporeflow.pipeline.journal.marking import HandlerMarking


class NoSuspects:
    def dead(self, letter: DeadLetter) -> None:
        raise AssertionError("no suspect here")

    async def flush(self) -> None:
        raise AssertionError("no suspect here")


def running_on_disk(marks: InFlightMarks) -> set[str]:
    """What a start after a kill -9 now would count as running."""
    previous = marks.previous()
    assert previous is not None
    return set(previous[1])


def test_a_settled_line_goes_out_with_the_next_mark(tmp_path: Path) -> None:
    marks = InFlightMarks(tmp_path / "j.db-inflight")
    marks.start()
    marks.mark("worker", "a")
    assert marks.settled("a")  # the first unwritten: the caller arranges a flush
    assert running_on_disk(marks) == {"a"}  # not written yet
    marks.mark("worker", "b")  # stuck in b's handler from here on
    assert running_on_disk(marks) == {"b"}
    marks.close(remove=True)


async def test_a_settled_spore_is_on_disk_by_the_end_of_the_turn(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    marking = HandlerMarking(tmp_path / "j.db", NoSuspects(), failures.append)
    marking.start()
    invoke = marking.marked("worker", lambda spore, attempt: asyncio.sleep(0))
    marks = InFlightMarks(tmp_path / "j.db-inflight")  # a reader of the same file

    class Spore:
        id = "a"

    await invoke(Spore(), 1)  # marks, runs, settles: the "-" waits for the turn's end
    assert running_on_disk(marks) == {"a"}
    await asyncio.sleep(0)  # one turn: the callbacks it scheduled run before we resume
    assert running_on_disk(marks) == set()
    assert failures == []
    marking.close(remove=True)
