"""An organism run in two processes over a broker (``run --agents``), reached by the
command line: ``reload`` reloads each and says what each did, for the agents it hosts
only; ``stats`` shows each process's view under its label; ``send`` reaches the process
hosting its recipient; ``tail`` follows the one it is told or refuses, listing them.

The two "processes" are two organisms in this test's loop on one in-memory broker, each
serving its own control socket as ``sporeflow run --agents`` does; the command line
talks to them over those sockets, from a thread.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sporeflow.pipeline import Organism
from sporeflow.pipeline.broker.memory_backend import MemoryBackend, MemoryBroker
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.reload.diff import ReloadReport
from sporeflow.pipeline.service.processes import AmbiguousProcess, NoSuchProcess, Process, choose
from sporeflow.pipeline.service.server import ControlServer

from .conformance.harness import BACKSTOP, wait_for

HANDLERS = """
async def producer(spore, ctx):
    return None

async def pricer(spore, ctx):
    return None

async def ledger(spore, ctx):
    return None

async def taxman(spore, ctx):
    return None
"""

ORGANISM = """\
organism: {{name: shop}}
agents:
  producer: {{handler: {module}:producer}}
  pricer: {{handler: {module}:pricer, concurrency: 4}}
  ledger: {{handler: {module}:ledger}}
  taxman: {{handler: {module}:taxman}}
"""

A_AGENTS = ["producer", "pricer", "ledger"]  # the user's process A
B_AGENTS = ["taxman"]  # and B: its socket's name sorts first, so it answered alone before


@pytest.fixture
def organism_file(tmp_path: Path, handler_modules: Callable[[str], str]) -> Path:
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM.format(module=handler_modules(HANDLERS)))
    return path


@asynccontextmanager
async def two_processes(path: Path) -> AsyncIterator[tuple[Organism, Organism]]:
    """Processes A and B of ``path`` on one broker, each with its control socket."""
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        made = []
        for hosted in (A_AGENTS, B_AGENTS):
            org = Organism.from_file(path, backend=MemoryBackend(broker), hosted=hosted)
            await stack.enter_async_context(org.running())
            await stack.enter_async_context(ControlServer(
                org, path, hosted=hosted, echo=lambda _: None, quiet=True, replicas=True))
            made.append(org)
        yield made[0], made[1]


async def sporeflow(*args: str) -> Result:
    """The command line, in a thread: the organisms it reaches run on this loop."""
    return await asyncio.to_thread(CliRunner().invoke, cli, list(args))


async def sporeflow_process(*args: str) -> tuple[int, str]:
    """The command line in a process of its own (``tail`` sets signal handlers, which only
    a main thread may): its exit status and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sporeflow.pipeline.cli", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), BACKSTOP)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def edit(path: Path, old: str, new: str) -> None:
    text = await asyncio.to_thread(path.read_text)
    await asyncio.to_thread(path.write_text, text.replace(old, new))


def line_of(output: str, pid_label: str) -> str:
    [line] = [line for line in output.splitlines() if pid_label in line]
    return line


async def test_reload_reloads_every_process_and_each_reports_only_its_own_agents(
        organism_file: Path) -> None:
    async with two_processes(organism_file) as (a, b):
        await edit(organism_file, "concurrency: 4", "concurrency: 3")
        result = await sporeflow("reload", str(organism_file))
        assert result.exit_code == 0, result.output
        a_line = line_of(result.stdout, "(agents ledger, pricer, producer)")
        b_line = line_of(result.stdout, "(agents taxman)")
        assert a_line.startswith("reload: process ")
        assert "applied: changed pricer (concurrency)" in a_line
        assert "applied: no change; not hosted here: pricer" in b_line
        assert "changed pricer" not in b_line  # B does not host pricer: it changed nothing
        assert len(result.stdout.splitlines()) == 2
        assert (a.stats()["reload"]["count"], b.stats()["reload"]["count"]) == (1, 1)
        assert a.agents["pricer"].concurrency == 3
        b_last = b.stats()["reload"]["last"]
        assert (b_last["changed"], b_last["elsewhere"]) == ({}, ["pricer"])


async def test_a_reload_refused_by_a_file_with_problems_fails_for_every_process(
        organism_file: Path) -> None:
    async with two_processes(organism_file):
        await edit(organism_file, "concurrency: 4", "concurrency: -1")
        result = await sporeflow("reload", str(organism_file))
    assert result.exit_code == 1
    assert result.stdout.count(": refused, 1 problem") == 2, result.output
    assert "(agents taxman)" in result.stdout
    assert "(agents ledger, pricer, producer)" in result.stdout


async def test_stats_shows_each_process_view_labelled_by_the_agents_it_hosts(
        organism_file: Path) -> None:
    async with two_processes(organism_file) as (a, b):
        sent = await sporeflow("send", str(organism_file), "--to", "pricer", '{"n": 1}')
        # The process hosting pricer sends it, and sees it handled.
        assert sent.exit_code == 0, sent.output
        assert "sent over the broker" not in sent.stderr
        assert a.stats()["agents"]["pricer"]["handled"] == 1

        result = await sporeflow("stats", str(organism_file))
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert shown["organism"] == "shop"
        views = {tuple(view["hosted"]): view for view in shown["processes"]}
        assert set(views) == {("ledger", "pricer", "producer"), ("taxman",)}
        for view in views.values():
            assert view["process"].startswith(f"process {view['pid']} (agents ")
            assert view["socket"].endswith(".sock")
        assert views["ledger", "pricer", "producer"]["stats"]["agents"]["pricer"][
            "handled"] == 1
        assert views["taxman",]["stats"]["broker"]["hosted"] == ["taxman"]

        one = await sporeflow("stats", str(organism_file), "--process", "pricer")
        assert one.exit_code == 0, one.output
        alone = json.loads(one.stdout)
        assert "processes" not in alone  # one process's stats, as a single run prints
        assert alone["broker"]["hosted"] == sorted(A_AGENTS)
        assert alone["agents"]["pricer"]["handled"] == 1

        via_b = await sporeflow("send", str(organism_file), "--process", "taxman",
                                "--to", "pricer", '{"n": 2}')
        assert via_b.exit_code == 0, via_b.output
        assert "sent over the broker" in via_b.stderr  # B does not see pricer's end
        await wait_for(lambda: a.stats()["agents"]["pricer"]["handled"] == 2)
        assert b.stats()["agents"]["pricer"]["handled"] == 0


async def test_tail_follows_the_process_it_is_told_and_refuses_to_guess(
        organism_file: Path) -> None:
    async with two_processes(organism_file):
        status, guessed = await sporeflow_process("tail", str(organism_file), "--until-idle")
        assert status == 1
        assert guessed.startswith(
            f"AmbiguousProcess: {organism_file} runs in 2 processes, and tail follows one")
        assert "--process AGENT" in guessed
        assert "(agents taxman): " in guessed
        assert "(agents ledger, pricer, producer): " in guessed

        for how in (["--agent", "taxman"], ["--process", "taxman"]):
            status, err = await sporeflow_process("tail", str(organism_file),
                                                  "--until-idle", *how)
            assert status == 0, err
            assert "tail: following the organism's process " in err
            assert "(agents taxman) at " in err

        status, unknown = await sporeflow_process("tail", str(organism_file), "--process",
                                                  "nobody")
        assert status == 1
        assert unknown.startswith("NoSuchProcess: --process nobody: no running process of ")


CHAIN = """
async def producer(spore, ctx):
    return {"step": "priced?"}

async def pricer(spore, ctx):
    return {"step": "taxed?"}

async def ledger(spore, ctx):
    return {"booked": True}

async def taxman(spore, ctx):
    answer = await ctx.request("ledger", {"step": "booked?"}, timeout=5)
    ctx.state["booked"] = answer.knowledge
"""


async def test_trace_joins_the_steps_each_process_holds_of_one_conversation(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    # Found by a new user: over a broker, `sporeflow trace ROOT` showed the root's process's
    # part only: the process that never saw the root answered 404 for it, so the spores it
    # handled further down (a request, its response, the emit on) were left out.
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM.format(module=handler_modules(CHAIN)).replace(
        "producer: {handler", "producer: {emit: {to: pricer}, handler").replace(
        "pricer: {handler", "pricer: {emit: {to: taxman}, handler"))
    async with two_processes(path) as (a, b):
        root = await a.send("producer", {"step": "start"}, sender="cli")
        await wait_for(lambda: b.stats()["agents"]["taxman"]["handled"] == 1)
        await wait_for(lambda: a.stats()["agents"]["ledger"]["handled"] == 1)
        result = await sporeflow("trace", str(path), root.id, "--json")
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in result.output.splitlines()]
    handled = sorted((step["agent"], step["spore_type"]) for step in steps
                     if step["outcome"] == "handled")
    assert handled == [("ledger", "request"), ("pricer", "knowledge"),
                       ("producer", "knowledge"), ("taxman", "knowledge")]
    assert {step["correlation_id"] for step in steps if step["id"] != root.id} == {root.id}


def test_replicas_are_alike_for_what_any_process_does_but_not_for_tail() -> None:
    one = Process(Path("/r/1.sock"), 1, ("pricer",), False)
    two = Process(Path("/r/2.sock"), 2, ("pricer",), False)
    assert choose([one, two], "pricer", any_will_do=True, doing="", organism="o") is one
    assert choose([one, two], "2", any_will_do=False, doing="", organism="o") is two
    assert choose([one, two], "/r/2.sock", any_will_do=False, doing="", organism="o") is two
    with pytest.raises(AmbiguousProcess, match="2 running processes of o match"):
        choose([one, two], "pricer", any_will_do=False, doing="tail follows one",
               organism="o")


def test_a_report_says_nothing_of_elsewhere_when_a_process_hosts_every_agent() -> None:
    report = ReloadReport(ok=True, source="f", changed={"pricer": ("concurrency",)})
    assert "elsewhere" not in report.to_dict()  # one process's stats as they were
    assert report.summary() == "f: applied: changed pricer (concurrency) (0.0 ms)"


def test_a_pid_names_its_process_beside_one_that_hosts_every_agent() -> None:
    # `sporeflow run FILE` (every agent) and `sporeflow run FILE --agents taxman`: the
    # every-agent process hosts any agent, but it is not pid 200, nor a typo's host.
    every = Process(Path("/r/a.sock"), 100, ("ledger", "pricer", "taxman"), True)
    worker = Process(Path("/r/b.sock"), 200, ("taxman",), False)
    for any_will_do in (True, False):
        assert choose([every, worker], "200", any_will_do=any_will_do, doing="tail",
                      organism="o") is worker
    assert choose([every, worker], "pricer", any_will_do=False, doing="tail",
                  organism="o") is every
    for wrong in ("99999", "pricr"):
        with pytest.raises(NoSuchProcess, match=f"--process {wrong}: no running process"):
            choose([every], wrong, any_will_do=True, doing="", organism="o")
