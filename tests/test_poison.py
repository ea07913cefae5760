"""A spore whose handler kills the process is dead-lettered ``poison`` after
``max_crashes`` deaths (default 3) instead of being replayed forever, as RabbitMQ's
delivery-limit does; the other spores finish."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sporeflow.config import load_organism
from sporeflow.config.reasons import Reason
from sporeflow.pipeline.journal.offline import JournalFile

BACKSTOP_S = 60.0
COUNT, POISON = 20, 7

HANDLERS = '''
import os
import signal

async def spawn(spore, ctx):
    return [{"item": i} for i in range(spore.knowledge["count"])]

async def work(spore, ctx):
    item = spore.knowledge["item"]
    if item == int(os.environ["POISON_ITEM"]):
        if os.environ.get("POISON_HOW") == "exit":
            os._exit(70)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"item": item}

async def record(spore, ctx):
    fd = os.open(os.environ["SINK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{spore.knowledge['item']}\\n".encode())
    finally:
        os.close(fd)
'''


def write_organism(folder: Path, worker: str = "") -> Path:
    (folder / "handlers.py").write_text(HANDLERS)
    path = folder / "organism.yaml"
    path.write_text(f'''
organism: {{name: poison}}
agents:
  source:
    handler: handlers:spawn
    boot: {{count: {COUNT}}}
    emit: {{to: worker}}
  worker:
    handler: handlers:work
    emit: {{to: sink}}
    {worker}
  sink:
    handler: handlers:record
''')
    return path


def run(organism: Path, journal: Path, sink: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(organism), "--until-idle",
         "--quiet", "--journal", str(journal)],
        capture_output=True, text=True, timeout=BACKSTOP_S,
        env={**os.environ, "SINK_FILE": str(sink), "POISON_ITEM": str(POISON),
             "POISON_HOW": how})


def crash_until_done(organism: Path, journal: Path, sink: Path, how: str,
                     most: int = 8) -> tuple[list[int], str]:
    """Start the organism again each time it dies; return the exit codes of its runs
    and what the last one printed."""
    codes: list[int] = []
    printed = ""
    while not codes or codes[-1] != 0:
        assert len(codes) < most, f"still crashing after {most} starts: {codes}"
        done = run(organism, journal, sink, how)
        assert done.returncode in (0, 70, -9), done.stderr
        codes.append(done.returncode)
        printed = done.stderr
    return codes, printed


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_spore_that_kills_the_process_is_poison_after_three_crashes(
        tmp_path: Path, how: str) -> None:
    organism = write_organism(tmp_path)
    journal, sink = tmp_path / "journal.db", tmp_path / "sink.txt"
    codes, printed = crash_until_done(organism, journal, sink, how)
    death = 70 if how == "exit" else -9
    assert codes == [death, death, death, 0]  # three deaths, then a clean run
    assert "1 dead letter (poison: 1)" in printed  # the last run's summary counts it
    items = {int(line) for line in sink.read_text().split()}
    assert items == set(range(COUNT)) - {POISON}  # the others finished
    with JournalFile(journal) as file:
        assert file.pending() == []
        letters = file.dead_letters()
    assert [(s.letter.reason, s.letter.spore.knowledge) for s in letters] == [
        (Reason.POISON, {"item": POISON})]
    letter = letters[0].letter
    assert letter.agent == "worker"
    assert letter.attempts == 3
    assert "3 times" in letter.error


def test_max_crashes_is_per_agent(tmp_path: Path) -> None:
    organism = write_organism(tmp_path, worker="max_crashes: 2")
    assert load_organism(organism).agents["worker"].max_crashes == 2
    assert load_organism(organism).agents["sink"].max_crashes == 3
    journal, sink = tmp_path / "journal.db", tmp_path / "sink.txt"
    assert crash_until_done(organism, journal, sink, "sigkill")[0] == [-9, -9, 0]
    with JournalFile(journal) as file:
        assert [s.letter.reason for s in file.dead_letters()] == [Reason.POISON]


def test_a_replayed_poison_letter_counts_its_crashes_afresh(tmp_path: Path) -> None:
    organism = write_organism(tmp_path, worker="max_crashes: 1")
    journal, sink = tmp_path / "journal.db", tmp_path / "sink.txt"
    assert crash_until_done(organism, journal, sink, "sigkill")[0] == [-9, 0]
    with JournalFile(journal) as file:
        letters = file.dead_letters(reasons=[Reason.POISON])
        assert len(letters) == 1
        file.replay(letters)
    # Back among the pending spores, it kills the process once more, and only once.
    assert crash_until_done(organism, journal, sink, "sigkill")[0] == [-9, 0]
    with JournalFile(journal) as file:
        assert [s.letter.reason for s in file.dead_letters()] == [Reason.POISON]


FANOUT_HANDLERS = '''
import asyncio
import os
import signal

_fast_done = None


def _done():
    global _fast_done
    if _fast_done is None:
        _fast_done = asyncio.Event()
    return _fast_done


async def start(spore, ctx):
    return {"job": 1}


async def fast(spore, ctx):
    await asyncio.sleep(0)  # slow starts meanwhile: both are running
    _done().set()


async def slow(spore, ctx):
    await _done().wait()
    await asyncio.sleep(0)  # a turn after fast returned: fast's mark is settled
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_a_broadcast_that_kills_one_subscriber_is_poison_there_whoever_finished_first(
        tmp_path: Path) -> None:
    # The marks named the spore only: fast's "-" cleared slow's "+" of the same spore, so
    # no death was ever counted and the run crashed at every start, forever.
    (tmp_path / "fanout_handlers.py").write_text(FANOUT_HANDLERS)
    organism = tmp_path / "organism.yaml"
    organism.write_text('''
organism: {name: fanout}
channels: {jobs: {}}
agents:
  source: {handler: fanout_handlers:start, boot: {}, emit: {channel: jobs}}
  fast: {handler: fanout_handlers:fast, subscribe: [jobs]}
  slow: {handler: fanout_handlers:slow, subscribe: [jobs]}
''')
    journal, sink = tmp_path / "journal.db", tmp_path / "sink.txt"
    codes, printed = crash_until_done(organism, journal, sink, "sigkill")
    assert codes == [-9, -9, -9, 0]
    with JournalFile(journal) as file:
        letters = [stored.letter for stored in file.dead_letters()]
    assert [(letter.reason, letter.agent) for letter in letters] == [(Reason.POISON, "slow")]
