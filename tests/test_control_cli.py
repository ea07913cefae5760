"""A real ``sporeflow run`` in a subprocess, reached by the command line through its
control socket: ``send`` (and ``--request``), ``tail``, ``stats``, ``reload``, ``dlq``;
a second run of the file refused, a stale socket replaced, the HTTP listener's token,
SIGHUP. Every wait is on a condition (the socket answering, a file's content), with a
timeout as a backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner

from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.service.address import ControlAddress, check_private
from sporeflow.pipeline.service.client import ControlClient, running_socket

HANDLERS = """
import json
from pathlib import Path

HERE = Path(__file__).parent


def boot(spore, ctx):
    with open(HERE / "boots.txt", "a") as file:
        file.write("booted\\n")


async def echo(spore, ctx):
    return {"echo": spore.knowledge}


async def flaky(spore, ctx):
    if not (HERE / "allow").exists():
        raise ValueError("not yet")
    with open(HERE / "flaky.txt", "a") as file:
        file.write(json.dumps(spore.knowledge) + "\\n")
"""

ORGANISM = """\
organism: {{name: svc}}
agents:
  booter: {{handler: {module}:boot, boot: {{go: 1}}}}
  echo: {{handler: {module}:echo}}
  flaky: {{handler: {module}:flaky}}
  picky: {{handler: {module}:echo, schema: picky.json}}
"""

SPORE_ID = re.compile(r"^[0-9a-f-]{10,}$")


def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def ready(organism: Path) -> bool:
    path = running_socket(organism)
    if path is None:
        return False

    async def ask() -> int:
        async with ControlClient(path) as client:
            return (await client.get("ready"))[0]

    return asyncio.run(ask()) == 200


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


class Run:
    """``sporeflow run ORGANISM`` in a subprocess, its output in files."""

    def __init__(self, organism: Path, *args: str, stdin: int | IO[Any] = subprocess.DEVNULL,
                 env: dict[str, str] | None = None) -> None:
        self.organism = organism
        self.err_path = organism.parent / f"run-{id(self)}.err"
        with open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(organism), *args],
                stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, cwd=organism.parent,
                env=env)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_ready(self) -> Run:
        until(lambda: self.process.poll() is not None or ready(self.organism),
              "the run to answer on its socket")
        assert self.process.poll() is None, self.stderr
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def organism(tmp_path: Path, handler_modules: Callable[..., str]) -> Path:
    module = handler_modules(HANDLERS)
    (tmp_path / "picky.json").write_text(json.dumps(
        {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}))
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM.format(module=module))
    return path


@pytest.fixture
def running(organism: Path) -> Iterator[Run]:
    run = Run(organism, "--quiet").wait_ready()
    try:
        yield run
    finally:
        run.kill()


def boots(organism: Path) -> list[str]:
    path = organism.parent / "boots.txt"
    return path.read_text().splitlines() if path.exists() else []


# -- send, stats, reload, health -----------------------------------------------------------


def test_send_and_request_reach_the_running_organism_whose_boot_runs_once(
        organism: Path, running: Run) -> None:
    code, out, err = invoke("send", str(organism), "--to", "echo", '{"n": 1}')
    assert code == 0, err
    assert SPORE_ID.match(out.strip()), out

    code, out, err = invoke("send", str(organism), "--to", "echo", "--request", '{"n": 2}')
    assert code == 0, err
    response = json.loads(out)
    assert (response["spore_type"], response["knowledge"]) == ("response", {"echo": {"n": 2}})

    code, out, _ = invoke("stats", str(organism))
    assert code == 0
    assert json.loads(out)["agents"]["echo"]["handled"] == 2

    code, out, _ = invoke("reload", str(organism))
    assert code == 0
    assert out.startswith(f"reload: {organism}: applied: no change")

    second = Run(organism)  # the same file again: refused before anything starts
    assert second.process.wait(timeout=30) == 1
    assert "AlreadyRunning: " in second.stderr
    assert f"this organism is running already (pid {running.process.pid}" in second.stderr

    assert running.stop() == 0
    assert boots(organism) == ["booted"]  # the run's own boot, once in all


def test_health_and_ready_answer_on_the_socket(organism: Path, running: Run) -> None:
    path = running_socket(organism)
    assert path is not None

    async def ask() -> tuple[Any, Any]:
        async with ControlClient(path) as client:
            return await client.get("health"), await client.get("ready")

    (health_status, health), (ready_status, answer) = asyncio.run(ask())
    assert (health_status, health["alive"], health["pid"]) == (200, True, running.process.pid)
    assert (ready_status, answer["ready"]) == (200, True)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)


def test_a_send_that_is_dead_lettered_prints_the_reason_and_exits_1(
        organism: Path, running: Run) -> None:
    code, out, err = invoke("send", str(organism), "--to", "ecko", '{"n": 1}')
    assert code == 1
    assert err.startswith("refused: unknown agent: DeliveryError: no agent 'ecko' in "
                          "organism 'svc' (did you mean 'echo'?)")

    code, out, err = invoke("send", str(organism), "--to", "picky", '{"n": "one"}')
    assert code == 1
    assert SPORE_ID.match(out.strip())  # its id: `sporeflow dlq show --id` finds it
    assert err.startswith("dead letter: schema: SchemaViolation: ")


# -- dead letters in the running process -------------------------------------------------------


def test_a_dead_letter_is_listed_and_replayed_in_the_running_process(
        organism: Path, running: Run) -> None:
    code, out, err = invoke("send", str(organism), "--to", "flaky", '{"n": 7}')
    assert code == 1
    assert "dead letter (agent 'flaky'): handler failed: ValueError: not yet" in err

    code, out, err = invoke("dlq", "list", str(organism))
    assert code == 0, err
    [line] = out.splitlines()
    assert re.match(r"\s*1 .* flaky\s+handler failed\s+ValueError: not yet", line), line
    assert "1 dead letter(s) in the running organism" in err

    (organism.parent / "allow").touch()
    code, _, err = invoke("dlq", "replay", str(organism), "--agent", "flaky")
    assert code == 0, err
    assert "1 dead letter(s) replayed in the running organism" in err
    flaky = organism.parent / "flaky.txt"
    until(lambda: flaky.exists() and flaky.read_text() == '{"n": 7}\n',
          "the running process to handle the replayed spore")

    code, out, err = invoke("dlq", "list", str(organism))
    assert (code, out) == (0, "")
    assert "0 dead letter(s) in the running organism" in err


def test_a_dead_letter_is_purged_in_the_running_process(organism: Path, running: Run) -> None:
    # Found by a new user: dlq purge of an organism whose dead letters only its running
    # process keeps (no journal, no broker) failed with a JournalError.
    for n in (1, 2):
        assert invoke("send", str(organism), "--to", "flaky", f'{{"n": {n}}}')[0] == 1
    code, _, err = invoke("dlq", "purge", str(organism), "--id", "1")
    assert code == 0, err
    assert "1 dead letter(s) purged in the running organism (control socket " in err
    code, out, err = invoke("dlq", "list", str(organism))
    assert [line.split()[0] for line in out.splitlines()] == ["2"]
    code, _, err = invoke("dlq", "purge", str(organism), "--id", "1")  # gone: said so
    assert code == 1
    assert err.startswith("NoSuchDeadLetter: ")


@contextlib.contextmanager
def journaled_run_with_a_letter(organism: Path) -> Iterator[None]:
    """The organism run with a journal, holding one dead letter (flaky failed); after
    the block, the run is stopped and its journal must keep no letter."""
    organism.write_text(organism.read_text().replace(
        "organism: {name: svc}", "organism: {name: svc, journal: state/journal.db}"))
    run = Run(organism, "--quiet").wait_ready()
    try:
        assert invoke("send", str(organism), "--to", "flaky", '{"n": 7}')[0] == 1
        yield
    finally:
        run.kill()
    code, out, err = invoke("dlq", "list", str(organism))
    assert (code, out) == (0, "")
    assert "0 dead letter(s) in" in err


def test_a_purge_of_a_running_organism_with_a_journal_is_done_in_the_journal(
        organism: Path) -> None:
    # Found in review: dlq purge went to the running process, which keeps its letters in
    # memory: the journal kept them, and after a stop they were listed and replayed again.
    with journaled_run_with_a_letter(organism):
        code, _, err = invoke("dlq", "purge", str(organism), "--all")
        assert code == 0, err
        assert "1 dead letter(s) purged in the running organism (control socket " in err
        assert err.rstrip().endswith(") and its journal")


def test_a_purge_of_a_running_organism_with_a_journal_takes_the_letter_list_showed(
        organism: Path) -> None:
    # Found by a new user: `dlq list` numbered the running process's letters, `dlq purge
    # --id N` the journal's (its own numbers): it deleted another letter for good, and the
    # process kept the ones purged, which a replay then brought back.
    with journaled_run_with_a_letter(organism):
        assert invoke("send", str(organism), "--to", "flaky", '{"n": 9}')[0] == 1
        code, out, _ = invoke("dlq", "list", str(organism), "--json")
        [seven] = [str(letter["number"]) for letter in map(json.loads, out.splitlines())
                   if letter["spore"]["knowledge"] == {"n": 7}]
        code, _, err = invoke("dlq", "purge", str(organism), "--id", seven)
        assert code == 0, err
        code, out, _ = invoke("dlq", "list", str(organism), "--json")
        assert [json.loads(line)["spore"]["knowledge"] for line in out.splitlines()] == [
            {"n": 9}]  # found: both, the purged one still in the process

        def in_journal() -> list[Any]:  # its writer commits a moment after a letter is made
            out = invoke("dlq", "list", str(organism), "--from", "journal", "--json")[1]
            return [json.loads(line)["spore"]["knowledge"] for line in out.splitlines()]

        until(lambda: in_journal() == [{"n": 9}], "the journal to hold n=9 alone")
        (organism.parent / "allow").touch()
        assert invoke("dlq", "replay", str(organism), "--all")[0] == 0
        flaky = organism.parent / "flaky.txt"
        until(lambda: flaky.exists() and flaky.read_text() == '{"n": 9}\n', "the replay")


def test_a_replay_in_a_running_organism_with_a_journal_leaves_no_letter_there(
        organism: Path) -> None:
    # Found by a new user: replayed in the running process, the letter stayed in the
    # journal; after a stop it was listed again, and a replay handled the spore twice.
    with journaled_run_with_a_letter(organism):
        (organism.parent / "allow").touch()
        code, _, err = invoke("dlq", "replay", str(organism), "--all")
        assert code == 0, err
        flaky = organism.parent / "flaky.txt"
        until(lambda: flaky.exists() and flaky.read_text() == '{"n": 7}\n', "the replay")


def test_an_id_the_running_organism_does_not_keep_is_an_error_naming_it(
        organism: Path, running: Run) -> None:
    """Found in review: `dlq replay --id 9` (and show) of a letter the running organism no
    longer kept said "0 dead letter(s) replayed" and exited 0."""
    for command in ("show", "replay"):
        code, out, err = invoke("dlq", command, str(organism), "--id", "9")
        assert (code, out) == (1, "")
        assert err.startswith("NoSuchDeadLetter: ")
        assert "no dead letter '9': " in err
        assert "dlq list" in err


# -- tail ----------------------------------------------------------------------------------


def test_tail_attaches_and_shows_a_spore_sent_meanwhile(organism: Path, running: Run) -> None:
    out_path, err_path = organism.parent / "tail.out", organism.parent / "tail.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        tail = subprocess.Popen(
            [sys.executable, "-m", "sporeflow.pipeline.cli", "tail", str(organism),
             "--agent", "echo", "--event", "handled"], stdout=out, stderr=err)
    try:
        until(lambda: "tail: following" in err_path.read_text(), "tail to attach")
        code, sent, _ = invoke("send", str(organism), "--to", "echo", '{"n": 3}')
        assert code == 0
        line = until(lambda: out_path.read_text().strip(), "tail to print the spore")
        event = json.loads(line.splitlines()[0])
        assert (event["event"], event["spore_id"], event["spore"]["knowledge"]) == (
            "handled", sent.strip(), {"n": 3})
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=30) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()


# -- with none running ---------------------------------------------------------------------


def test_with_none_running_send_says_so_and_start_runs_one_without_its_boots(
        organism: Path) -> None:
    code, _, err = invoke("send", str(organism), "--to", "echo", '{"n": 1}')
    assert code == 1
    assert err.strip() == (
        f"NotRunning: no organism running for {organism}; start it with `sporeflow run "
        f"{organism}`, or pass --start to run one now without its boot spores")
    code, _, err = invoke("tail", str(organism))
    assert code == 1
    assert err.startswith(f"NotRunning: no organism running for {organism}")

    code, out, err = invoke("send", str(organism), "--to", "echo", "--start", '{"n": 5}')
    assert code == 0, err
    returned, spore_id = out.strip().splitlines()
    assert json.loads(returned)["knowledge"] == {"echo": {"n": 5}}
    assert SPORE_ID.match(spore_id)
    assert boots(organism) == []  # --start sends no boot spore


def test_a_stale_socket_is_replaced(organism: Path) -> None:
    address = ControlAddress.of(organism, "svc")
    check_private(address.folder)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(address.socket))  # as a killed run leaves it: there, nobody listening
    stale.close()
    assert address.socket.exists()
    assert running_socket(organism) is None

    run = Run(organism, "--quiet").wait_ready()
    try:
        assert running_socket(organism) == address.socket
    finally:
        assert run.stop() == 0
    assert not address.socket.exists()


# -- HTTP ----------------------------------------------------------------------------------


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_http_refuses_a_missing_or_wrong_token_and_takes_the_right_one(
        organism: Path) -> None:
    run = Run(organism, "--control-http", "0").wait_ready()
    try:
        line = until(lambda: re.search(r"control: (http://127\.0\.0\.1:\d+/v1/)\?token=(\S+) "
                                       r"\(the token is in (\S+)\)", run.stderr),
                     "the HTTP address")
        base, token, token_file = line.group(1), line.group(2), Path(line.group(3))
        assert _status(base + "stats") == 401
        assert _status(base + "stats", "not-the-token") == 401
        assert _status(base + "stats", token) == 200
        assert _status(base + "health") == 200  # probes carry no token
        assert token_file.read_text().strip() == token
        assert token_file.stat().st_mode & 0o777 == 0o600
    finally:
        assert run.stop() == 0
    assert not token_file.exists()


def test_a_token_from_the_environment_is_used_and_not_printed(organism: Path) -> None:
    env = {**os.environ, "SPOREFLOW_CONTROL_TOKEN": "from-the-env-0123456789"}
    run = Run(organism, "--control-http", "0", env=env).wait_ready()
    try:
        base = until(lambda: re.search(r"control: (http://\S+/v1/) \(the token is "
                                       r"\$SPOREFLOW_CONTROL_TOKEN\)", run.stderr),
                     "the HTTP address").group(1)
        assert "from-the-env" not in run.stderr
        assert _status(base + "stats", "from-the-env-0123456789") == 200
    finally:
        run.kill()


# -- SIGHUP --------------------------------------------------------------------------------


def test_sighup_without_a_terminal_reloads_and_says_what_it_did(organism: Path,
                                                                running: Run) -> None:
    organism.write_text(organism.read_text() + organism.read_text().splitlines()[3]
                        .replace("echo:", "echo2:") + "\n")
    running.process.send_signal(signal.SIGHUP)
    until(lambda: "reload: " in running.stderr, "the reload's confirmation")
    assert f"reload: {organism}: applied: added echo2" in running.stderr
    code, out, _ = invoke("send", str(organism), "--to", "echo2", '{"n": 1}')
    assert code == 0
    assert running.process.poll() is None  # it runs on


def test_sighup_from_a_terminal_stops_the_run(organism: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        run = Run(organism, "--quiet", stdin=terminal).wait_ready()
        run.process.send_signal(signal.SIGHUP)  # the terminal was closed
        assert run.process.wait(timeout=30) == 0
    finally:
        os.close(controller)
        os.close(terminal)
    assert boots(organism) == ["booted"]
    assert running_socket(organism) is None


def test_with_no_organism_file_here_the_commands_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no organism.yaml: the default of every command
    for args in (["stats"], ["send", "--to", "echo", '{"n": 1}'], ["tail"]):
        code, _, err = invoke(*args)
        assert code == 1, args
        assert err.strip() == (f"NotRunning: no organism file organism.yaml in {tmp_path}: "
                               f"give the organism file's path as the first argument"), args
