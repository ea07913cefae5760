"""Files a user names (a message schema, @FILE knowledge, a journal) are read no further
than a cap, and a named pipe nobody writes to does not hang the command.

Found by a security review: `send @/dev/zero` and a schema linked to /dev/zero read until
memory ran out (a MemoryError traceback), and a FIFO as the schema, the @FILE or the
journal hung the command for good, saying nothing.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import ConfigError, load_organism
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.sqlite import JournalError

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"
_BACKSTOP = 20.0  # seconds: only a hang reaches it

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")


def _returns(call: Callable[[], Any], fifo: Path) -> Any:
    """``call()``'s result, or a failed test if it is still blocked after the backstop
    (then the FIFO is opened for writing once, which lets the blocked reader go)."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_catching(call)), daemon=True)
    worker.start()
    worker.join(_BACKSTOP)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(_BACKSTOP)
        pytest.fail(f"blocked on the named pipe {fifo}")
    return outcome[0]


def _catching(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # the test judges it
        return exc


def _small_memory() -> None:
    # An unbounded read of /dev/zero ends in a MemoryError here, not on the machine.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _organism_with_schema(folder: Path, schema: str) -> Path:
    (folder / "bounded_reads_h.py").write_text("async def h(spore, ctx):\n    return None\n")
    file = folder / "organism.yaml"
    file.write_text(f"organism: {{name: x}}\nagents:\n"
                    f"  a: {{handler: 'bounded_reads_h:h', schema: {schema}}}\n")
    return file


def test_a_schema_file_that_is_a_device_is_read_no_further_than_the_cap(
        tmp_path: Path) -> None:
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    file = _organism_with_schema(tmp_path, "zero.json")
    script = ("import sys\nfrom sporeflow.config import ConfigError, load_organism\n"
              "try:\n    load_organism(sys.argv[1])\n"
              "except ConfigError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(file)], capture_output=True,
                          text=True, timeout=120, preexec_fn=_small_memory, check=False)
    assert done.returncode == 0, done.stderr[-500:]
    assert "agents.a.schema: schema file" in done.stdout
    assert "larger than the 4194304-byte cap" in done.stdout


def test_a_schema_file_that_is_a_named_pipe_does_not_hang_the_load(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "s.json")
    file = _organism_with_schema(tmp_path, "s.json")
    outcome = _returns(lambda: load_organism(file), tmp_path / "s.json")
    assert isinstance(outcome, ConfigError), outcome
    assert "agents.a.schema: the schema is not JSON" in str(outcome)


def test_knowledge_from_a_device_is_read_no_further_than_the_cap() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sporeflow", "send", str(SMALL), "--start", "--to", "picky",
         "@/dev/zero"], capture_output=True, text=True, timeout=120,
        preexec_fn=_small_memory, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("SporeError: cannot read KNOWLEDGE from '/dev/zero': it is "
                                  "larger than the 67108864-byte cap"), done.stderr[-500:]
    # Found by a reviewer: the advice was "check the path after @", for a path that is right.
    assert done.stderr.rstrip().endswith("; send less: a spore is far smaller "
                                         "(limits.max_spore_bytes)"), done.stderr[-500:]


def test_knowledge_from_a_named_pipe_nobody_writes_to_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "k.json")
    result = _returns(lambda: CliRunner().invoke(
        cli, ["send", str(SMALL), "--start", "--to", "picky", f"@{tmp_path / 'k.json'}"]),
        tmp_path / "k.json")
    assert result.exit_code == 1
    assert "KNOWLEDGE is not JSON" in result.stderr


def test_a_journal_that_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "j.db")
    outcome = _returns(lambda: JournalFile(tmp_path / "j.db"), tmp_path / "j.db")
    assert isinstance(outcome, JournalError), outcome
    assert str(outcome).startswith(f"{tmp_path / 'j.db'}: not a sporeflow journal (a named "
                                   f"pipe, not a regular file)")
