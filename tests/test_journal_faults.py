"""What a handler's odd spores must not do to the journal's trace rows and crash marks
(found by fault injection after they changed): a naive or far-off ``created_at`` stops no
journal and loses no step; an id longer than the marks file still runs its handler."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sporeflow.config import SporeError
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.journal.offline import JournalFile


async def front_to_sink(journal: Path, created_at: datetime) -> Organism:
    """Run a journaled organism whose front agent sends sink a spore made at
    ``created_at`` (a handler may set any time), until idle."""

    async def front(spore: Spore, ctx: object) -> Spore:
        return Spore(knowledge={"x": 1}, to_agent="sink", created_at=created_at)

    async def sink(spore: Spore, ctx: object) -> None:
        return None

    org = Organism.from_dict({"organism": {"name": "n", "journal": str(journal)},
                              "agents": {"front": {"handler": front, "emit": {"to": "sink"}},
                                         "sink": {"handler": sink}}})
    async with org.running():
        await org.send("front", {"go": 1})
        await org.idle()
    return org


async def test_a_refused_spore_with_a_naive_min_created_at_does_not_stop_the_journal(
        tmp_path: Path) -> None:
    org = await front_to_sink(tmp_path / "j.db", datetime(1, 1, 1))  # a handler's mistake
    # The spore is refused ('invalid': created_at must be timezone-aware), and its step
    # keeps the naive time as found: written as text, not as seconds, whose conversion
    # raised on the writer thread and stopped the journal, locking it.
    assert [letter.reason for letter in org.dead_letters] == ["invalid"]
    assert not (tmp_path / "j.db-unrecorded").exists()
    journal = org.journal
    assert journal is not None
    assert journal.failure is None


async def test_a_step_with_a_far_created_at_is_kept(tmp_path: Path) -> None:
    far = datetime.max.replace(tzinfo=UTC)  # a valid, timezone-aware datetime
    await front_to_sink(tmp_path / "j.db", far)
    with JournalFile(tmp_path / "j.db") as file:
        agents = [s.agent for s in file.trace_steps()]
    # As seconds, datetime.max rounds past the last datetime and would not read back.
    assert agents == ["front", "sink"]


async def test_a_spore_with_the_longest_id_is_handled_and_a_longer_one_refused(
        tmp_path: Path) -> None:
    # An id is bounded as a lineage id is (1,024 characters: what crosses a broker); a
    # spore of 1.2 MB of id, which the marks file once had to grow for, is refused at once.
    got: list[int] = []

    async def sink(spore: Spore, ctx: object) -> None:
        got.append(len(spore.id))

    org = Organism.from_dict({"organism": {"name": "n", "journal": str(tmp_path / "j.db")},
                              "limits": {"max_spore_bytes": "8MiB"},
                              "agents": {"sink": {"handler": sink}}})
    async with org.running():
        await org.submit(Spore(knowledge={}, to_agent="sink", id="x" * 1024))
        with pytest.raises(SporeError, match="id must be a non-empty string of at most 1024"):
            await org.submit(Spore(knowledge={}, to_agent="sink", id="x" * 1_200_000))
        await org.idle()
        letters = [(letter.reason, letter.error) for letter in org.dead_letters]
    assert letters == []
    assert got == [1024]
