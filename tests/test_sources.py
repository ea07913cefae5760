"""Declared sources (``sources:``): timers, lines of a file or stdin, new files in a folder.

Each feeds its agent or channel through the organism's public API, waits for admission
before reading more, stops cleanly with the organism, and fails alone. The HTTP kind is
tested in ``test_http_ingress.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import ORGANISM_SCHEMA, ConfigError, organism_from_dict
from sporeflow.config.loader import organism_from_text
from sporeflow.config.sources import FolderSource, HttpSource, LinesSource, TimerSource
from sporeflow.pipeline import Organism, Spore

from .conftest import VirtualClockLoop

BACKSTOP = 10.0  # seconds a condition may take before the test fails


async def until(condition: Callable[[], bool], what: str, *,
                backstop: float = BACKSTOP, every: float = 0.005) -> None:
    """Wait for ``condition``, looking again ``every`` seconds (on a virtual clock, both
    are virtual seconds: give the backstop room for the intervals waited)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + backstop
    while True:
        if condition():
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {backstop}s: {what}")
        await asyncio.sleep(every)


def collector() -> tuple[list[Spore], Callable[[Spore, Any], Any]]:
    got: list[Spore] = []

    async def take(spore: Spore, ctx: Any) -> None:
        got.append(spore)

    return got, take


def source_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("sporeflow source")]


# -- the declaration --------------------------------------------------------------------


def load(tmp_path: Path, handler_modules: Callable[..., str], sources: str,
         channels: str = "events: {}") -> Any:
    module = handler_modules("async def take(spore, ctx):\n    return None\n")
    text = (f"organism: {{name: fed}}\nchannels:\n  {channels}\nagents:\n"
            f"  reader: {{handler: {module}:take, subscribe: [events]}}\nsources:\n"
            + textwrap.indent(textwrap.dedent(sources), "  "))
    (tmp_path / "organism.yaml").write_text(text)
    return organism_from_text(text, base_dir=tmp_path, name="organism.yaml")


def problems(tmp_path: Path, handler_modules: Callable[..., str], sources: str,
             channels: str = "events: {}") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, handler_modules, sources, channels)
    return [str(problem) for problem in caught.value.problems]


def test_each_kind_loads_into_a_frozen_spec(tmp_path: Path, handler_modules: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FED_TOKEN", "t0ken-of-the-api")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "log.jsonl").write_text("")
    spec = load(tmp_path, handler_modules, """\
        api: {kind: http, port: 8080, token_env: FED_TOKEN, to: reader, admission_wait: 250ms}
        tick: {kind: timer, every: 2m, knowledge: {job: sweep}, count: 3, channel: events}
        log: {kind: lines, path: log.jsonl, json: true, follow: true, to: reader}
        stdin: {kind: lines, path: "-", to: reader}
        box: {kind: folder, path: inbox, pattern: "*.pdf", existing: true, to: reader}
        """)
    api, tick, log, stdin, box = (spec.sources[n] for n in ("api", "tick", "log", "stdin", "box"))
    assert isinstance(api, HttpSource)
    assert (api.host, api.port, api.admission_wait, api.request_timeout) == (
        "127.0.0.1", 8080, 0.25, 30.0)
    # The token is read at the source's start (test_http_ingress.py), not at load.
    assert (api.token, api.token_env) == (None, "FED_TOKEN")
    assert "t0ken" not in repr(spec)
    assert isinstance(tick, TimerSource)
    assert (tick.every, tick.count, tick.channel) == (120.0, 3, "events")
    assert dict(tick.knowledge) == {"job": "sweep"}
    assert isinstance(log, LinesSource)
    assert (log.path, log.json, log.follow, log.start_at) == (
        tmp_path / "log.jsonl", True, True, "end")
    assert isinstance(stdin, LinesSource)
    assert (stdin.path, stdin.follow, stdin.start_at) == (None, False, "beginning")
    assert isinstance(box, FolderSource)
    assert box.path == tmp_path / "inbox"
    assert (box.pattern, box.existing, box.poll) == ("*.pdf", True, 1.0)
    with pytest.raises(AttributeError):
        tick.every = 1.0  # type: ignore[misc]
    assert "sources" in ORGANISM_SCHEMA["properties"]


def test_a_target_is_checked_like_any_reference(tmp_path: Path, handler_modules: Any) -> None:
    found = problems(tmp_path, handler_modules, """\
        tick: {kind: timer, every: 1s, to: redaer}
        log: {kind: lines, path: "-", channel: evnts}
        box: {kind: folder, path: ., to: reader, channel: events}
        nowhere: {kind: timer, every: 1s}
        """)
    assert found == [
        "organism.yaml:7:38: sources.tick.to: unknown agent 'redaer' (did you mean 'reader'?)",
        "organism.yaml:8:42: sources.log.channel: unknown channel 'evnts' (did you mean "
        "'events'?); declare it under channels:",
        "organism.yaml:9:8: sources.box: give exactly one of 'to' (an agent) or 'channel' "
        "as the source's target",
        "organism.yaml:10:12: sources.nowhere: give exactly one of 'to' (an agent) or "
        "'channel' as the source's target",
    ]


def test_shapes_and_rules_of_each_kind_are_located(tmp_path: Path, handler_modules: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FED_UNSET", raising=False)
    found = problems(tmp_path, handler_modules, """\
        a: {kind: htp, to: reader}
        b: {kind: timer, evry: 1s, to: reader}
        c: {kind: timer, every: 0, to: reader}
        d: {kind: http, port: 80}
        e: {kind: http, port: 80, insecure: true, host: 0.0.0.0}
        f: {kind: http, port: 80, token_env: FED_UNSET}
        reader: {kind: timer, every: 1s, to: reader}
        g: {kind: folder, path: ., pattern: "sub/*.txt", to: reader}
        h: {kind: timer, every: 1s, channel: locked}
        i: {kind: lines, path: "-", start_at: end, to: reader}
        j: {kind: lines, path: x.log, start_at: middle, to: reader}
        """, channels="events: {}\n  locked: {publish: [reader]}")
    assert found == [
        "organism.yaml:8:13: sources.a.kind: 'htp': is not a kind of source; write one of "
        "http, timer, lines, folder",
        "organism.yaml:9:6: sources.b: 'every' is a required property; add it",
        "organism.yaml:9:20: sources.b.evry: unknown key 'evry' (did you mean 'every'?); "
        "the keys here are kind, description, to, channel, every, knowledge, count",
        "organism.yaml:10:27: sources.c.every: every must be more than 0; write a duration "
        "like 250ms or 5s",
        "organism.yaml:11:6: sources.d: an http source needs token_env: the environment "
        "variable holding the bearer token its callers send; or, on a loopback host only, "
        "insecure: true to serve without one",
        "organism.yaml:12:39: sources.e.insecure: insecure: true serves without a token, so "
        "only on a loopback host (127.0.0.1, ::1, localhost), not on '0.0.0.0'; set "
        "token_env to listen there",
        "organism.yaml:14:3: sources.reader: source 'reader' has the name of an agent: the "
        "replies to its spores would go to that agent; rename the source",
        "organism.yaml:15:39: sources.g.pattern: pattern 'sub/*.txt' matches file names in "
        "the folder, not paths; remove the separator",
        "organism.yaml:16:40: sources.h.channel: channel 'locked' takes broadcasts from its "
        "publish list ['reader'] only, which names agents; target an agent that broadcasts "
        "there, or drop the publish list",
        "organism.yaml:17:41: sources.i.start_at: standard input is read from its start, "
        "whatever start_at says; remove start_at or read a file",
        "organism.yaml:18:43: sources.j.start_at: 'middle': is not a place to start; write "
        "beginning or end",
        # Read at the source's start: loading (check, graph, tests) only warns.
        "organism.yaml:13:40: sources.f.token_env: warning: environment variable "
        "'FED_UNSET' is not set (or empty) now; the source fails at start unless it holds "
        "the token then",
    ]


def test_an_insecure_loopback_http_source_needs_no_token(tmp_path: Path,
                                                        handler_modules: Any) -> None:
    spec = load(tmp_path, handler_modules, "api: {kind: http, port: 0, insecure: true}\n")
    assert spec.sources["api"].token is None


# -- timer ----------------------------------------------------------------------------------


def test_a_timer_feeds_its_agent_every_interval(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> list[Spore]:
        got, take = collector()
        organism = Organism(organism_from_dict({
            "agents": {"sweeper": {"handler": take}},
            "sources": {"tick": {"kind": "timer", "every": "30s", "count": 3,
                                 "knowledge": {"job": "sweep"}, "to": "sweeper"}}}),
            now=loop.wall)
        async with organism.running():
            await until(lambda: organism.stats()["sources"]["tick"]["state"] == "done",
                        "the timer sent its count", backstop=3600, every=1.0)
            await organism.idle()
            assert organism.stats()["sources"]["tick"]["sent"] == 3
        return got

    got = virtual(main)
    assert [s.knowledge for s in got] == [
        {"job": "sweep", "tick": n, "at": f"2026-01-01T00:{30 * n // 60:02d}:{30 * n % 60:02d}"
                                          f"+00:00"} for n in (1, 2, 3)]
    assert {s.from_agent for s in got} == {"tick"}


def test_a_source_broadcasts_on_its_channel_to_every_subscriber(virtual: Any) -> None:
    async def main(loop: VirtualClockLoop) -> tuple[list[Spore], list[Spore]]:
        first, take_first = collector()
        second, take_second = collector()
        organism = Organism(organism_from_dict({
            "channels": {"news": {}},
            "agents": {"a": {"handler": take_first, "subscribe": ["news"]},
                       "b": {"handler": take_second, "subscribe": ["news"]}},
            "sources": {"tick": {"kind": "timer", "every": "1s", "count": 2,
                                 "channel": "news"}}}), now=loop.wall)
        async with organism.running():
            await until(lambda: len(first) + len(second) == 4, "two ticks to both",
                        backstop=3600, every=1.0)
        return first, second

    first, second = virtual(main)
    assert [s.knowledge["tick"] for s in first] == [s.knowledge["tick"] for s in second] == [1, 2]
    assert {(s.spore_type, s.channel, s.to_agent) for s in first} == {("broadcast", "news", None)}


def test_a_timer_skips_ticks_while_the_organism_is_full(virtual: Any) -> None:
    """The slow agent holds one spore, the organism admits one: ticks are not queued up
    behind it, they are skipped, and the timer sends one more once there is room."""

    async def main(loop: VirtualClockLoop) -> None:
        release = asyncio.Event()
        handled: list[int] = []

        async def slow(spore: Spore, ctx: Any) -> None:
            await release.wait()
            handled.append(spore.knowledge["tick"])

        organism = Organism(organism_from_dict({
            "agents": {"slow": {"handler": slow}},
            "limits": {"max_in_flight": 1},
            "sources": {"tick": {"kind": "timer", "every": "1s", "to": "slow"}}}),
            now=loop.wall)
        async with organism.running():
            await asyncio.sleep(60)  # a virtual minute: 60 ticks fall due
            stats = organism.stats()["sources"]["tick"]
            assert stats["sent"] == 1  # the second waits for admission; no others read
            release.set()
            await until(lambda: len(handled) >= 2, "the waiting tick is handled",
                        backstop=3600, every=1.0)
            stats = organism.stats()["sources"]["tick"]
            assert stats["skipped"] >= 55
            assert stats["sent"] <= 3
        assert handled[:2] == [1, 2]

    virtual(main)


# -- lines ------------------------------------------------------------------------------------


async def run_lines(tmp_path: Path, text: str, **settings: Any) -> tuple[list[Spore], Organism]:
    (tmp_path / "in.txt").write_text(text)
    got, take = collector()
    organism = Organism.from_dict({
        "channels": {"events": {}},
        "agents": {"reader": {"handler": take, "subscribe": ["events"]}},
        "sources": {"log": {"kind": "lines", "path": "in.txt", "to": "reader", **settings}},
        "limits": {"max_spore_bytes": 1024}}, base_dir=tmp_path)
    async with organism.running():
        await until(lambda: organism.stats()["sources"]["log"]["state"] == "done",
                    "the file was read to its end")
        await organism.idle()
    return got, organism


async def test_a_named_pipe_is_read_once_a_writer_opens_it_and_never_holds_the_start(
        tmp_path: Path) -> None:
    # Opening a FIFO blocks until a writer opens it: at start (on a thread of the loop's
    # executor), the organism never started, and the process could not exit.
    fifo = tmp_path / "in.pipe"
    os.mkfifo(fifo)
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"pipe": {"kind": "lines", "path": "in.pipe", "to": "reader"}}},
        base_dir=tmp_path)
    await asyncio.wait_for(organism.start(), 10)  # backstop: it hung for ever
    try:
        def write() -> None:
            with open(fifo, "w") as writer:
                writer.write("one\ntwo\n")

        await asyncio.to_thread(write)
        await until(lambda: len(got) == 2, "the lines written to the pipe")
    finally:
        await organism.stop()
    assert [s.knowledge for s in got] == [{"line": "one", "number": 1},
                                          {"line": "two", "number": 2}]


async def test_a_named_pipe_nobody_writes_to_lets_the_organism_stop(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "in.pipe")
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": lambda spore, ctx: None}},
        "sources": {"pipe": {"kind": "lines", "path": "in.pipe", "to": "reader"}}},
        base_dir=tmp_path)
    await asyncio.wait_for(organism.start(), 10)
    await asyncio.wait_for(organism.stop(), 10)
    assert organism.stats()["sources"]["pipe"]["state"] == "stopped"
    # Its reader's thread, which waited for a writer, is let go too (not left for ever).
    await until(lambda: not [t for t in threading.enumerate()
                             if t.name.startswith("sporeflow lines")], "the reader ended")


async def test_each_line_is_a_spore_with_its_number(tmp_path: Path) -> None:
    got, organism = await run_lines(tmp_path, "first\r\n\nthird\nlast, without newline")
    assert [s.knowledge for s in got] == [
        {"line": "first", "number": 1}, {"line": "", "number": 2},
        {"line": "third", "number": 3}, {"line": "last, without newline", "number": 4}]
    assert organism.stats()["sources"]["log"]["sent"] == 4


async def test_a_bad_json_line_is_a_dead_letter_with_its_number(tmp_path: Path) -> None:
    got, organism = await run_lines(tmp_path, '{"n": 1}\nnot json\n\n[2]\n{"n": 5}\n',
                                    json=True)
    assert [s.knowledge for s in got] == [{"n": 1}, {"n": 5}]
    letters = list(organism.dead_letters)
    assert [(str(letter.reason), letter.spore.knowledge) for letter in letters] == [
        ("invalid", {"line": "not json", "number": 2}),
        ("invalid", {"line": "[2]", "number": 4})]
    assert f"{tmp_path / 'in.txt'}:2: the line is not JSON" in letters[0].error
    assert "in.txt:4: the line is a JSON list, not an object" in letters[1].error
    stats = organism.stats()["sources"]["log"]
    assert (stats["state"], stats["sent"], stats["refused"], stats["bad_lines"]) == (
        "done", 2, 2, 2)


async def test_a_line_longer_than_a_spore_may_be_is_a_dead_letter(tmp_path: Path) -> None:
    got, organism = await run_lines(tmp_path, f"short\n{'x' * 5000}\nafter\n")
    assert [s.knowledge["line"] for s in got] == ["short", "after"]
    (letter,) = organism.dead_letters
    assert (letter.reason, letter.spore.knowledge["number"]) == ("limit exceeded", 2)
    assert "longer than limits.max_spore_bytes (1024 bytes)" in letter.error


def following(folder: Path, take: Any) -> Organism:
    """An organism whose source follows ``folder/grow.log`` from its start, to ``take``."""
    return Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"log": {"kind": "lines", "path": "grow.log", "follow": True,
                            "start_at": "beginning", "poll": "10ms", "to": "reader"}}},
        base_dir=folder)


async def test_following_a_file_sends_the_lines_appended(tmp_path: Path) -> None:
    path = tmp_path / "grow.log"
    path.write_text("one\n")
    got, take = collector()
    organism = following(tmp_path, take)
    async with organism.running():
        await until(lambda: len(got) == 1, "the first line")
        with path.open("a") as file:
            file.write("two\nthr")  # a line's start: it waits for the rest
            file.flush()
            await until(lambda: len(got) == 2, "the line appended")
            file.write("ee\n")
        await until(lambda: len(got) == 3, "the line completed")
        assert organism.stats()["sources"]["log"]["state"] == "running"
    assert [s.knowledge["line"] for s in got] == ["one", "two", "three"]
    assert organism.stats()["sources"]["log"]["state"] == "stopped"


async def test_a_truncated_file_is_read_again_counting_its_lines_from_one(
        tmp_path: Path) -> None:
    path = tmp_path / "grow.log"
    path.write_text("one\ntwo\n")
    got, take = collector()
    organism = following(tmp_path, take)
    async with organism.running():
        await until(lambda: len(got) == 2, "the lines there")
        path.write_text("x\n")  # rewritten, shorter
        await until(lambda: len(got) == 3, "the line of the new file")
    assert [s.knowledge for s in got] == [
        {"line": "one", "number": 1}, {"line": "two", "number": 2},
        {"line": "x", "number": 1}]


class CountedInput(io.BytesIO):
    """Standard input's stand-in: counts the lines read from it."""

    reads = 0

    def readline(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().readline(size)


async def test_lines_from_stdin_are_read_only_as_fast_as_they_are_admitted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = CountedInput(b"".join(b"%d\n" % n for n in range(1, 41)))
    monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": stdin})())
    release = asyncio.Event()
    read_when_handled: list[tuple[int, int]] = []

    async def slow(spore: Spore, ctx: Any) -> None:
        await release.wait()
        read_when_handled.append((spore.knowledge["number"], stdin.reads))

    organism = Organism.from_dict({
        "agents": {"slow": {"handler": slow}},
        "limits": {"max_in_flight": 2},
        "sources": {"input": {"kind": "lines", "path": "-", "to": "slow"}}})
    async with organism.running():
        await until(lambda: organism.stats()["sources"]["input"]["sent"] == 2,
                    "two lines admitted")
        await until(lambda: stdin.reads == 3, "the third line waits for room")
        release.set()
        await until(lambda: organism.stats()["sources"]["input"]["state"] == "done",
                    "stdin read to its end")
        await organism.idle()
    assert [number for number, _ in read_when_handled] == list(range(1, 41))
    # When line n is handled, at most the lines admitted (2 held) and one waiting were read.
    assert all(reads <= number + 3 for number, reads in read_when_handled), read_when_handled


# -- folder -------------------------------------------------------------------------------


async def test_new_files_in_a_folder_are_sent_once_they_hold_still(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.pdf").write_bytes(b"old")
    (inbox / "ignored.txt").write_bytes(b"not matched")
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"box": {"kind": "folder", "path": "inbox", "pattern": "*.pdf",
                            "poll": "10ms", "to": "reader"}}}, base_dir=tmp_path)
    async with organism.running():
        (inbox / "new.pdf").write_bytes(b"12345")
        (inbox / "other.txt").write_bytes(b"x")
        await until(lambda: len(got) == 1, "the new file")
        (inbox / "new.pdf").unlink()
        listings = organism.stats()["sources"]["box"]["listings"]
        await until(lambda: organism.stats()["sources"]["box"]["listings"] >= listings + 2,
                    "a listing without it")
        (inbox / "new.pdf").write_bytes(b"12345")  # made again after it went: new again
        await until(lambda: len(got) == 2, "the file made again")
    assert [s.knowledge for s in got] == [
        {"path": str(inbox / "new.pdf"), "name": "new.pdf", "size": 5}] * 2


async def test_existing_files_are_sent_at_start_when_asked(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"box": {"kind": "folder", "path": ".", "existing": True,
                            "pattern": "*.txt", "to": "reader"}}}, base_dir=tmp_path)
    async with organism.running():
        await until(lambda: len(got) == 2, "both files")
    assert sorted(s.knowledge["name"] for s in got) == ["a.txt", "b.txt"]


def folder_organism(tmp_path: Path, take: Any) -> Organism:
    return Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"box": {"kind": "folder", "path": "inbox", "poll": "10ms",
                            "to": "reader"}}}, base_dir=tmp_path)


async def test_a_symbolic_link_in_the_folder_is_skipped_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A link may point anywhere (/etc/passwd): whoever may drop files in the inbox would
    # have the handler read what it names.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the inbox")
    got, take = collector()
    organism = folder_organism(tmp_path, take)
    async with organism.running():
        (inbox / "link.txt").symlink_to(secret)
        (inbox / "real.txt").write_text("a file")
        await until(lambda: len(got) == 1, "the real file")
        listings = organism.stats()["sources"]["box"]["listings"]
        await until(lambda: organism.stats()["sources"]["box"]["listings"] >= listings + 3,
                    "more listings with the link still there")
    assert [s.knowledge["name"] for s in got] == ["real.txt"]
    said = [r.getMessage() for r in caplog.records if "link.txt" in r.getMessage()]
    assert len(said) == 1
    assert "symbolic link" in said[0]


async def test_a_folder_gone_and_made_again_is_listed_again(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    got, take = collector()
    organism = folder_organism(tmp_path, take)
    async with organism.running():
        (inbox / "a.txt").write_text("a")
        await until(lambda: len(got) == 1, "the first file")
        inbox.rename(tmp_path / "inbox.old")  # as a rotation or a clean-up script does
        listings = organism.stats()["sources"]["box"]["listings"]
        await until(lambda: organism.stats()["sources"]["box"]["listings"] >= listings + 2,
                    "listings of the missing folder")
        inbox.mkdir()
        (inbox / "b.txt").write_text("b")
        await until(lambda: len(got) == 2, "the file in the folder made again")
        assert organism.stats()["sources"]["box"]["state"] == "running"
    assert [s.knowledge["name"] for s in got] == ["a.txt", "b.txt"]


# -- stopping, failing ------------------------------------------------------------------------


async def test_a_stop_leaves_no_source_running_and_nothing_half_sent(tmp_path: Path) -> None:
    (tmp_path / "many.txt").write_text("".join(f"{n}\n" for n in range(10_000)))
    release = threading.Event()
    handled: list[str] = []

    def slow(spore: Spore, ctx: Any) -> None:  # a sync handler: on a thread of its own
        release.wait(BACKSTOP)
        handled.append(spore.from_agent)

    organism = Organism.from_dict({
        "agents": {"slow": {"handler": slow}},
        "limits": {"max_in_flight": 3},
        "sources": {"lines": {"kind": "lines", "path": "many.txt", "to": "slow"},
                    "tick": {"kind": "timer", "every": "1ms", "to": "slow"}}},
        base_dir=tmp_path)
    await organism.start()
    await until(lambda: organism.stats()["totals"]["held"] == 3, "the organism is full")
    assert len(source_tasks()) == 2  # both wait for admission now
    stopping = asyncio.create_task(organism.stop(drain_timeout=BACKSTOP))
    await until(lambda: all(s["state"] == "stopped"
                            for s in organism.stats()["sources"].values()),
                "the sources stopped before the drain")
    release.set()
    await stopping
    assert source_tasks() == []
    assert not [t for t in threading.enumerate() if t.name.startswith("sporeflow lines")]
    sent = sum(s["sent"] for s in organism.stats()["sources"].values())
    assert sent == len(handled) == 3  # each admitted spore handled; no other left half sent
    assert list(organism.dead_letters) == []


async def test_a_failing_source_is_logged_and_shown_and_the_organism_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "sources": {"gone": {"kind": "lines", "path": "missing.txt", "to": "reader"},
                    "box": {"kind": "folder", "path": "nofolder", "to": "reader"},
                    "tick": {"kind": "timer", "every": "5ms", "count": 2, "to": "reader"}}},
        base_dir=tmp_path)
    with caplog.at_level(logging.ERROR):
        async with organism.running():
            await until(lambda: len(got) == 2, "the timer still feeds its agent")
            assert organism.state == "running"
    sources = organism.stats()["sources"]
    assert sources["gone"]["state"] == "failed"
    assert sources["gone"]["error"].startswith("FileNotFoundError:")
    assert sources["box"]["state"] == "failed"
    assert "nofolder" in sources["box"]["error"]
    assert sources["tick"]["state"] == "done"
    assert "source 'gone' (lines) failed: FileNotFoundError" in caplog.text


async def test_refused_spores_of_a_source_are_dead_letters(tmp_path: Path) -> None:
    """A spore the organism refuses (too large here) has no caller to tell."""
    got, take = collector()
    organism = Organism.from_dict({
        "agents": {"reader": {"handler": take}},
        "limits": {"max_spore_bytes": 600},
        "sources": {"tick": {"kind": "timer", "every": "1ms", "count": 2, "to": "reader",
                             "knowledge": {"blob": "x" * 520}}}})  # over, in its spore
    async with organism.running():
        await until(lambda: organism.stats()["sources"]["tick"]["state"] == "done", "done")
    assert got == []
    assert [str(letter.reason) for letter in organism.dead_letters] == ["limit exceeded"] * 2
    assert {letter.spore.from_agent for letter in organism.dead_letters} == {"tick"}
    assert json.loads(json.dumps(organism.stats()))["sources"]["tick"]["refused"] == 2


async def test_the_lines_before_the_start_are_counted_a_chunk_at_a_time(
        tmp_path: Path) -> None:
    from sporeflow.pipeline.sources.linereader import ChunkReader

    path = tmp_path / "big.log"
    path.write_bytes(b"x" * 999 + b"\n" + b"y\n" * 1_500_000)  # past one MiB's read
    stream = path.open("rb")
    stream.seek(0, 2)
    reader = ChunkReader(stream, 1024, name="big", owned=True)
    try:
        assert await reader.lines_before() == 1_500_001
        assert await reader.read() == (b"", False)  # the place it reads from is kept
    finally:
        reader.close()
