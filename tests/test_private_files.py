"""Files sporeflow keeps (the journal and its side files, state snapshots) are the
user's alone: 0600, in a folder made 0700 when sporeflow makes it, whatever the umask."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.agents.state import write_snapshot
from sporeflow.pipeline.journal.failstop import FailStop
from sporeflow.pipeline.journal.sqlite import JournalError


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The usual 022: what sporeflow makes must be private without the umask's help."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_fresh_journal_its_wal_and_side_files_are_0600_in_a_0700_folder(
        tmp_path: Path) -> None:
    path = tmp_path / "made" / "deeper" / "j.db"
    release = asyncio.Event()

    async def slow(spore: Spore, ctx: Any) -> None:
        await release.wait()

    org = Organism(Organism.from_dict({"agents": {"slow": {"handler": slow}}}).spec,
                   journal=path)
    async with org.running():
        await org.send("slow", {"n": 1})  # on disk, and running: every side file exists
        suffixes = ("", "-wal", "-shm", "-inflight", "-reserve")
        modes = {suffix: mode(Path(f"{path}{suffix}")) for suffix in suffixes}
        release.set()
        await org.idle()
    assert modes == dict.fromkeys(suffixes, 0o600)
    assert mode(tmp_path / "made") == mode(tmp_path / "made" / "deeper") == 0o700


async def test_the_journal_leaves_an_existing_folder_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)
    org = Organism(Organism.from_dict({"agents": {"a": {"handler": lambda s, c: None}}}).spec,
                   journal=folder / "j.db")
    async with org.running():
        await org.send("a", {})
        await org.idle()
        assert mode(Path(f"{folder / 'j.db'}-wal")) == 0o600
    assert mode(folder) == 0o755
    assert mode(folder / "j.db") == 0o600


def test_the_note_of_a_failed_journal_is_0600(tmp_path: Path) -> None:
    stop = FailStop(tmp_path / "j.db")
    stop.fail(OSError("disk full"), [])
    assert mode(stop.note) == 0o600


def test_a_state_snapshot_is_0600_in_a_folder_made_0700(tmp_path: Path) -> None:
    path = tmp_path / "state" / "organism.json"
    write_snapshot(path, {"sporeflow_state": 1, "agents": {}})
    write_snapshot(path, {"sporeflow_state": 1, "agents": {"a": {"n": 2}}})  # replaced
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["organism.json"]


def test_a_state_snapshot_leaves_an_existing_folder_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o751)
    write_snapshot(tmp_path / "organism.json", {"sporeflow_state": 1, "agents": {}})
    assert mode(tmp_path) == 0o751
    assert mode(tmp_path / "organism.json") == 0o600


def test_a_restrictive_umask_does_not_lock_the_owner_out(tmp_path: Path) -> None:
    os.umask(0o277)  # would leave 0400 files and 0500 folders
    path = tmp_path / "state" / "organism.json"
    write_snapshot(path, {"sporeflow_state": 1, "agents": {}})
    assert (mode(path.parent), mode(path)) == (0o700, 0o600)


async def test_a_symlink_planted_beside_the_journal_is_refused_and_its_target_untouched(
        tmp_path: Path) -> None:
    # Found by an attacker: the in-flight marks are written to JOURNAL-inflight.new first,
    # opened with O_TRUNC following a symbolic link; one planted there by anyone who may
    # write in the folder had its target truncated and filled with 1 MiB of marks.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    folder = tmp_path / "journal"
    folder.mkdir()
    os.symlink(victim, folder / "j.db-inflight.new")

    async def work(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"agents": {"w": {"handler": work}}},
                             journal=str(folder / "j.db"))
    with pytest.raises(JournalError, match="is a symbolic link, which sporeflow never "
                                           "writes through; remove it"):
        await org.start()
    assert victim.read_text() == "precious data\n"
