"""Watching (pipeline/watch.py): fed change events directly, and once for real under the CLI."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
from click.testing import CliRunner
from watchfiles import Change

from sporeflow.config import SporeflowError
from sporeflow.pipeline import Organism
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.pipeline.reload.watch import (
    Changes,
    Reloadable,
    ReloadTriggers,
    require_watchfiles,
    watch_changes,
    watched_files,
)

from .test_reload import Lines, stop

SINK = """
async def sink(spore, ctx) -> None:
    ctx.state.setdefault("seen", []).append(spore.knowledge)
"""


@pytest.fixture
def module(handler_modules: Callable[[str, str | None], str]) -> Callable[..., str]:
    """Write a handler module beside the organism (default: SINK); see conftest."""
    return lambda source=SINK, name=None: handler_modules(source, name)


def organism_file(folder: Path, agents: str) -> Path:
    file = folder / "organism.yaml"
    agents = textwrap.indent(textwrap.dedent(agents).strip() + "\n", "  ")
    file.write_text(f"organism: {{name: watched}}\nagents:\n{agents}")
    return file


def modified(*paths: Path) -> Changes:
    return {(Change.modified, str(path)) for path in paths}


async def batches(*items: Changes | asyncio.Event) -> AsyncIterator[Changes]:
    """The given change batches in a row; an Event in between is waited for first."""
    for item in items:
        if isinstance(item, asyncio.Event):
            await asyncio.wait_for(item.wait(), 5)
        else:
            yield item


def test_watched_files_are_the_organism_file_and_its_own_handler_modules(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = organism_file(tmp_path, f"""
        a: {{handler: {mod}:sink}}
        b: {{handler: operator:eq}}
    """)
    organism = Organism.from_file(file)
    assert watched_files(organism) == {file.resolve(), (tmp_path / f"{mod}.py").resolve()}


async def test_a_burst_of_changes_makes_one_reload(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n")
    organism = Organism.from_file(file)
    reports: list[ReloadReport] = []
    async with organism.running():
        organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n  b: {{handler: {mod}:sink}}\n")
        count = await watch_changes(
            organism, batches(modified(file), modified(file), modified(file, tmp_path / "x.py")),
            on_report=reports.append)
    assert count == 1
    assert [report.added for report in reports] == [("b",)]


async def test_changes_to_other_files_reload_nothing(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n")
    organism = Organism.from_file(file)
    async with organism.running():
        count = await watch_changes(organism, batches(
            modified(tmp_path / "notes.txt"), {(Change.added, str(tmp_path / "other.yaml"))}))
    assert count == 0
    assert organism.stats()["reload"]["count"] == 0


async def test_changes_after_a_reload_started_make_exactly_one_more(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n")
    organism = Organism.from_file(file)
    first_done = asyncio.Event()
    reports: list[ReloadReport] = []

    def on_report(report: ReloadReport) -> None:
        reports.append(report)
        first_done.set()

    async with organism.running():
        count = await watch_changes(organism, batches(
            modified(file), first_done, modified(file), modified(file), modified(file)),
            on_report=on_report)
    assert count == 2
    assert all(report.ok for report in reports)


async def test_an_edited_handler_module_is_reimported_and_a_new_one_is_watched(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n")
    organism = Organism.from_file(file)
    edited = asyncio.Event()
    reports: list[ReloadReport] = []

    def on_report(report: ReloadReport) -> None:
        reports.append(report)
        if len(reports) == 1:  # the next edit is to a module only the new file names
            module(SINK.replace("knowledge)", "knowledge | {'v': 2})"), name=late)
            edited.set()

    late = module()
    async with organism.running():
        module(SINK.replace("knowledge)", "knowledge | {'v': 1})"), name=mod)
        organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n  b: {{handler: {late}:sink}}\n")
        count = await watch_changes(organism, batches(
            modified(tmp_path / f"{mod}.py", file), edited, modified(tmp_path / f"{late}.py")),
            on_report=on_report)
        await organism.send("a", {"n": 1})
        await organism.send("b", {"n": 2})
        await organism.idle()
    assert count == 2
    assert reports[0].reimported == (mod,)
    assert reports[0].added == ("b",)
    assert dict(reports[0].changed) == {"a": ("handler",)}
    assert reports[1].reimported == (late,)
    assert organism.wiring().agents["a"].state["seen"] == [{"n": 1, "v": 1}]
    assert organism.wiring().agents["b"].state["seen"] == [{"n": 2, "v": 2}]


async def test_a_module_that_once_failed_to_import_is_still_watched(
        tmp_path: Path, module: Callable[..., str]) -> None:
    # Found by a new user: a handler module saved with a syntax error was refused, then
    # dropped from the modules, and so from the watched files: the fix, and every edit
    # after it, went unseen, and the old code ran on.
    mod = module()
    file = organism_file(tmp_path, f"  a: {{handler: {mod}:sink}}\n")
    organism = Organism.from_file(file)
    source = tmp_path / f"{mod}.py"
    refused, reports = asyncio.Event(), []

    def on_report(report: ReloadReport) -> None:
        reports.append(report)
        if len(reports) == 1:
            module(SINK.replace("knowledge)", "knowledge | {'v': 2})"), name=mod)
            refused.set()

    async with organism.running():
        module(SINK + "\ndef broken(:\n", name=mod)
        await watch_changes(organism, batches(modified(source), refused), on_report=on_report)
        assert source.resolve() in watched_files(organism)
        count = await watch_changes(organism, batches(modified(source)))
        await organism.send("a", {"n": 1})
        await organism.idle()
    assert not reports[0].ok
    assert count == 1
    assert organism.wiring().agents["a"].state["seen"] == [{"n": 1, "v": 2}]


def test_without_watchfiles_the_error_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: Callable[..., str]) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # as if not installed
    with pytest.raises(SporeflowError, match=r"pip install 'sporeflow\[watch\]'"):
        require_watchfiles()
    file = organism_file(tmp_path, f"  a: {{handler: {module()}:sink}}\n")
    result = CliRunner().invoke(cli, ["run", str(file), "--watch"])
    assert result.exit_code == 1
    assert "pip install 'sporeflow[watch]'" in result.stderr


HELLO = """
def hello(spore, ctx) -> None:
    print("hello", spore.knowledge["who"], "v1", flush=True)
"""


def test_run_watch_applies_edits_to_the_organism_file_and_to_a_handler_module(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module(HELLO)
    file = organism_file(tmp_path, f"  first: {{handler: {mod}:hello, boot: {{who: first}}}}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(file), "--watch",
         "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        assert "watching 2 file(s) for changes" in err.wait_for("watching")
        organism_file(tmp_path, f"  first: {{handler: {mod}:hello, boot: {{who: first}}}}\n"
                                f"  second: {{handler: {mod}:hello, boot: {{who: second}}}}\n")
        added = err.wait_for(": applied: added second")
        booted = out.wait_for("second")
        (tmp_path / f"{mod}.py").write_text(HELLO.replace("v1", "v2"))
        reimported = err.wait_for("re-imported")
    finally:
        stop(process, out, err)
    assert added.startswith(f"reload: {file}: applied: added second")
    assert booted.strip() == "hello second v1"
    assert f"re-imported {mod}" in reimported
    assert "changed first (handler), second (handler)" in reimported
    assert process.returncode == 0


class _Logged:
    """A stand-in organism for ReloadTriggers.report: only its logger is read."""

    def __init__(self, level: int) -> None:
        self.logger = logging.getLogger(f"sporeflow.test.watch.{level}")
        self.logger.setLevel(level)


@pytest.mark.parametrize(("level", "echoed"), [(logging.WARNING, False),
                                                (logging.CRITICAL, True)])
def test_a_refused_reload_is_echoed_only_where_its_error_record_is_not_shown(
        level: int, echoed: bool) -> None:
    lines: list[str] = []
    triggers = ReloadTriggers(cast(Reloadable, _Logged(level)), watch=False,
                              echo=lines.append)
    triggers.report(ReloadReport(ok=False, source="o.yaml", errors=("o.yaml:3: bad",)))
    triggers.report(ReloadReport(ok=True, source="o.yaml", added=("b",)))
    refused = [line for line in lines if "refused" in line]
    assert refused == (["reload: o.yaml: refused, 1 problem"] if echoed else [])
    assert lines[-1].startswith("reload: o.yaml: applied: added b")
