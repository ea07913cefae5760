from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.pipeline.cli.main import cli

ROOT = Path(__file__).parent.parent
SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_good_file_prints_one_line_summary() -> None:
    code, out, _ = invoke("check", str(SMALL))
    assert code == 0
    assert out.strip() == f"{SMALL}: ok: organism 'small', 7 agents, 1 channel, 0 warnings"


def test_check_bad_file_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "organism.yaml"
    bad.write_text("agents:\n  a:\n    handler: nowhere:h\n    emit: {to: bb}\n  b:\n"
                   "    handler: nowhere:h\n    timout: 5s\n")
    code, _, err = invoke("check", str(bad))
    assert code == 1
    assert err.startswith("ConfigError: 3 problems in the organism")
    assert f"{bad}:4:16: agents.a.emit.to: unknown agent 'bb' (did you mean 'b'?)" in err
    assert (f"{bad}:3:14: agents.a.handler: handler module 'nowhere' is neither beside the "
            f"organism file") in err  # once, for both agents that name it
    assert "; agents 'a' and 'b' use it" in err
    assert f"{bad}:7:5: agents.b.timout: unknown key 'timout' (did you mean 'timeout'?)" in err
    assert "Traceback" not in err


def test_check_reports_names_that_would_collide_on_a_broker(tmp_path: Path) -> None:
    bad = tmp_path / "organism.yaml"
    bad.write_text("organism: {name: shop.orders}\nagents:\n"
                   "  dead-letters: {handler: operator:eq}\n")
    code, _, err = invoke("check", str(bad))
    assert code == 1
    assert err.startswith("ConfigError: 2 problems in the organism")
    assert f"{bad}:1:18: organism.name: 'shop.orders' is not a valid organism name" in err
    assert f"{bad}:3:3: agents.dead-letters: 'dead-letters' is reserved" in err


def test_missing_file_is_one_clear_line() -> None:
    code, _, err = invoke("check", "/no/such/organism.yaml")
    assert code == 1
    assert err.strip() == ("ConfigError: 1 problem in the organism\n/no/such/organism.yaml:1:1: "
                           "<root>: cannot read the file: No such file or directory")


def test_an_unknown_log_level_is_one_line_naming_the_levels() -> None:
    # Found by a new user: --log-level verbose ended in a traceback (ValueError: Unknown
    # level: 'VERBOSE') where README promises exit 1 and none.
    code, _, err = invoke("run", "--log-level", "verbose", str(SMALL))
    assert code == 2
    assert ("Invalid value for '--log-level': 'verbose' is not one of 'debug', 'info', "
            "'warning', 'error'") in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback() -> None:
    # Printed (masked, as every output: see test_secret_leaks), then exit 1.
    result = CliRunner().invoke(cli, ["--debug", "check", "/no/such/organism.yaml"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "sporeflow.config.errors.ConfigError: 1 problem in the organism" in result.stderr


def test_send_start_prints_what_comes_back_as_json_lines_then_the_id() -> None:
    code, out, err = invoke("send", str(SMALL), "--start", "--to", "picky", '{"n": 4}')
    assert code == 0, err
    line, spore_id = out.strip().splitlines()
    spore = json.loads(line)
    assert spore["knowledge"] == {"n": 4}
    assert spore["to_agent"] == "cli"
    assert spore["thread_id"] == spore_id


def test_send_start_prints_the_dead_letters_its_one_off_run_made(tmp_path: Path) -> None:
    # Found by a new user: a reply refused downstream was logged "the dead letter has the
    # details", and the one-off run ended with them: nothing showed them, exit 0.
    (tmp_path / "newuser_send_start_handlers.py").write_text(
        "async def forward(spore, ctx):\n    return {'tags': {'a set'}}\n"
        "async def take(spore, ctx):\n    return None\n")
    organism = tmp_path / "organism.yaml"
    organism.write_text("organism: {name: oneoff}\nagents:\n"
                        "  a: {handler: newuser_send_start_handlers:forward, emit: {to: b}}\n"
                        "  b: {handler: newuser_send_start_handlers:take}\n")
    code, out, err = invoke("send", str(organism), "--start", "--to", "a", "{}")
    assert code == 0, err  # its own spore was handled
    assert out.strip()  # its id
    assert "1 dead letter, kept by this run only" in err
    assert "(the dead letter has the details)" in err  # the log line, and then they are:
    assert "a  invalid  SporeError: knowledge.tags holds a set, which is not JSON" in err


def test_send_takes_a_priority_and_an_expiry() -> None:
    # Found by a new user: README gives send both; the command line had neither.
    code, out, err = invoke("send", str(SMALL), "--start", "--to", "picky", "--priority",
                            "9", "--expires-in", "30s", '{"n": 4}')
    assert code == 0, err
    reply = json.loads(out.strip().splitlines()[0])
    assert reply["priority"] == 9  # a reply takes its parent's priority
    code, _, err = invoke("send", str(SMALL), "--start", "--to", "picky", "--priority",
                          "11", '{"n": 4}')
    assert code == 2
    assert "'--priority': 11 is not in the range 1<=x<=10" in err
    # Found by review: with --request the expiry was ignored unsaid (its timeout is it).
    code, _, err = invoke("send", str(SMALL), "--start", "--to", "squarer", "--request",
                          "--expires-in", "5s", '{"n": 4}')
    assert code == 1
    assert "a request expires with its timeout" in err


def test_send_request_prints_the_response() -> None:
    code, out, _ = invoke("send", str(SMALL), "--start", "--to", "squarer", "--request",
                          '{"n": 5}')
    assert code == 0
    responses = [json.loads(line) for line in out.strip().splitlines()]
    assert responses[0]["knowledge"] == {"square": 25}
    assert responses[0]["spore_type"] == "response"


@pytest.mark.parametrize(("args", "message"), [
    (("--to", "picky", "not json"), "SporeError: KNOWLEDGE is not JSON"),
    (("--to", "pickie", "{}"), "refused: unknown agent: DeliveryError: no agent 'pickie' in "
                               "organism 'small' (did you mean 'picky'?)"),
    (("--to", "picky", '{"n": 3}'), "dead letter (agent 'picky'): handler failed: "
                                    "ValueError: 3 is a multiple of three"),
])
def test_send_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    code, _, err = invoke("send", str(SMALL), "--start", *args)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith(message)  # after the run's own log lines


def test_knowledge_comes_from_standard_input_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a new user: no way to send knowledge from a file or standard input (past
    # some 128 KiB: "Argument list too long"), and NaN passed here to fail the endpoint.
    (tmp_path / "k.json").write_text('{"n": 3}')
    for args, given in ((["-"], '{"n": 3}'), ([f"@{tmp_path / 'k.json'}"], None)):
        result = CliRunner().invoke(cli, ["send", str(SMALL), "--start", "--to", "picky",
                                          *args], input=given)
        assert result.exit_code == 1, result.stderr  # picky fails on multiples of three
        assert "ValueError: 3 is a multiple of three" in result.stderr
    # Found in review: @FILE alone, its name ending in .yaml, was taken for the ORGANISM.
    (tmp_path / "k.yaml").write_text('{"n": 3}')
    monkeypatch.chdir(tmp_path)  # no ./organism.yaml: the default ORGANISM is missing
    result = CliRunner().invoke(cli, ["send", "--start", "--to", "picky", "@k.yaml"])
    assert "give KNOWLEDGE (JSON) or --xml ELEMENT" not in result.stderr
    assert "organism.yaml:1:1: <root>: cannot read the file" in result.stderr  # the default
    code, _, err = invoke("send", str(SMALL), "--start", "--to", "picky", '{"n": NaN}')
    assert code == 1
    assert "KNOWLEDGE is not JSON: NaN is no JSON number" in err
    code, _, err = invoke("send", str(SMALL), "--start", "--to", "picky", "@nowhere.json")
    assert code == 1
    # Found by a new user: "is not JSON ...; fix the JSON in the file" for no file at all.
    assert err.startswith("SporeError: cannot read KNOWLEDGE from 'nowhere.json': ")
    assert err.rstrip().endswith("; check the path after @")
    # Found by a new user: a file that is no JSON was not named, and the hint said to
    # give @FILE, which was what had been given.
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    code, _, err = invoke("send", str(SMALL), "--start", "--to", "picky", "@bad.json")
    assert code == 1
    assert err.startswith("SporeError: KNOWLEDGE is not JSON: bad.json: Expecting property")
    assert err.rstrip().endswith("; fix the JSON in the file")


def test_send_of_knowledge_nested_past_the_recursion_limit_is_a_usage_error(
        tmp_path: Path) -> None:
    # Before: json.loads raised RecursionError, which escaped as a raw traceback.
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for given, named in ((f"@{deep}", f"{deep}: "), ("[" * 100_000 + "]" * 100_000, "")):
        code, _, err = invoke("send", str(SMALL), "--start", "--to", "picky", given)
        assert code == 1
        assert err.startswith(f"SporeError: KNOWLEDGE is not JSON: {named}nested too deep "
                              f"to read"), err


def test_a_request_to_a_channel_is_a_usage_error() -> None:
    # Before: the running organism answered 500 Internal Server Error.
    code, _, err = invoke("send", str(SMALL), "--channel", "main", "--request", "{}")
    assert code == 2
    assert "--request goes to one agent: give --to AGENT" in err


def test_schema_prints_json_schema() -> None:
    code, out, _ = invoke("schema")
    assert code == 0
    assert json.loads(out)["title"] == "sporeflow organism"


def test_run_until_idle_on_the_small_organism(tmp_path: Path) -> None:
    organism = tmp_path / "organism.yaml"
    organism.write_text(SMALL.read_text().replace("ear1: {", "ear1: {boot: {text: x}, "))
    (tmp_path / "small_handlers.py").write_text((SMALL.parent / "small_handlers.py").read_text())
    code, _, err = invoke("run", str(organism), "--until-idle")
    assert code == 0, err
    assert "1 spore handled" in err
    assert "0 dead letters" in err


def test_check_without_an_argument_checks_organism_yaml_here(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    (tmp_path / "organism.yaml").write_text("organism: {name: here}\nagents: {}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code == 0, result.output
    assert "organism.yaml: ok: organism 'here'" in result.output


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"sporeflow, version {version('sporeflow')}"


@pytest.fixture
def small_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The small organism copied to a folder that is the working directory."""
    for name in ("organism.yaml", "small_handlers.py"):
        (tmp_path / name).write_text((SMALL.parent / name).read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_send_without_an_organism_sends_to_organism_yaml_here(small_here: Path) -> None:
    code, out, err = invoke("send", "--start", "--to", "picky", '{"n": 4}')
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["knowledge"] == {"n": 4}


def test_send_with_an_organism_and_no_knowledge_asks_for_the_knowledge() -> None:
    code, _, err = invoke("send", str(SMALL), "--to", "picky")
    assert code == 2
    assert "give KNOWLEDGE (JSON) or --xml ELEMENT, exactly one" in err


def test_send_of_a_json_file_alone_says_it_was_read_as_the_organism(small_here: Path) -> None:
    # Found by a new user: `send --to ingest order.json` said only "give KNOWLEDGE (JSON)
    # or --xml ELEMENT, exactly one": the file had been taken for the ORGANISM.
    (small_here / "order.json").write_text('{"n": 4}')
    code, _, err = invoke("send", "--to", "picky", "order.json")
    assert code == 2
    assert ("no KNOWLEDGE given: 'order.json' was read as the ORGANISM file, as it names a "
            "file, but it is no organism: it holds JSON with no 'agents' mapping; to send the "
            "JSON in a file as the KNOWLEDGE, write @order.json") in err


def test_send_with_a_file_first_that_is_no_organism_says_so(small_here: Path) -> None:
    # Before: "NotRunning: no organism running for order.json; start it with ...".
    (small_here / "order.json").write_text('{"n": 4}')
    (small_here / "notes.txt").write_text("hello: [")
    code, _, err = invoke("send", "--start", "order.json", "--to", "picky", "{}")
    assert code == 2
    assert ("'order.json' was read as the ORGANISM file, as the first of two arguments, but "
            "it is no organism: it holds JSON with no 'agents' mapping") in err
    code, _, err = invoke("send", "notes.txt", "--to", "picky", "{}")
    assert code == 2
    assert "'notes.txt' was read as the ORGANISM file" in err
    assert "it does not parse as YAML" in err
    code, _, err = invoke("send", "nowhere/organism", "--to", "picky", "{}")
    assert code == 1  # a file that is not there is no file here, as before
    assert err.startswith("NotRunning: no organism file nowhere/organism in ")


def test_send_of_knowledge_naming_a_file_suggests_at_file(small_here: Path) -> None:
    (small_here / "order.json").write_text('{"n": 4}')
    code, _, err = invoke("send", "--start", "organism.yaml", "--to", "picky", "order.json")
    assert code == 1
    assert err.strip().endswith("'order.json' names a file: write @order.json to send the "
                                "JSON in it")


def test_send_here_with_knowledge_that_is_not_json_says_so(small_here: Path) -> None:
    code, _, err = invoke("send", "--start", "--to", "picky", "hello")
    assert code == 1
    assert err.startswith("SporeError: KNOWLEDGE is not JSON")


def test_send_timeout_takes_a_duration() -> None:
    code, out, err = invoke("send", str(SMALL), "--start", "--timeout", "5s", "--to", "picky",
                            '{"n": 4}')
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["knowledge"] == {"n": 4}


def test_a_word_in_the_organisms_place_that_is_no_file_is_a_usage_error(
        small_here: Path) -> None:
    # Found by a new user: `--timeout 5 sec '{...}'` said "NotRunning: no organism file
    # sec": 'sec' had been read as the ORGANISM, and the usage mistake shown as another.
    code, _, err = invoke("send", "--to", "picky", "--timeout", "5", "sec", '{"n": 4}')
    assert code == 2
    assert err.splitlines()[-1] == (
        f"Error: Got unexpected extra argument (sec): it is in the ORGANISM's place, but no "
        f"file 'sec' is in {small_here}; a duration is one word, its unit attached: 5s, 250ms")
    code, _, err = invoke("send", "--to", "picky", "extra", "--xml", "<a/>")
    assert code == 2
    assert "Got unexpected extra argument (extra)" in err
    assert "give the organism file first, or none for ./organism.yaml" in err


def test_check_where_there_is_no_organism_yaml_says_how_to_make_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke("check")
    assert code == 1
    assert err.strip().endswith("organism.yaml:1:1: <root>: cannot read the file: No such file "
                                "or directory; create one with `sporeflow init`, or name the "
                                "organism file")


def test_check_counts_in_words_singular_and_plural(tmp_path: Path) -> None:
    organism = tmp_path / "organism.yaml"
    organism.write_text("organism: {name: one}\nchannels: {news: {}}\nagents:\n"
                        "  a: {handler: operator:eq, retry: {attempts: 2, backoff: 100}}\n")
    code, out, _ = invoke("check", str(organism))
    assert code == 0
    assert out.strip().endswith("organism 'one', 1 agent, 1 channel, 1 warning")


def test_run_with_agents_naming_none_is_a_usage_error() -> None:
    # Found by a new user: --agents "" started a process hosting nothing (a reply queue
    # and no consumer) without a word.
    code, _, err = invoke("run", str(SMALL), "--agents", " , ", "--until-idle")
    assert code == 2
    assert "Invalid value for --agents: it names no agent" in err


def test_run_until_idle_with_a_failed_source_exits_1_naming_it_without_a_traceback(
        tmp_path: Path, handler_modules: Any) -> None:
    # Found by a new user: a lines source with a misspelt path failed, the log printed a
    # whole traceback, and `run --until-idle` said 0 handled and exited 0.
    module = handler_modules("async def sink(spore, ctx):\n    return None\n")
    organism = tmp_path / "organism.yaml"
    organism.write_text(f"agents:\n  sink: {{handler: {module}:sink}}\nsources:\n"
                        f"  events: {{kind: lines, path: evnets.jsonl, to: sink}}\n")
    result = subprocess.run([sys.executable, "-m", "sporeflow.pipeline.cli", "run",
                             str(organism), "--until-idle"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        "source 'events' failed: FileNotFoundError: ")
    assert "Traceback" not in result.stderr


def test_a_handlers_python_warnings_are_logged_by_the_cli(tmp_path: Path) -> None:
    # Found by a new user: logging.captureWarnings sent warnings to the "py.warnings"
    # logger, which had no handler but the NullHandler captureWarnings gives it: a
    # forgotten await ("coroutine ... was never awaited") vanished under the CLI.
    (tmp_path / "warner.py").write_text(
        "import asyncio, warnings\n"
        "async def nap(spore, ctx):\n"
        "    asyncio.sleep(0)\n"
        "    warnings.warn('mind this', UserWarning)\n")
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: warned}\nagents:\n  napper: {handler: warner:nap}\n")
    done = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "send", "--start", "--to", "napper",
         "{}"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "UserWarning: mind this" in done.stderr
    assert "coroutine 'sleep' was never awaited" in done.stderr


def test_a_run_without_a_journal_prints_its_dead_letters_at_its_end(tmp_path: Path) -> None:
    # Found by a new user: the log said "the dead letter has the details" and the process
    # ended, taking them along: only "invalid: 1" was left, not the line's FILE:N.
    (tmp_path / "lines.jsonl").write_text('{"n": 1}\n[1, 2]\n')
    (tmp_path / "sinks.py").write_text("async def sink(spore, ctx):\n    return None\n")
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: lined}\n"
        "sources:\n  feed: {kind: lines, path: lines.jsonl, json: true, to: sink}\n"
        "agents:\n  sink: {handler: sinks:sink}\n")
    done = subprocess.run([sys.executable, "-m", "sporeflow.pipeline.cli", "run",
                           "--until-idle", "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kept = done.stderr.split("1 dead letter, kept by this run only")[1]
    assert "feed  invalid  SporeError: " in kept
    assert f"{tmp_path / 'lines.jsonl'}:2: " in kept


@pytest.mark.parametrize("command", ["broker-delete", "broker-declare", "broker-permissions"])
def test_the_broker_commands_take_organism_yaml_here_as_every_command_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    # Found by a new user: README says every command reads ./organism.yaml by default;
    # the broker commands answered "Missing argument 'ORGANISM'".
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: here, backend: 'amqp://guest:guest@127.0.0.1:1/'}\n"
        "agents:\n  a: {handler: operator:eq}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [command, "--help"])
    assert "[ORGANISM]" in result.output
    if command == "broker-delete":  # says what it would delete: nothing is reached
        result = CliRunner().invoke(cli, [command])
        assert "would delete exchanges sporeflow.here, " in result.stderr


def test_a_dead_letter_with_a_huge_error_is_printed_shortened() -> None:
    # Found by an attacker: a handler's error of a megabyte was printed whole.
    number = 3 * 10**2000
    code, _, err = invoke("send", str(SMALL), "--start", "--to", "picky", f'{{"n": {number}}}')
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"dead letter (agent 'picky'): handler failed: ValueError: "
                           f"{str(number)[:100]}")
    assert last.endswith(" more characters: `sporeflow dlq show ID` prints it whole)")
    assert len(last) < 1200


def test_send_still_pending_at_its_timeout_exits_124_not_0(tmp_path: Path) -> None:
    # Found by a new user: `sporeflow send --timeout 1s ... && next-step` went on as if
    # the spore had been handled; "pending" is neither done (0) nor failed (1).
    (tmp_path / "cli_pending_slow.py").write_text(
        "import asyncio\n\nasync def slow(spore, ctx):\n    await asyncio.sleep(0.5)\n")
    (tmp_path / "organism.yaml").write_text(
        "organism: {name: slowpoke}\nagents:\n  slow: {handler: cli_pending_slow:slow}\n")
    code, out, err = invoke("send", str(tmp_path / "organism.yaml"), "--start", "--to",
                            "slow", "--timeout", "50ms", "{}")
    assert code == 124, err
    spore_id = out.strip()
    assert f"spore {spore_id}: not handled within 0.05s" in err
