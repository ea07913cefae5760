"""``sporeflow trace``: the tree of spores a root produced, with parents, agents, outcomes
and timings, from a journal or from the running organism's recent window; and the
lineage surviving a journal replay."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner, Result

from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.core.deadletters import DeadLetter
from sporeflow.pipeline.core.lineage import (
    DEAD_LETTER,
    ENDED,
    HANDLED,
    TraceStep,
    render_tree,
    trace_tree,
)
from sporeflow.pipeline.journal.lineage import (
    TRACE_INSERT_SQL,
    TraceBuffer,
    TraceRows,
    batch_row,
    read_steps,
)
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.observe.lineage import TraceWindow
from sporeflow.pipeline.service.control import control_app
from sporeflow.pipeline.service.server import ControlServer

from .conformance.harness import wait_for

# A three-hop conversation: the root reaches front, which sends to broken (it fails) and
# returns to middle (emit), which asks back and returns nothing.
HANDLERS = """
async def front(spore, ctx):
    await ctx.send("broken", {"step": "doomed"})
    return {"step": "to middle"}


async def broken(spore, ctx):
    raise ValueError("broken on purpose")


async def middle(spore, ctx):
    answer = await ctx.request("back", {"step": "asked"}, timeout=30)
    ctx.state["answer"] = answer.knowledge


async def back(spore, ctx):
    return {"step": "answered"}
"""

ORGANISM = """\
organism: {{name: conv{journal}}}
agents:
  front: {{handler: {module}:front, emit: {{to: middle}}}}
  broken: {{handler: {module}:broken}}
  middle: {{handler: {module}:middle}}
  back: {{handler: {module}:back}}
"""


@pytest.fixture
def organism_file(tmp_path: Path, handler_modules: Callable[..., str]) -> Path:
    path = tmp_path / "organism.yaml"
    path.write_text(ORGANISM.format(module=handler_modules(HANDLERS), journal=", journal: j.db"))
    return path


@pytest.fixture
def unjournaled_file(tmp_path: Path, handler_modules: Callable[..., str]) -> Path:
    path = tmp_path / "bare.yaml"
    path.write_text(ORGANISM.format(module=handler_modules(HANDLERS), journal=""))
    return path


def trace(*args: str) -> Result:
    return CliRunner().invoke(cli, ["trace", *args], catch_exceptions=False)


def steps_of(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def check_conversation(steps: list[dict[str, Any]], root: str) -> None:
    """The tree of the conversation, by parent: each spore under the one that caused it."""
    by_agent = {(s["agent"], s["spore_type"]): s for s in steps}
    front = by_agent["front", "knowledge"]
    failed = by_agent["broken", "knowledge"]
    middle = by_agent["middle", "knowledge"]
    asked = by_agent["back", "request"]
    assert front["id"] == root
    assert front["causation_id"] is None
    assert (failed["causation_id"], failed["outcome"], failed["reason"]) == (
        root, "failed", "handler failed")
    assert (middle["causation_id"], middle["from_agent"], middle["outcome"]) == (
        root, "front", HANDLED)
    assert (asked["causation_id"], asked["outcome"]) == (middle["id"], HANDLED)
    [answer] = [s for s in steps if s["spore_type"] == "response"]
    assert (answer["causation_id"], answer["outcome"], answer["from_agent"]) == (
        asked["id"], ENDED, "back")
    assert {s["correlation_id"] for s in steps if s["id"] != root} == {root}
    assert all(s["latency"] >= 0 for s in steps if s["outcome"] == HANDLED)


async def converse(path: Path) -> str:
    org = Organism.from_file(path)
    async with org.running():
        root = await org.send("front", {"step": "start"}, sender="cli")
        await org.idle()
    assert org.wiring().agents["middle"].state["answer"] == {"step": "answered"}
    return root.id


async def test_trace_from_the_journal_shows_the_tree_with_parents(organism_file: Path) -> None:
    root = await converse(organism_file)
    journal = str(organism_file.parent / "j.db")
    for args in ([str(organism_file), root, "--journal", journal, "--json"],
                 [str(organism_file), root, "--json"]):  # not running: its own journal
        check_conversation(steps_of(await asyncio.to_thread(trace, *args)), root)
    text = await asyncio.to_thread(trace, str(organism_file), root)
    lines = text.output.splitlines()
    assert lines[0].startswith(f"{root} [knowledge] cli -> front +0.0ms: handled by front in ")
    assert lines[1].startswith("├─ ")
    assert "failed by broken (handler failed)" in lines[1]
    assert lines[2].startswith("└─ ")
    assert "front -> middle" in lines[2]
    assert lines[3].startswith("   └─ ")
    assert "[request] middle -> back" in lines[3]
    assert lines[4].startswith("      └─ ")
    assert "[response] back -> middle" in lines[4]
    assert lines[4].endswith(": answered its request")  # not "ended without a handler"
    assert len(lines) == 5


async def test_trace_reads_the_organism_file_here_when_given_only_a_spore_id(
        organism_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = await converse(organism_file)
    assert organism_file.name == "organism.yaml"
    monkeypatch.chdir(organism_file.parent)
    check_conversation(steps_of(await asyncio.to_thread(trace, root, "--json")), root)
    too_many = CliRunner().invoke(cli, ["trace", "a.yaml", root, "extra"])
    assert too_many.exit_code == 2
    assert "give [ORGANISM] SPORE_ID" in too_many.output
    # Found by a new user: the id read as the file ("cannot read the file"), and a
    # missing id blamed the file given.
    swapped = CliRunner().invoke(cli, ["trace", root, str(organism_file)])
    assert swapped.exit_code == 2
    assert (f"{str(organism_file)!r} names an organism file, not a spore id; give the "
            f"organism first: `sporeflow trace {organism_file} {root}`") in swapped.output
    missing = CliRunner().invoke(cli, ["trace", str(organism_file)])
    assert missing.exit_code == 2
    assert "the SPORE_ID is missing" in missing.output


async def test_trace_asks_the_running_organism(unjournaled_file: Path) -> None:
    path = unjournaled_file  # no journal: what is traced comes from the running organism
    org = Organism.from_file(path)
    async with org.running(), ControlServer(org, path, echo=lambda _: None, quiet=True):
        root = (await org.send("front", {"step": "start"}, sender="cli")).id
        await org.idle()
        steps = steps_of(await asyncio.to_thread(trace, str(path), root, "--json"))
        check_conversation(steps, root)
        unknown = await asyncio.to_thread(trace, str(path), "no-such-spore")
    assert unknown.exit_code == 1
    assert "NotFound: spore 'no-such-spore' is not in the running organism's recent " \
           "window;" in unknown.output
    stopped = await asyncio.to_thread(trace, str(path), root)
    assert stopped.exit_code == 1
    assert "no organism running" in stopped.output
    assert "--journal FILE" in stopped.output


async def test_a_spore_the_running_window_forgot_is_read_from_the_journal(
        organism_file: Path) -> None:
    org = Organism.from_file(organism_file)
    server = ControlServer(org, organism_file, echo=lambda _: None, quiet=True)
    server.trace = TraceWindow(cap=1)  # the root's steps are forgotten at once
    async with org.running(), server:
        root = (await org.send("front", {"step": "start"}, sender="cli")).id
        await org.idle()
        assert trace_tree(server.trace.steps, root) is None
        await org.journal.flush()  # type: ignore[union-attr]  # it has one
        steps = steps_of(await asyncio.to_thread(trace, str(organism_file), root, "--json"))
    check_conversation(steps, root)


async def test_the_lineage_survives_a_journal_replay(tmp_path: Path) -> None:
    seen: list[Spore] = []
    first_life = [True]

    async def front(spore: Spore, ctx: Any) -> dict[str, Any]:
        return {"step": "next"}

    async def slow(spore: Spore, ctx: Any) -> None:
        if first_life[0]:
            await asyncio.Event().wait()  # killed here: the stop below cancels it
        seen.append(spore)

    spec = Organism.from_dict({"agents": {"front": {"handler": front, "emit": {"to": "slow"}},
                                          "slow": {"handler": slow}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    await org.start()
    root = await org.send("front", {})
    await wait_for(lambda: org.stats()["agents"]["slow"]["in_flight"] == 1)
    await org.stop(drain_timeout=0)
    with JournalFile(tmp_path / "j.db") as file:
        [pending] = file.pending()
    assert (pending.causation_id, pending.correlation_id) == (root.id, root.id)
    first_life[0] = False
    again = Organism(spec, journal=tmp_path / "j.db")
    async with again.running():
        await wait_for(lambda: len(seen) == 1)
        await again.idle()
    assert (seen[0].id, seen[0].causation_id, seen[0].correlation_id) == (
        pending.id, root.id, root.id)
    with JournalFile(tmp_path / "j.db") as file:
        tree = trace_tree(file.trace_steps(), root.id)
    assert tree is not None
    [child] = tree.children  # handled in the second run, under its root of the first
    assert (child.id, [s.agent for s in child.steps]) == (pending.id, ["slow"])


async def test_a_journal_written_before_lineage_loads_and_gains_its_trace(
        tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    handled: list[Spore] = []

    async def sink(spore: Spore, ctx: Any) -> None:
        handled.append(spore)

    spec = Organism.from_dict({"agents": {"sink": {"handler": sink}}}).spec
    org = Organism(spec, journal=path)
    async with org.running():
        pass  # the file and its tables
    old = Spore(knowledge={"n": 1}, from_agent="cli", to_agent="sink", id="old-1").to_dict()
    del old["causation_id"], old["correlation_id"]  # a row of an older sporeflow
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE trace")
        conn.execute("INSERT INTO pending (id, priority, spore) VALUES (?, 5, ?)",
                     ("old-1", json.dumps(old)))
    conn.close()
    with JournalFile(path) as file:
        assert file.trace_steps() == []  # no table yet: nothing to trace, no error
    async with Organism(spec, journal=path).running() as again:
        await wait_for(lambda: len(handled) == 1)
        await again.idle()
    assert (handled[0].id, handled[0].causation_id, handled[0].correlation_id) == (
        "old-1", None, None)
    with JournalFile(path) as file:
        tree = trace_tree(file.trace_steps(), "old-1")
    assert tree is not None
    assert [s.outcome for s in tree.steps] == [HANDLED]


def test_the_window_and_the_journals_rows_are_bounded(tmp_path: Path) -> None:
    window = TraceWindow(cap=3)
    for n in range(5):
        window.ended(Spore(knowledge={}, id=f"s{n}"))
    assert [s.id for s in window.steps] == ["s2", "s3", "s4"]
    # A refused spore may hold anything in any field: a step keeps a bounded text of it.
    malformed = Spore(knowledge={}, from_agent=["x"] * 10_000)  # type: ignore[arg-type]
    window.dead_lettered(DeadLetter(malformed, "invalid", "from_agent is no string"))
    step = window.steps[-1]
    assert (step.outcome, step.reason, len(step.from_agent)) == (DEAD_LETTER, "invalid", 1024)
    rows = TraceRows(cap=10)
    conn = sqlite3.connect(":memory:")
    rows.open(conn)
    for n in range(25):
        conn.execute("INSERT INTO trace (step) VALUES (?)", (str(n),))
        rows.added(conn, 1)
    kept = [int(r[0]) for r in conn.execute("SELECT step FROM trace ORDER BY seq")]
    assert len(kept) <= 10
    assert kept == list(range(25 - len(kept), 25))  # the newest
    assert rows.rows == len(kept)
    # Rows of batches count their steps: 7 batches of 3 steps, 21 steps past a cap of 10.
    for n in range(7):
        conn.execute(TRACE_INSERT_SQL, (f"batch {n}", 3))
        rows.added(conn, 3)
    kept = [r[0] for r in conn.execute("SELECT step FROM trace ORDER BY seq")]
    assert kept[-2:] == ["batch 5", "batch 6"]  # the newest
    assert rows.rows == conn.execute("SELECT sum(steps) FROM trace").fetchone()[0] <= 10


def test_the_trace_bound_keeps_the_newest_row_and_counts_steps_over_random_batches() -> None:
    rng = random.Random(7)
    conn = sqlite3.connect(":memory:")
    rows = TraceRows(cap=10_000)
    rows.open(conn)
    for n in range(400):  # batches of 1..256 steps, some old one-step rows among them
        size = rng.randint(1, 256)
        if rng.random() < 0.05:
            size = 1
            conn.execute("INSERT INTO trace (step) VALUES (?)", (json.dumps([n]),))
        else:
            conn.execute(TRACE_INSERT_SQL, (json.dumps([[n]] * size), size))
        rows.added(conn, size)
        held = conn.execute("SELECT coalesce(sum(steps), 0) FROM trace").fetchone()[0]
        assert rows.rows == held <= 10_000 + 256
        assert conn.execute("SELECT max(seq) FROM trace").fetchone()[0] == n + 1
    small = TraceRows(cap=200)  # a batch larger than the cap keeps that batch
    conn.execute("DELETE FROM trace")
    small.open(conn)
    conn.execute(TRACE_INSERT_SQL, (json.dumps([[0]] * 256), 256))
    small.added(conn, 256)
    assert small.rows == 256


def test_a_journal_made_before_batched_trace_rows_is_still_read(tmp_path: Path) -> None:
    old = TraceStep("a", None, None, "x", "y", "knowledge", HANDLED, datetime.now(UTC))
    new = old._replace(id="b", causation_id="a")
    conn = sqlite3.connect(tmp_path / "j.db")
    conn.execute("CREATE TABLE trace (seq INTEGER PRIMARY KEY, step TEXT NOT NULL)")
    conn.execute("INSERT INTO trace (step) VALUES (?)", (json.dumps(old.to_row()),))
    rows = TraceRows()
    rows.open(conn)  # the column comes; the old row counts one step
    conn.execute(TRACE_INSERT_SQL, (json.dumps(batch_row([new, new])), 2))
    rows.added(conn, 2)
    assert rows.rows == 3
    steps = read_steps(conn)
    assert [s.id for s in steps] == ["a", "b", "b"]
    assert abs((steps[2].at - new.at).total_seconds()) < 1e-5  # seconds in a batch's row


def test_a_malformed_step_is_left_out_and_a_forged_cycle_ends() -> None:
    good = {"id": "a", "causation_id": "b", "correlation_id": None, "from_agent": "x",
            "to": "y", "spore_type": "knowledge", "outcome": DEAD_LETTER,
            "at": "2026-01-01T00:00:00+00:00", "reason": "schema"}
    assert TraceStep.from_json({**good, "outcome": "exploded"}) is None
    assert TraceStep.from_json({**good, "latency": "fast"}) is None
    assert TraceStep.from_json({**good, "at": "2026-01-01T00:00:00"}) is None  # naive
    assert TraceStep.from_json({**good, "at": "yesterday"}) is None
    assert TraceStep.from_json([1]) is None
    a = TraceStep.from_json(good)
    b = TraceStep.from_json({**good, "id": "b", "causation_id": "a"})
    assert a is not None
    assert b is not None
    tree = trace_tree([a, b], "a")
    assert tree is not None
    assert [c.id for c in tree.children] == ["b"]
    assert tree.children[0].children == []  # a, its own grandchild, is not drawn twice
    assert render_tree(tree) == ["a [knowledge] x -> y: dead letter (schema)",
                                 "└─ b [knowledge] x -> y: dead letter (schema)"]


async def test_the_trace_route_needs_an_id_and_answers_only_what_the_root_produced() -> None:
    async def echo(spore: Spore, ctx: Any) -> dict[str, Any] | None:
        return {"n": spore.knowledge["n"]} if spore.from_agent == "cli" else None

    org = Organism.from_dict({"agents": {"echo": {"handler": echo, "emit": {"to": "echo"}}}})
    async with org.running():
        client: TestClient[Any, Any] = TestClient(TestServer(control_app(org)))
        await client.start_server()
        try:
            first = await org.send("echo", {"n": 1}, sender="cli")
            await org.send("echo", {"n": 2}, sender="cli")  # another conversation
            await org.idle()
            missing = await client.get("/v1/trace")
            answer = await client.get("/v1/trace", params={"id": first.id})
            steps = (await answer.json())["steps"]
        finally:
            await client.close()
    assert missing.status == 400
    assert answer.status == 200
    assert [(s["causation_id"], s["outcome"]) for s in steps] == [
        (None, HANDLED), (first.id, HANDLED)]


async def test_the_journal_commits_trace_steps_in_batches_and_at_a_flush(
        tmp_path: Path) -> None:
    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    spec = Organism.from_dict({"agents": {"sink": {"handler": sink}}}).spec
    org = Organism(spec, journal=tmp_path / "j.db")
    async with org.running():
        sent = await org.send("sink", {})
        await org.idle()
        assert org.journal is not None
        await org.journal.flush()
        with JournalFile(tmp_path / "j.db") as file:
            assert [s.id for s in file.trace_steps()] == [sent.id]
        for _ in range(3):
            await org.send("sink", {})
        await org.idle()
        await org.journal.record(())  # a commit of pending spores alone: steps still held
        with JournalFile(tmp_path / "j.db") as file:
            assert len(file.trace_steps()) == 1
    with JournalFile(tmp_path / "j.db") as file:  # the stop wrote them
        assert len(file.trace_steps()) == 4
    buffer = TraceBuffer(batch=2)
    step = TraceStep("a", None, None, "x", "y", "knowledge", HANDLED, datetime.now(UTC))
    assert buffer.add(step) is None
    assert buffer.add(step) == [step, step]
    assert buffer.steps == []
