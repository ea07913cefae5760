"""Declared sources across an organism's life: which end by themselves (``run
--until-idle`` waits for those), where a ``lines`` source starts reading (``start_at``),
and the http token, read when the source starts rather than when the file loads.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import ConfigError, check_organism
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.cli.main import cli
from sporeflow.testing import TestOrganism

from .conftest import VirtualClockLoop
from .test_sources import BACKSTOP, collector, until

TOKEN_ENV = "SPOREFLOW_TEST_LIFECYCLE_TOKEN"


def write_organism(tmp_path: Path, handler_modules: Callable[..., str], sources: str,
                   *, boot: bool = False) -> Path:
    """An organism whose 'reader' counts what it handles; its sources as given."""
    module = handler_modules("async def take(spore, ctx):\n    return None\n")
    booted = ", boot: {}" if boot else ""
    path = tmp_path / "organism.yaml"
    path.write_text(f"organism: {{name: fed}}\nchannels:\n  events: {{}}\nagents:\n"
                    f"  reader: {{handler: {module}:take{booted}}}\n"
                    f"  other: {{handler: {module}:take, subscribe: [events]}}\nsources:\n"
                    + textwrap.indent(textwrap.dedent(sources), "  "))
    return path


def run_until_idle(path: Path, stdin: str = "") -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["run", str(path), "--until-idle"], input=stdin)
    return result.exit_code, result.stderr


# -- run --until-idle waits for the sources that end -------------------------------------


def test_run_until_idle_handles_every_line_of_stdin(tmp_path: Path,
                                                   handler_modules: Any) -> None:
    path = write_organism(tmp_path, handler_modules,
                          'inbox: {kind: lines, path: "-", json: true, to: reader}\n')
    code, err = run_until_idle(path, "".join(f'{{"n": {n}}}\n' for n in range(1, 101)))
    assert code == 0, err
    assert "100 spores handled" in err


def test_run_until_idle_waits_for_a_file_and_a_counted_timer_not_for_endless_sources(
        tmp_path: Path, handler_modules: Any) -> None:
    (tmp_path / "in.txt").write_text("".join(f"line {n}\n" for n in range(1, 51)))
    (tmp_path / "tail.log").write_text("")
    (tmp_path / "box").mkdir()
    path = write_organism(tmp_path, handler_modules, """\
        file: {kind: lines, path: in.txt, to: reader}
        tick: {kind: timer, every: 10ms, count: 3, channel: events}
        tail: {kind: lines, path: tail.log, follow: true, to: reader}
        box: {kind: folder, path: box, to: reader}
        endless: {kind: timer, every: 1h, to: reader}
        """)
    code, err = run_until_idle(path)
    assert code == 0, err
    assert "53 spores handled" in err


async def test_sources_ended_waits_only_for_the_sources_that_end(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    (tmp_path / "box").mkdir()
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"file": {"kind": "lines", "path": "in.txt", "to": "reader"},
                    "box": {"kind": "folder", "path": "box", "to": "reader"}}},
        base_dir=tmp_path)
    await organism.sources.ended()  # before a start: nothing to wait for
    async with organism.running():
        await asyncio.wait_for(organism.sources.ended(), BACKSTOP)
        states = {name: s["state"] for name, s in organism.stats()["sources"].items()}
        assert states == {"file": "done", "box": "running"}
        await organism.idle()
        assert [s.knowledge["line"] for s in got] == ["a", "b"]


def test_idle_alone_does_not_wait_for_a_timer(virtual: Any) -> None:
    """Library users' ``idle()`` keeps its meaning: nothing queued or running now."""

    async def main(loop: VirtualClockLoop) -> list[Spore]:
        got, take = collector()
        organism = Organism.from_dict({
            "agents": {"sweeper": {"handler": take}},
            "sources": {"tick": {"kind": "timer", "every": "1m", "count": 2,
                                 "to": "sweeper"}}})
        async with organism.running():
            await organism.idle()
            assert got == []  # the first tick is a minute away
            await organism.sources.ended()
            await organism.idle()
        return got

    assert [s.knowledge["tick"] for s in virtual(main)] == [1, 2]


# -- start_at ---------------------------------------------------------------------------------


async def follow(tmp_path: Path, appended: str, lines: int, **settings: Any) -> list[Spore]:
    """Start a followed ``grow.log``, append ``appended``, stop once ``lines`` were read."""
    got, _ = await follow_organism(tmp_path, appended, lines, **settings)
    return got


async def follow_organism(tmp_path: Path, appended: str, lines: int,
                          **settings: Any) -> tuple[list[Spore], Organism]:
    """As :func:`follow`, also giving the organism (its dead letters)."""
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"log": {"kind": "lines", "path": "grow.log", "follow": True,
                            "poll": "10ms", "to": "reader", **settings}}}, base_dir=tmp_path)
    async with organism.running():  # the source is open (at its place) once it runs
        with (tmp_path / "grow.log").open("a") as file:
            file.write(appended)
        await until(lambda: organism.stats()["sources"]["log"].get("lines", 0) >= lines,
                    "the lines appended")
        await organism.idle()
    return got, organism


async def test_a_restart_reads_a_followed_file_from_its_end(tmp_path: Path) -> None:
    (tmp_path / "grow.log").write_text("old 1\nold 2\n")
    first = await follow(tmp_path, "new 1\n", 1)
    second = await follow(tmp_path, "new 2\n", 1)  # a restart: nothing handled twice
    # Numbered by their lines in the file, as a dead letter names FILE:N.
    assert [s.knowledge for s in first] == [{"line": "new 1", "number": 3}]
    assert [s.knowledge for s in second] == [{"line": "new 2", "number": 4}]


async def test_a_bad_line_of_a_followed_file_is_named_by_its_line_in_the_file(
        tmp_path: Path) -> None:
    (tmp_path / "grow.log").write_text('{"old": 1}\n{"old": 2}\n')
    got, organism = await follow_organism(tmp_path, '{"new": 3}\nnot json\n', 2, json=True)
    assert [s.knowledge for s in got] == [{"new": 3}]
    [letter] = organism.dead_letters
    assert letter.spore.knowledge == {"line": "not json", "number": 4}
    assert f"{tmp_path / 'grow.log'}:4: the line is not JSON" in letter.error


async def test_starting_at_the_end_skips_the_rest_of_a_line_begun_before(
        tmp_path: Path) -> None:
    (tmp_path / "grow.log").write_text("old\nhalf a li")
    got = await follow(tmp_path, "ne\nnew\n", 1)
    assert [s.knowledge for s in got] == [{"line": "new", "number": 3}]


async def test_start_at_beginning_reads_a_followed_file_again(tmp_path: Path) -> None:
    (tmp_path / "grow.log").write_text("old\n")
    got = await follow(tmp_path, "new\n", 2, start_at="beginning")
    assert [s.knowledge["line"] for s in got] == ["old", "new"]


def test_check_takes_a_named_pipe_for_the_file_a_lines_source_reads(
        tmp_path: Path, handler_modules: Any) -> None:
    # Found by a README check: README says a lines source reads a named pipe, but check
    # (and every load) warned "no file ... (yet); the source fails at start" for one.
    os.mkfifo(tmp_path / "in.pipe")
    path = write_organism(tmp_path, handler_modules,
                          "pipe: {kind: lines, path: in.pipe, to: reader}\n"
                          "gone: {kind: lines, path: missing.log, to: reader}\n")
    _, warnings = check_organism(path)
    assert [w.path for w in warnings] == ["sources.gone.path"]


# -- the http token: read at the source's start -----------------------------------------------


def api_organism(tmp_path: Path, handler_modules: Any) -> Path:
    return write_organism(tmp_path, handler_modules,
                          f"api: {{kind: http, port: 0, token_env: {TOKEN_ENV}, to: reader}}\n")


def test_check_and_graph_only_warn_of_an_unset_token(
        tmp_path: Path, handler_modules: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = api_organism(tmp_path, handler_modules)
    _, warnings = check_organism(path)
    assert [str(w).removeprefix(f"{path}:") for w in warnings] == [
        f"8:41: sources.api.token_env: warning: environment variable "
        f"{TOKEN_ENV!r} is not set (or empty) now; the source fails at start unless it "
        f"holds the token then"]
    for command in ("check", "graph"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code == 0, result.output


async def test_a_test_organism_needs_no_token_it_does_not_serve(
        tmp_path: Path, handler_modules: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    async with TestOrganism(api_organism(tmp_path, handler_modules)) as t:
        await t.send("reader", {"n": 1})
        await t.idle()
        assert len(t.handled("reader")) == 1


async def test_an_unset_token_fails_the_start_naming_the_variable_and_the_source(
        tmp_path: Path, handler_modules: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = api_organism(tmp_path, handler_modules)
    organism = Organism.from_file(path)
    with pytest.raises(ConfigError) as caught:
        await organism.start()
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:8:41: sources.api.token_env: environment variable {TOKEN_ENV!r} is "
        f"not set: set it to the bearer token the http source 'api' asks its callers for; "
        f"it cannot start without it"]
    assert organism.state == "new"  # nothing started: nothing to stop
    # Found by a new user: an empty one read "is empty; put the token in it its callers send"
    monkeypatch.setenv(TOKEN_ENV, " ")
    with pytest.raises(ConfigError) as caught:
        await Organism.from_file(path).start()
    assert str(caught.value.problems[0]).endswith(
        f"environment variable {TOKEN_ENV!r} is empty: set it to the bearer token the http "
        f"source 'api' asks its callers for; it cannot start without it")


async def test_the_token_read_at_start_is_masked_as_a_secret(
        tmp_path: Path, handler_modules: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    organism = Organism.from_file(api_organism(tmp_path, handler_modules))
    monkeypatch.setenv(TOKEN_ENV, "t0ken-set-after-the-load")  # read at start: it counts
    assert organism.masker.mask("t0ken-set-after-the-load") == "t0ken-set-after-the-load"
    async with organism.running():
        assert "api" in organism.sources.addresses()  # it serves, with the token
        assert organism.masker.mask("sent t0ken-set-after-the-load") == "sent ***"


# -- partial hosting: a source runs where its target is hosted ---------------------------


async def test_a_source_runs_only_in_the_processes_hosting_its_target(
        tmp_path: Path, handler_modules: Any) -> None:
    (tmp_path / "in.txt").write_text("".join(f"line {n}\n" for n in range(1, 6)))
    path = write_organism(tmp_path, handler_modules,
                          "jobs: {kind: lines, path: in.txt, to: reader}\n"
                          "news: {kind: lines, path: in.txt, channel: events}\n")
    broker = MemoryBroker()
    readers = Organism.from_file(path, backend=MemoryBackend(broker), hosted=["reader"])
    others = Organism.from_file(path, backend=MemoryBackend(broker), hosted=["other"])
    async with readers.running(), others.running():
        for organism in (readers, others):
            await organism.sources.ended()
            await organism.idle()
        await readers.idle()
        # Each line once, by the process hosting the source's target (not once a process).
        assert readers.stats()["agents"]["reader"]["handled"] == 5
        assert others.stats()["agents"]["other"]["handled"] == 5
        assert readers.stats()["sources"]["news"]["state"] == "not hosted here"
        assert others.stats()["sources"]["jobs"]["state"] == "not hosted here"


async def test_a_followed_file_rotated_away_is_followed_at_its_path_again(
        tmp_path: Path) -> None:
    path = tmp_path / "grow.log"
    path.write_text("one\n")
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"log": {"kind": "lines", "path": "grow.log", "follow": True,
                            "start_at": "beginning", "poll": "10ms", "to": "reader"}}},
        base_dir=tmp_path)
    async with organism.running():
        await until(lambda: len(got) == 1, "the first line")
        path.rename(tmp_path / "grow.log.1")  # logrotate: renamed, a new file made
        with (tmp_path / "grow.log.1").open("a") as old:
            old.write("two\nlast")  # written before its writer reopened; no newline last
        path.write_text("three\n")
        await until(lambda: len(got) == 4, "the lines of the new file")
    assert [s.knowledge for s in got] == [
        {"line": "one", "number": 1}, {"line": "two", "number": 2},
        {"line": "last", "number": 3}, {"line": "three", "number": 1}]
