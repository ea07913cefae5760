"""The live view: rendered to an in-memory terminal, refreshes driven by hand."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sporeflow.pipeline import LiveView, Organism, SporeflowError

from .newsroom import news_agents

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLUMNS = ("received", "handled", "failed", "in flight", "queued", "rate/s", "p50", "p99")


def news_organism() -> Organism:
    return Organism.from_dict({
        "organism": {"name": "news"},
        "channels": {"news": {}},
        "agents": news_agents(),
    })


class Terminal:
    """A fake terminal: what the view wrote since the last look, without escape codes."""

    def __init__(self, width: int = 160) -> None:
        self.file = io.StringIO()
        self.console = Console(file=self.file, force_terminal=True, width=width)
        self.seen = 0

    def frame(self) -> str:
        text = self.file.getvalue()
        new, self.seen = text[self.seen:], len(text)
        return ANSI.sub("", new)


def rows(frame: str) -> dict[str, dict[str, str]]:
    """The table's rows by agent: column name to cell text (no cell holds a space)."""
    table: dict[str, dict[str, str]] = {}
    for line in frame.splitlines():
        cells = line.split()
        if len(cells) == 1 + len(COLUMNS) and cells[0] != "agent":
            table[cells[0]] = dict(zip(COLUMNS, cells[1:], strict=True))
    return table


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_table_lists_every_agent_and_counts_move_between_refreshes() -> None:
    organism, terminal, clock = news_organism(), Terminal(), Clock()
    async with organism.running(), LiveView(organism, console=terminal.console, period=3600,
                                            clock=clock) as view:
        view.refresh()
        before = terminal.frame()
        for n in range(3):
            await organism.send("source", {"n": n})
        for n in range(4):
            await organism.send("flaky", {"n": n})
        await organism.idle()
        clock.now += 2.0
        view.refresh()
        after = terminal.frame()
    first, second = rows(before), rows(after)
    assert set(first) == set(second) == {"source", "reader1", "reader2", "flaky"}
    assert first["source"]["handled"] == "0"
    assert first["source"]["p50"] == "-"
    assert second["source"] | {"p50": "", "p99": ""} == {
        "received": "3", "handled": "3", "failed": "0", "in flight": "0", "queued": "0",
        "rate/s": "2", "p50": "", "p99": ""}  # 3 handled over 2 s of the clock, rounded
    assert second["reader2"]["received"] == "3"
    assert (second["flaky"]["handled"], second["flaky"]["failed"]) == ("2", "2")
    assert re.match(r"[\d.]+$", second["source"]["p50"])
    assert re.match(r"[\d.]+$", second["source"]["p99"])
    assert "sporeflow · news · running" in after
    assert re.search(r"agent +received +handled +failed +in flight +queued +rate/s +p50 ms "
                     r"+p99 ms", after)
    progress = " ".join(after.split())
    assert "admitted 7 handled 11 dead letters 2 held 0 elapsed 2.0s" in progress


def test_view_redraws_on_the_loop_every_period(
    virtual: Callable[[Callable[[Any], Coroutine[Any, Any, Any]]], Any],
) -> None:
    terminal = Terminal()

    async def main(loop: Any) -> tuple[str, str]:
        organism = news_organism()
        async with organism.running(), LiveView(organism, console=terminal.console,
                                                period=10, clock=loop.time):
            await organism.send("source", {"n": 1})
            await organism.idle()
            stale = terminal.frame()  # the frame drawn on entering: nothing handled yet
            await asyncio.sleep(15)  # virtual time: one period passes
            return stale, terminal.frame()

    stale, fresh = virtual(main)
    assert rows(stale)["source"]["handled"] == "0"
    assert rows(fresh)["source"]["handled"] == "1"
    assert rows(fresh)["reader1"]["handled"] == "1"


async def test_a_view_outside_async_with_prints_one_frame() -> None:
    organism, terminal = news_organism(), Terminal()
    async with organism.running():
        await organism.send("source", {"n": 1})
        await organism.idle()
        LiveView(organism, console=terminal.console).refresh()
    assert rows(terminal.frame())["reader1"]["received"] == "1"


def test_without_rich_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(SporeflowError, match=re.escape("pip install 'sporeflow[live]'")):
        LiveView(news_organism())


def run_on_a_terminal(*args: str) -> str:
    """Run ``sporeflow run`` with stderr on a pseudo-terminal; return all it wrote there."""
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(SMALL), "--until-idle",
         *args], stdout=subprocess.DEVNULL, stderr=terminal, cwd=SMALL.parent,
    ) as proc:
        os.close(terminal)
        output = b""
        try:
            while chunk := os.read(controller, 65536):
                output += chunk
        except OSError:  # EIO: the process closed the terminal
            pass
        finally:
            os.close(controller)
            proc.wait(timeout=30)
    assert proc.returncode == 0, output
    return ANSI.sub("", output.decode())


def test_cli_run_on_a_terminal_shows_the_live_view_then_the_summary() -> None:
    output = run_on_a_terminal()
    assert "sporeflow · small" in output
    assert " handled in " in output  # the summary


def test_cli_run_quiet_on_a_terminal_prints_only_the_summary() -> None:
    output = run_on_a_terminal("--quiet")
    assert "sporeflow · small" not in output
    assert " handled in " in output  # the summary


def test_cli_run_off_a_terminal_prints_only_the_summary() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(SMALL), "--until-idle"],
        capture_output=True, cwd=SMALL.parent, timeout=30, check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "sporeflow · small" not in stderr
    assert "\x1b[" not in stderr
    assert stderr.startswith("agent ")  # the summary's table, and nothing before it
