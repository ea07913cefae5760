"""SIGKILL a journaled ``sporeflow run`` at random points, restart it, and lose nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError

ORGANISM = Path(__file__).parent / "organisms" / "journal" / "organism.yaml"
COUNT = 3000  # the organism's boot: {count: 3000}
KILLS = 4
BACKSTOP_S = 30.0


def start(journal: Path, out: Path, log: Path) -> subprocess.Popen[str]:
    with log.open("a") as errors:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(ORGANISM),
             "--until-idle", "--quiet", "--journal", str(journal)],
            stdout=subprocess.PIPE, stderr=errors, text=True,
            env={**os.environ, "SPOREFLOW_SINK_FILE": str(out),
                 "SPOREFLOW_SPAWN_FILE": f"{out}.spawns"})


def read_lines(proc: subprocess.Popen[str], wanted: int) -> bool:
    """Read ``wanted`` progress lines of the sink; False if the process ended first."""
    assert proc.stdout is not None
    # The backstop: a stuck process is killed, which ends the read below.
    watchdog = threading.Timer(BACKSTOP_S, proc.kill)
    watchdog.start()
    try:
        return all(proc.stdout.readline() for _ in range(wanted))
    finally:
        watchdog.cancel()


def booted(journal: Path) -> bool:
    """Whether the boot spore is on disk (the journal then never boots again)."""
    try:
        with JournalFile(journal) as file:
            return "source" in file.booted()
    except JournalError:  # not created yet
        return False


def run_to_end(journal: Path, out: Path, log: Path) -> None:
    proc = start(journal, out, log)
    _, _ = proc.communicate(timeout=BACKSTOP_S)
    assert proc.returncode == 0, log.read_text()


def test_sigkilled_runs_lose_no_spore_and_end_as_an_uninterrupted_run(tmp_path: Path) -> None:
    reference_out = tmp_path / "reference.txt"
    run_to_end(tmp_path / "reference.db", reference_out, tmp_path / "reference.log")
    reference = reference_out.read_text().splitlines()
    assert len(reference) == COUNT
    assert {int(line.split()[0]) for line in reference} == set(range(COUNT))

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    journal, out, log = tmp_path / "journal.db", tmp_path / "out.txt", tmp_path / "run.log"
    killed = 0
    for _ in range(KILLS):
        proc = start(journal, out, log)
        going = read_lines(proc, rng.randint(1, COUNT // (KILLS + 1)))
        # Before its boot spore is on disk, a killed run rightly boots again at restart,
        # which would blur the check below that the work was admitted once.
        while going and not booted(journal):
            going = read_lines(proc, 1)
        if going:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=BACKSTOP_S)
        assert proc.stdout is not None
        proc.stdout.close()
    assert killed >= 1, f"seed {seed}: every run ended before its kill point"
    run_to_end(journal, out, log)

    # The work was admitted once, by the first run's boot: the later runs finished it from
    # the journal (a replayed boot spore keeps its id) instead of starting it over.
    assert len(set(Path(f"{out}.spawns").read_text().split())) == 1
    lines = out.read_text().splitlines()
    # At least once: every item was handled, some twice (killed between handling and its
    # commit); the result, duplicates aside, is the uninterrupted run's.
    assert set(lines) == set(reference), f"seed {seed}"
    assert len(lines) >= COUNT
    with JournalFile(journal) as left:
        assert left.pending() == []
        assert left.dead_letters() == []
