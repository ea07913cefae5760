"""Stateful agents: class handlers, their hooks, snapshots, and ``run --state``."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.pipeline import ConfigError, Organism, OrganismStateError, Spore
from sporeflow.pipeline.agents.state import read_snapshot, write_snapshot
from sporeflow.pipeline.cli.main import cli

FIXTURES = Path(__file__).parent / "fixtures"


def totaliser_organism(**agent: Any) -> Organism:
    return Organism.from_dict(
        {"organism": {"name": "stateful"},
         "agents": {"totaliser": {"handler": "stateful_agents:Totaliser", **agent}}},
        base_dir=FIXTURES)


async def add(organism: Organism, n: int) -> int:
    answer = await organism.request("totaliser", {"n": n}, timeout=5)
    total: int = answer.knowledge["total"]
    return total


async def test_class_agent_total_continues_after_a_saved_stop_and_restart() -> None:
    first = totaliser_organism()
    async with first.running():
        assert [await add(first, n) for n in (1, 2, 3)] == [1, 3, 6]
    snapshot = first.save_state()
    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot["agents"] == {"totaliser": {"total": 6}}

    second = totaliser_organism()
    second.load_state(snapshot)  # before start: applied when the instance is made
    async with second.running():
        assert await add(second, 4) == 10


async def test_lazy_class_is_made_on_first_spore_eager_one_at_start() -> None:
    lazy, eager = totaliser_organism(), totaliser_organism(lazy=False)
    async with lazy.running(), eager.running():
        assert lazy.wiring().agents["totaliser"].actor.instance is None
        made = eager.wiring().agents["totaliser"].actor.instance
        assert made is not None
        assert made.started
        await add(lazy, 1)
        assert lazy.wiring().agents["totaliser"].actor.instance.started


async def test_on_stop_runs_after_the_drain_sees_every_spore() -> None:
    organism = totaliser_organism()
    await organism.start()
    for n in range(1, 11):
        await organism.send("totaliser", {"n": n})
    await organism.stop()  # no idle() first: the drain must finish them
    instance = organism.wiring().agents["totaliser"].actor.instance
    assert instance.total_at_stop == 55


async def test_concurrent_first_spores_make_one_instance() -> None:
    made: list[object] = []

    class Slow:
        def __init__(self) -> None:
            made.append(self)

        async def on_start(self) -> None:
            await asyncio.sleep(0)  # let the other first spores arrive meanwhile

        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

    organism = Organism.from_dict({"agents": {"slow": {"handler": Slow, "concurrency": 4}}})
    async with organism.running():
        for _ in range(8):
            await organism.send("slow", {})
        await organism.idle()
    assert len(made) == 1
    assert organism.stats()["agents"]["slow"]["handled"] == 8


async def test_plain_call_method_runs_and_function_state_is_snapshotted() -> None:
    class Counter:
        def __init__(self) -> None:
            self.seen = 0

        def __call__(self, spore: Spore, ctx: Any) -> None:  # sync: runs on a thread
            self.seen += 1

    async def remember(spore: Spore, ctx: Any) -> None:
        ctx.state.setdefault("words", []).append(spore.knowledge["word"])

    spec = {"agents": {"counter": {"handler": Counter}, "memo": {"handler": remember}}}
    organism = Organism.from_dict(spec)
    async with organism.running():
        await organism.send("counter", {})
        for word in ("a", "b"):
            await organism.send("memo", {"word": word})
        await organism.idle()
        assert organism.wiring().agents["counter"].actor.instance.seen == 1
    snapshot = organism.save_state()
    # Counter has no save_state: nothing is saved for it.
    assert snapshot["agents"] == {"memo": {"words": ["a", "b"]}}

    again = Organism.from_dict(spec)
    async with again.running():
        again.load_state(snapshot)  # while running: applied at once, in place
        await again.send("memo", {"word": "c"})
        await again.idle()
        assert again.wiring().agents["memo"].state == {"words": ["a", "b", "c"]}


async def test_state_that_is_not_json_is_refused_naming_the_agent() -> None:
    async def hoard(spore: Spore, ctx: Any) -> None:
        ctx.state["when"] = object()

    organism = Organism.from_dict({"agents": {"hoarder": {"handler": hoard}}})
    async with organism.running():
        await organism.send("hoarder", {})
        await organism.idle()
    with pytest.raises(OrganismStateError, match=r"agent 'hoarder': ctx.state is not JSON"):
        organism.save_state()


def test_a_snapshot_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(OrganismStateError, match="not a sporeflow state snapshot"):
        totaliser_organism().load_state({"totaliser": {"total": 1}})


def test_class_without_handle_method_is_a_config_problem() -> None:
    class Mute:
        pass

    with pytest.raises(ConfigError, match=r"agents.mute.handler: class handler .*Mute' has "
                                          r"no handle method; define `async def handle"):
        Organism.from_dict({"agents": {"mute": {"handler": Mute}}})


@pytest.mark.parametrize("hook", ["on_start", "on_stop"])
def test_a_hook_that_is_no_coroutine_function_is_a_config_problem(hook: str) -> None:
    # Awaited, a plain `def` hook's None raised "object NoneType can't be used in 'await'
    # expression" at start, or for a lazy agent at every spore.
    def plain(self: Any) -> None:
        return None

    async def handle(self: Any, spore: Spore, ctx: Any) -> None:
        return None

    Plain = type("Plain", (), {"handle": handle, hook: plain})
    with pytest.raises(ConfigError, match=rf"agents.plain.handler: .*Plain.{hook} must be "
                                          rf"`async def {hook}\(self\)`"):
        Organism.from_dict({"agents": {"plain": {"handler": Plain}}})


async def test_failing_on_start_of_an_eager_agent_fails_start_and_stops() -> None:
    class Broken:
        async def on_start(self) -> None:
            raise RuntimeError("no database")

        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

    organism = Organism.from_dict({"agents": {"b": {"handler": Broken, "lazy": False}}})
    with pytest.raises(OrganismStateError, match="agent 'b' could not start.*no database"):
        await organism.start()
    assert organism.state == "stopped"


def test_snapshot_file_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert read_snapshot(path) is None
    write_snapshot(path, {"sporeflow_state": 1, "agents": {"a": {"n": 1}}})
    write_snapshot(path, {"sporeflow_state": 1, "agents": {"a": {"n": 2}}})
    assert read_snapshot(path) == {"sporeflow_state": 1, "agents": {"a": {"n": 2}}}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_run_with_state_file_restores_the_total_on_the_next_run(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    organism = FIXTURES / "stateful_organism.yaml"  # boot sends {n: 5} at each start
    for expected in (5, 10):
        result = CliRunner().invoke(
            cli, ["run", str(organism), "--until-idle", "--quiet", "--state", str(state)])
        assert result.exit_code == 0, result.output
        assert json.loads(state.read_text())["agents"] == {"totaliser": {"total": expected}}


def test_a_state_file_that_is_no_utf8_is_a_clear_error(tmp_path: Path) -> None:
    # Before: read_text's UnicodeDecodeError escaped `run --state` as a raw traceback.
    path = tmp_path / "state.json"
    path.write_bytes(b'\xff\xfe{"sporeflow_state": 1}')
    with pytest.raises(OrganismStateError, match="state.json' is not UTF-8 text \\(byte 0xff "
                                                 "at 0\\); remove it to start afresh"):
        read_snapshot(path)
    result = CliRunner().invoke(cli, ["run", str(FIXTURES / "stateful_organism.yaml"),
                                      "--until-idle", "--quiet", "--state", str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "remove it to start afresh" in result.output


def test_a_state_file_that_cannot_be_written_is_refused_before_the_run() -> None:
    # Before: the run went to its end, then the snapshot's write raised a traceback and
    # the state it had built was lost. /proc takes no new file, whoever runs the test.
    path = Path("/proc") / f"sporeflow-state-{os.getpid()}.json"
    with pytest.raises(OrganismStateError, match="cannot write the state file"):
        write_snapshot(path, {"sporeflow_state": 1, "agents": {}})
    result = CliRunner().invoke(cli, ["run", str(FIXTURES / "stateful_organism.yaml"),
                                      "--until-idle", "--quiet", "--state", str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "cannot write the state file" in result.output


def test_a_state_file_nested_past_the_parser_is_refused_by_name(tmp_path: Path) -> None:
    """Found by an attacker: a --state file 100,000 levels deep raised RecursionError, a
    traceback, where other malformed snapshots get an OrganismStateError."""
    path = tmp_path / "state.json"
    path.write_text("[" * 100_000)
    with pytest.raises(OrganismStateError, match="is not JSON \\(it nests deeper than the "
                                                 "parser goes\\); remove it to start afresh"):
        read_snapshot(path)


async def test_an_on_stop_that_hangs_is_abandoned_within_the_drain_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    stopped: list[str] = []

    class Hangs:
        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

        async def on_stop(self) -> None:
            await asyncio.Event().wait()  # a connection that never closes, say

    class Polite:
        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

        async def on_stop(self) -> None:
            stopped.append("polite")

    organism = Organism.from_dict({"agents": {"hangs": {"handler": Hangs, "lazy": False},
                                              "polite": {"handler": Polite, "lazy": False}}})
    await organism.start()
    stop = asyncio.ensure_future(organism.stop(drain_timeout=0.2))
    done, _ = await asyncio.wait({stop}, timeout=10)  # a backstop: the stop must end by itself
    assert done, "the stop waited on the hanging on_stop"
    assert organism.state == "stopped"
    assert stopped == ["polite"]  # the other agents' hooks still ran
    assert "on_stop of agent 'hangs' did not end within" in caplog.text


async def test_a_snapshot_refused_for_one_agent_changes_no_other() -> None:
    async def count(spore: Spore, ctx: Any) -> None:
        ctx.state["n"] = ctx.state.get("n", 0) + 1

    class Forgetful:  # keeps no state: it has no load_state
        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

    organism = Organism.from_dict({"agents": {"a": {"handler": count},
                                              "b": {"handler": count},
                                              "c": {"handler": Forgetful}}})
    async with organism.running():
        await organism.send("a", {})
        await organism.idle()
        with pytest.raises(OrganismStateError, match="agent 'b' is a function agent: its "
                                                     "state must be a dict"):
            organism.load_state({"sporeflow_state": 1, "agents": {"a": {"n": 100}, "b": 5}})
        with pytest.raises(OrganismStateError, match="agent 'c' has saved state but its "
                                                     "class .*Forgetful' has no load_state"):
            organism.load_state({"sporeflow_state": 1, "agents": {"a": {"n": 100},
                                                                  "c": {"x": 1}}})
        assert organism.save_state()["agents"] == {"a": {"n": 1}}  # as it was
        await organism.send("c", {})  # nothing pending for c: its spores are handled
        await organism.idle()
    assert list(organism.dead_letters) == []


async def test_the_stop_cancels_the_hanging_on_stop_of_an_agent_a_reload_removed() -> None:
    """Found by tests/random_reloads.py: the removed agent's hook, run by the reload, was
    orphaned when the stop cancelled the reload's work, and still ran after the stop."""
    began, ended = asyncio.Event(), asyncio.Event()

    class Hangs:
        async def handle(self, spore: Spore, ctx: Any) -> None:
            return None

        async def on_stop(self) -> None:
            began.set()
            try:
                await asyncio.Event().wait()
            finally:
                ended.set()

    async def keep(spore: Spore, ctx: Any) -> None:
        return None

    organism = Organism.from_dict({"agents": {"hangs": {"handler": Hangs, "lazy": False},
                                              "keep": {"handler": keep}}})
    await organism.start()
    await organism.remove_agent("hangs")
    await asyncio.wait_for(began.wait(), 10)
    await organism.stop(drain_timeout=0.2)
    await asyncio.wait_for(ended.wait(), 10)  # a backstop: the stop cancels the hook
