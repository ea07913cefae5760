"""Hot reload (pipeline/reload.py): the diff, refusals, and applying it to a running organism.

Every organism is written into ``tmp_path`` with handler modules named uniquely per
test, so that ``sys.modules`` carries nothing from one test to the next.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from sporeflow.config import organism_from_dict
from sporeflow.pipeline import Organism, Spore
from sporeflow.pipeline.broker.amqp_backend import AmqpBackend
from sporeflow.pipeline.broker.backend import Topology
from sporeflow.pipeline.observe.events import Event, OrganismReloaded, SporeHandled
from sporeflow.pipeline.reload.diff import ReloadReport, diff_specs
from sporeflow.pipeline.reload.watch import ReloadTriggers

from .conformance.harness import AMQP_URL, broker_reachable, wait_for
from .conftest import VirtualClockLoop

# The handlers most tests use: a forwarder, a sink, and gated and napping workers.
HANDLERS = """
import asyncio

GATES = {}      # name -> asyncio.Event, set by the test
STARTED = {}    # spore number -> asyncio.Event, set when its handler starts
RUNNING = [0]
PEAK = [0]


async def forward(spore, ctx):
    await asyncio.sleep(0)
    return {"n": spore.knowledge["n"]}


async def sink(spore, ctx) -> None:
    ctx.state.setdefault("seen", []).append(spore.knowledge["n"])


async def gated(spore, ctx) -> None:
    number = spore.knowledge["n"]
    STARTED.setdefault(number, asyncio.Event()).set()
    RUNNING[0] += 1
    PEAK[0] = max(PEAK[0], RUNNING[0])
    try:
        await GATES[spore.knowledge.get("gate", "main")].wait()
    finally:
        RUNNING[0] -= 1
    ctx.state.setdefault("seen", []).append(number)


async def nap(spore, ctx) -> None:
    STARTED.setdefault(spore.knowledge["n"], asyncio.Event()).set()
    await asyncio.sleep(spore.knowledge["s"])
    ctx.state.setdefault("seen", []).append(spore.knowledge["n"])


async def asker(spore, ctx):
    if "ask" not in spore.knowledge:
        return {"square": spore.knowledge["n"] ** 2}
    STARTED.setdefault("ask", asyncio.Event()).set()
    await GATES["ask"].wait()
    answer = await ctx.request(ctx.agent, {"n": spore.knowledge["ask"]}, timeout=10)
    return {"asked": spore.knowledge["ask"], "square": answer.knowledge["square"]}
"""


@pytest.fixture
def module(handler_modules: Callable[[str, str | None], str]) -> Callable[..., str]:
    """Write a handler module beside the organism (default: HANDLERS); see conftest."""
    return lambda source=HANDLERS, name=None: handler_modules(source, name)


def write_organism(folder: Path, text: str, **modules: str) -> Path:
    """Write ``text`` as folder/organism.yaml, with ``{mod}``-style names filled in."""
    file = folder / "organism.yaml"
    file.write_text(textwrap.dedent(text).format(**modules))
    return file


def state(organism: Organism, agent: str) -> list[Any]:
    seen: list[Any] = organism.wiring().agents[agent].state.get("seen", [])
    return seen


async def until(condition: Callable[[], bool], events: Any) -> None:
    """Wait, on the organism's events, until ``condition()`` holds (5 s backstop)."""
    changed = asyncio.Event()
    unsubscribe = events.subscribe(lambda event: changed.set())
    try:
        async with asyncio.timeout(5):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        unsubscribe()


async def started(handlers: Any, *keys: object) -> None:
    """Wait until the handlers of these spores (by number) have started (5 s backstop)."""
    async with asyncio.timeout(5):
        for key in keys:
            await handlers.STARTED.setdefault(key, asyncio.Event()).wait()


# -- the diff ------------------------------------------------------------------------


def _handler_a(spore: Any, ctx: Any) -> None:
    return None


def _handler_b(spore: Any, ctx: Any) -> None:
    return None


def test_diff_names_added_removed_changed_fields_channels_and_limits() -> None:
    old = organism_from_dict({
        "channels": {"c": {"capacity": 5}, "gone": {}},
        "agents": {"keep": {"handler": _handler_a}, "swap": {"handler": _handler_a},
                   "tune": {"handler": _handler_a, "emit": {"to": "keep"}},
                   "drop": {"handler": _handler_a}},
        "limits": {"max_hops": 8}})
    new = organism_from_dict({
        "channels": {"c": {"capacity": 50}, "fresh": {}},
        "agents": {"keep": {"handler": _handler_a}, "swap": {"handler": _handler_b},
                   "tune": {"handler": _handler_a, "emit": {"to": "swap"}, "concurrency": 4,
                            "retry": {"attempts": 2}, "subscribe": ["c"]},
                   "new": {"handler": _handler_a, "boot": {}}},
        "limits": {"max_hops": 9}})
    diff = diff_specs(old, new)
    assert diff.added == ("new",)
    assert diff.removed == ("drop",)
    assert dict(diff.changed) == {"swap": ("handler",),
                                  "tune": ("subscribe", "emit", "concurrency", "retry")}
    assert diff.unchanged == ("keep",)
    assert (diff.channels_added, diff.channels_removed) == (("fresh",), ("gone",))
    assert dict(diff.channels_changed) == {"c": ("capacity",)}
    assert diff.limits_changed == ("max_hops",)
    assert not diff.empty
    assert diff_specs(new, new).empty


def test_report_to_dict_is_plain_and_matches_the_event_contract() -> None:
    report = ReloadReport(ok=True, source="o.yaml", added=("a",), changed={"b": ("emit",)})
    data = report.to_dict()
    event = OrganismReloaded(organism="x", report=data)
    assert (event.added, event.changed, event.refused) == (("a",), ("b",), False)
    assert data["changed"] == {"b": ["emit"]}
    assert "changed b (emit)" in report.summary()


# -- applying, while spores flow -------------------------------------------------------


async def test_emit_change_under_flow_handles_each_spore_once_and_reroutes_new_ones(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: flow}}
        agents:
          fwd: {{handler: {mod}:forward, emit: {{to: {target}}}, concurrency: 3}}
          a: {{handler: {mod}:sink}}
          b: {{handler: {mod}:sink}}
    """
    file = write_organism(tmp_path, text, mod=mod, target="a")
    organism = Organism.from_file(file)
    handled_by_a = 0

    def count(event: Event) -> None:
        nonlocal handled_by_a
        if isinstance(event, SporeHandled) and event.agent == "a":
            handled_by_a += 1

    organism.events.subscribe(count)
    sent = 0

    async def produce() -> None:
        nonlocal sent
        for n in range(300):
            await organism.send("fwd", {"n": n})
            sent += 1
            await asyncio.sleep(0)  # let the chain run between sends: spores are in flight

    async with organism.running():
        producer = asyncio.create_task(produce())
        await until(lambda: handled_by_a >= 20, organism.events)
        write_organism(tmp_path, text, mod=mod, target="b")
        report = await organism.reload()
        boundary = sent
        await producer
        await organism.idle()

    assert report.ok
    assert dict(report.changed) == {"fwd": ("emit",)}
    seen_a, seen_b = state(organism, "a"), state(organism, "b")
    assert sorted(seen_a + seen_b) == list(range(300))  # each spore handled exactly once
    assert all(n < boundary for n in seen_a)  # admitted after the reload: the new route
    assert set(range(boundary, 300)) <= set(seen_b)
    assert 20 <= len(seen_a)
    assert boundary < 300
    assert organism.stats()["agents"]["fwd"]["handled"] == 300  # counts went on
    assert organism.stats()["totals"]["dead_letters"] == 0


# -- refusals --------------------------------------------------------------------------


GOOD = """
    organism: {{name: guarded}}
    agents:
      fwd: {{handler: {mod}:forward, emit: {{to: a}}}}
      a: {{handler: {mod}:sink}}
      b: {{handler: {mod}:sink}}
"""


def _bad_yaml(folder: Path, mod: str) -> str:
    (folder / "organism.yaml").write_text("agents:\n  fwd: {handler: x:y\n")
    return r":2:8: <root>: YAML does not parse: the \{ opened here is not closed"


def _unknown_agent(folder: Path, mod: str) -> str:
    file = write_organism(folder, GOOD.replace("to: a", "to: bb"), mod=mod)
    # look for the value, not "bb": the random module name may hold those letters too
    column = file.read_text().splitlines()[3].index("to: bb") + len("to: ") + 1
    return rf":4:{column}: agents\.fwd\.emit\.to: unknown agent 'bb' \(did you mean 'b'\?\)"


def _missing_module(folder: Path, mod: str) -> str:
    file = write_organism(
        folder, GOOD.replace("{mod}:sink}}\n      b", "nowhere_at_all:sink}}\n      b"), mod=mod)
    column = file.read_text().splitlines()[4].index("nowhere_at_all:") + 1
    return (rf":5:{column}: agents\.a\.handler: handler module 'nowhere_at_all' is neither "
            rf"beside the organism file")


def _module_that_raises(folder: Path, mod: str) -> str:
    (folder / f"{mod}.py").write_text(HANDLERS + "\nraise RuntimeError('half-saved file')\n")
    return (r":4:\d+: agents\.fwd\.handler: handler module '\w+' does not import: "
            r"RuntimeError: half-saved file \(at \w+\.py:\d+\); agents 'fwd', 'a' and 'b' "
            r"use it")


@pytest.mark.parametrize("spoil", [_bad_yaml, _unknown_agent, _missing_module,
                                   _module_that_raises])
async def test_broken_file_is_refused_with_located_errors_and_a_later_fix_applies(
        tmp_path: Path, module: Callable[..., str],
        spoil: Callable[[Path, str], str]) -> None:
    mod = module()
    file = write_organism(tmp_path, GOOD, mod=mod)
    organism = Organism.from_file(file)
    reloads: list[OrganismReloaded] = []
    organism.events.subscribe(
        lambda event: reloads.append(event) if isinstance(event, OrganismReloaded) else None)
    async with organism.running():
        lanes = dict(organism.wiring().lanes)
        expected = spoil(tmp_path, mod)
        refused = await organism.reload()
        await organism.send("fwd", {"n": 1})  # the old wiring keeps handling
        await organism.idle()
        (tmp_path / f"{mod}.py").write_text(HANDLERS)
        write_organism(tmp_path, GOOD.replace("to: a", "to: b"), mod=mod)
        applied = await organism.reload()
        await organism.send("fwd", {"n": 2})
        await organism.idle()

    assert refused.refused
    assert not refused.changed
    assert re.search(re.escape(str(file)) + expected, refused.errors[0]), refused.errors
    assert state(organism, "a") == [1]
    assert state(organism, "b") == [2]
    assert applied.ok
    assert "fwd" in applied.changed
    if spoil is not _module_that_raises:  # else its module was re-imported: all agents swap
        assert organism.wiring().lanes["a"] is lanes["a"]
    stats = organism.stats()["reload"]
    assert stats["count"] == 2
    assert stats["last"]["ok"] is True
    assert [event.refused for event in reloads] == [True, False]
    assert reloads[0].errors == refused.errors


async def test_refusal_is_logged_as_an_error_with_line_and_column(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, GOOD, mod=mod)
    organism = Organism.from_file(file)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    organism.logger.addHandler(handler)
    organism.logger.setLevel(logging.INFO)
    try:
        async with organism.running():
            _unknown_agent(tmp_path, mod)
            await organism.reload()
            write_organism(tmp_path, GOOD.replace("to: a", "to: b"), mod=mod)
            await organism.reload()
    finally:
        organism.logger.removeHandler(handler)
        organism.logger.setLevel(logging.NOTSET)
    [error] = [r.getMessage() for r in records if r.levelno == logging.ERROR]
    assert re.search(re.escape(f"{file}:4:") + r"\d+: agents\.fwd\.emit\.to: unknown agent", error)
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any("applied: changed fwd (emit)" in line for line in infos)


async def test_organism_built_from_a_dict_needs_a_path_to_reload(tmp_path: Path) -> None:
    organism = Organism.from_dict({"agents": {"a": {"handler": _handler_a}}})
    async with organism.running():
        report = await organism.reload()
    assert report.refused
    assert "reload(path=...)" in report.errors[0]


# -- add, remove, change in one reload -------------------------------------------------


async def test_add_remove_change_in_one_reload_leaves_unchanged_agents_untouched(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, """
        organism: {{name: many}}
        agents:
          keep: {{handler: {mod}:sink}}
          gone: {{handler: {mod}:gated}}
          tweak: {{handler: {mod}:sink}}
    """, mod=mod)
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["main"] = asyncio.Event()
    async with organism.running():
        for n in range(5):
            await organism.send("keep", {"n": n})
        for n in range(3):
            await organism.send("gone", {"n": n})
        await started(handlers, 0)
        keep_lane, gone = organism.wiring().lanes["keep"], organism.wiring().agents["gone"]
        write_organism(tmp_path, """
            organism: {{name: many}}
            agents:
              keep: {{handler: {mod}:sink}}
              tweak: {{handler: {mod}:sink, concurrency: 3}}
              fresh: {{handler: {mod}:sink, boot: {{n: -1}}}}
        """, mod=mod)
        report = await organism.reload()
        for n in range(5, 10):
            await organism.send("keep", {"n": n})
        await organism.submit(Spore(knowledge={"n": 99}, to_agent="gone"))
        handlers.GATES["main"].set()  # the removed agent finishes what it held
        await organism.idle()

    assert (report.added, report.removed, dict(report.changed)) == (
        ("fresh",), ("gone",), {"tweak": ("concurrency",)})
    assert organism.wiring().lanes["keep"] is keep_lane
    assert keep_lane.handled == 10
    assert state(organism, "keep") == list(range(10))
    assert sorted(gone.state["seen"]) == [0, 1, 2]  # in flight and queued: all finished
    assert state(organism, "fresh") == [-1]  # its boot spore
    [letter] = list(organism.dead_letters)
    assert (letter.reason, letter.spore.knowledge) == ("unknown agent", {"n": 99})
    assert set(organism.stats()["agents"]) == {"keep", "tweak", "fresh"}


# -- changed settings apply after in-flight work ---------------------------------------


async def test_new_concurrency_applies_once_in_flight_work_finished(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: conc}}
        agents:
          slow: {{handler: {mod}:gated, concurrency: {n}}}
    """
    file = write_organism(tmp_path, text, mod=mod, n=1)
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES.update(first=asyncio.Event(), rest=asyncio.Event())
    async with organism.running():
        await organism.send("slow", {"n": 1, "gate": "first"})
        await organism.send("slow", {"n": 2, "gate": "rest"})
        await organism.send("slow", {"n": 3, "gate": "rest"})
        await started(handlers, 1)
        old_lane = organism.wiring().lanes["slow"]
        write_organism(tmp_path, text, mod=mod, n=3)
        report = await organism.reload()
        new_lane = organism.wiring().lanes["slow"]
        # The old lane's handler still runs; the new lane holds the rest, not running yet.
        assert (old_lane.busy, new_lane.queued, new_lane.busy) == (1, 2, 0)
        await organism.send("slow", {"n": 4, "gate": "rest"})  # new spores queue there too
        assert handlers.PEAK[0] == 1
        handlers.GATES["first"].set()
        await started(handlers, 2, 3, 4)
        peak = handlers.PEAK[0]
        handlers.GATES["rest"].set()
        await organism.idle()
    assert dict(report.changed) == {"slow": ("concurrency",)}
    assert peak == 3  # the three held spores ran side by side: the new concurrency
    assert sorted(state(organism, "slow")) == [1, 2, 3, 4]
    assert organism.stats()["agents"]["slow"]["handled"] == 4


def test_new_timeout_spares_the_handler_in_flight_and_holds_for_later_ones(
        virtual: Callable[..., Any], tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: timing}}
        agents:
          slow: {{handler: {mod}:nap{timeout}}}
    """
    file = write_organism(tmp_path, text, mod=mod, timeout="")

    async def main(loop: VirtualClockLoop) -> tuple[ReloadReport, Organism]:
        organism = Organism(Organism.from_file(file).spec, now=loop.wall)
        handlers = sys.modules[mod]
        async with organism.running():
            await organism.send("slow", {"n": 1, "s": 10})
            await organism.send("slow", {"n": 2, "s": 10})
            await started(handlers, 1)
            write_organism(tmp_path, text, mod=mod, timeout=", timeout: 1s")
            report = await organism.reload()
            await organism.idle()
        return report, organism

    report, organism = virtual(main)
    assert dict(report.changed) == {"slow": ("timeout",)}
    assert state(organism, "slow") == [1]  # ran 10 s under the old settings (no timeout)
    [letter] = list(organism.dead_letters)
    assert (letter.reason, letter.spore.knowledge["n"]) == ("timeout", 2)


async def test_in_flight_handler_awaiting_its_own_agent_finishes_across_a_swap(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: asking}}
        agents:
          asker: {{handler: {mod}:asker, concurrency: {n}}}
    """
    file = write_organism(tmp_path, text, mod=mod, n=1)
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["ask"] = asyncio.Event()
    async with organism.running():
        answer = asyncio.create_task(organism.request("asker", {"ask": 7}, timeout=10))
        await started(handlers, "ask")
        write_organism(tmp_path, text, mod=mod, n=2)
        report = await organism.reload()
        # Its request goes to the new lane, which must run although the old handler
        # has not finished: it waits on that very request.
        handlers.GATES["ask"].set()
        response = await answer
    assert report.ok
    assert response.knowledge == {"asked": 7, "square": 49}
    assert organism.stats()["totals"]["dead_letters"] == 0


async def test_stop_during_a_swap_dead_letters_what_the_old_lane_holds(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: stopping}}
        agents:
          slow: {{handler: {mod}:gated, concurrency: {n}}}
    """
    file = write_organism(tmp_path, text, mod=mod, n=1)
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["main"] = asyncio.Event()  # never set: the handler never ends
    await organism.start()
    await organism.send("slow", {"n": 1})
    await organism.send("slow", {"n": 2})
    await started(handlers, 1)
    write_organism(tmp_path, text, mod=mod, n=2)
    await organism.reload()
    left = await organism.stop(drain_timeout=0)
    assert left == 2
    assert sorted(letter.spore.knowledge["n"] for letter in organism.dead_letters) == [1, 2]
    assert {letter.reason for letter in organism.dead_letters} == {"shutdown"}


# -- handler modules ---------------------------------------------------------------------


async def test_edited_handler_module_is_reimported_and_its_agents_swap(
        tmp_path: Path, module: Callable[..., str]) -> None:
    tagger = ("async def tag(spore, ctx) -> None:\n"
              "    ctx.state.setdefault('seen', []).append('v1')\n")
    mod, other = module(tagger), module()
    file = write_organism(tmp_path, """
        organism: {{name: code}}
        agents:
          tagged: {{handler: {mod}:tag}}
          plain: {{handler: {other}:sink}}
    """, mod=mod, other=other)
    organism = Organism.from_file(file)
    async with organism.running():
        await organism.send("tagged", {})
        await organism.idle()
        plain_lane = organism.wiring().lanes["plain"]
        # Same size, same second: stale bytecode would bring v1 back.
        module(tagger.replace("v1", "v2"), name=mod)
        report = await organism.reload()
        await organism.send("tagged", {})
        await organism.idle()
        unchanged = await organism.reload()
    assert report.reimported == (mod,)
    assert dict(report.changed) == {"tagged": ("handler",)}
    assert state(organism, "tagged") == ["v1", "v2"]
    assert organism.wiring().lanes["plain"] is plain_lane
    assert unchanged.reimported == ()
    assert not unchanged.changed


TAGGER = ("PREFIX = 'v1'\n"
          "async def tag(spore, ctx) -> None:\n"
          "    ctx.state.setdefault('seen', []).append(PREFIX)\n")


@pytest.mark.parametrize(("edited", "said"), [
    # Found by a new user: a re-import ran the edited module over its old namespace, so
    # a function renamed in the file (tag -> tagg) still resolved by its old name: the
    # reload said "applied" and the old code ran on, where `sporeflow check` refused.
    (TAGGER.replace("def tag(", "def tagg("), "has no 'tag'"),
    # Found in review: that fix first emptied the namespace the running handlers read
    # their globals from: a file saved mid-edit was refused, and every later spore
    # failed with NameError.
    ("PREFIX = 'v2'\nasync def tag(spore, ctx) -> None:\n    return (\n", "SyntaxError"),
], ids=["renamed-away", "saved-mid-edit"])
async def test_a_refused_reimport_leaves_the_agent_as_it_was(
        tmp_path: Path, module: Callable[..., str], edited: str, said: str) -> None:
    mod = module(TAGGER)
    file = write_organism(tmp_path, """
        organism: {{name: refused}}
        agents:
          tagged: {{handler: {mod}:tag}}
    """, mod=mod)
    organism = Organism.from_file(file)
    async with organism.running():
        module(edited, name=mod)
        report = await organism.reload()
        await organism.send("tagged", {})
        await organism.idle()
    assert not report.ok
    assert any(said in error for error in report.errors), report.errors
    assert state(organism, "tagged") == ["v1"]  # nothing applied, nothing broken
    assert len(organism.dead_letters) == 0


async def test_concurrent_reloads_run_one_after_the_other(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, GOOD, mod=mod)
    organism = Organism.from_file(file)
    async with organism.running():
        write_organism(tmp_path, GOOD.replace("to: a", "to: b"), mod=mod)
        first, second = await asyncio.gather(organism.reload(), organism.reload())
    assert dict(first.changed) == {"fwd": ("emit",)}
    assert second.ok
    assert not second.changed  # it saw the first one's result
    assert organism.stats()["reload"]["count"] == 2


async def test_a_reload_waits_for_no_swap_of_the_agents_it_touches_or_not(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    text = """
        organism: {{name: overlap}}
        agents:
          slow: {{handler: {mod}:gated, concurrency: {n}}}
          fwd: {{handler: {mod}:forward, emit: {{to: {to}}}}}
          a: {{handler: {mod}:sink}}
          b: {{handler: {mod}:sink}}
    """
    file = write_organism(tmp_path, text, mod=mod, n=1, to="a")
    organism = Organism.from_file(file)
    handlers = sys.modules[mod]
    handlers.GATES["main"] = asyncio.Event()
    async with organism.running():
        await organism.send("slow", {"n": 1})
        await started(handlers, 1)
        write_organism(tmp_path, text, mod=mod, n=2, to="a")
        await organism.reload()  # slow's swap now waits for its in-flight handler
        write_organism(tmp_path, text, mod=mod, n=2, to="b")
        other = await organism.reload()  # touches fwd only: it goes ahead
        write_organism(tmp_path, text, mod=mod, n=3, to="b")
        # Touches slow: it stacks on the waiting swap (it waited for it, without bound:
        # a handler that never ends made it, and every reload after it, wait forever).
        last = await organism.reload()
        await organism.send("fwd", {"n": 2})  # flows meanwhile, on fwd's new route
        await until(lambda: state(organism, "b") == [2], organism.events)
        handlers.GATES["main"].set()
        await organism.idle()
    assert dict(other.changed) == {"fwd": ("emit",)}
    assert dict(last.changed) == {"slow": ("concurrency",)}
    assert "'slow': the previous reload's settings still wait for the handlers" in (
        last.warnings[0])
    assert organism.wiring().lanes["slow"].policy.concurrency == 3
    assert state(organism, "b") == [2]


async def test_reload_before_start_replaces_the_spec_the_start_builds(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, GOOD, mod=mod)
    organism = Organism.from_file(file)
    write_organism(tmp_path, GOOD.replace("to: a", "to: b"), mod=mod)
    report = await organism.reload()
    async with organism.running():
        await organism.send("fwd", {"n": 1})
        await organism.idle()
    assert report.ok
    assert state(organism, "b") == [1]


async def test_restart_only_settings_are_kept_and_reported(
        tmp_path: Path, module: Callable[..., str]) -> None:
    mod = module()
    file = write_organism(tmp_path, GOOD + "    limits: {{max_hops: 5, max_in_flight: 10}}\n",
                          mod=mod)
    organism = Organism.from_file(file)
    async with organism.running():
        write_organism(tmp_path, GOOD.replace("guarded", "renamed")
                       + "    limits: {{max_hops: 6, max_in_flight: 20}}\n", mod=mod)
        report = await organism.reload()
    assert report.ok
    assert set(report.limits_changed) == {"max_hops", "max_in_flight"}
    assert organism.spec.name == "guarded"
    assert organism.spec.limits.max_hops == 5
    assert organism.spec.limits.max_in_flight == 20
    notes = "\n".join(report.warnings)
    assert f"{file}:2:" in notes
    assert "organism.name" in notes
    assert "limits.max_hops" in notes


@pytest.mark.amqp
async def test_over_a_broker_adding_agents_is_refused_and_settings_apply(
        tmp_path: Path, module: Callable[..., str]) -> None:
    if (why := broker_reachable()) is not None:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({why})")
    mod = module()
    text = GOOD.replace("guarded", f"reload-{uuid.uuid4().hex[:10]}")
    file = write_organism(tmp_path, text, mod=mod)
    organism = Organism.from_file(file, backend=AMQP_URL)
    try:
        async with organism.running(drain_timeout=5):
            write_organism(tmp_path, text + "      c: {{handler: {mod}:sink}}\n", mod=mod)
            refused = await organism.reload()
            write_organism(tmp_path, text.replace("to: a", "to: b"), mod=mod)
            applied = await organism.reload()
            await organism.send("fwd", {"n": 1})
            await organism.idle()
    finally:
        await AmqpBackend(AMQP_URL).destroy(Topology.of(organism.spec))
    assert refused.refused
    assert "over a broker, a reload cannot add or remove agents" in refused.errors[0]
    assert dict(applied.changed) == {"fwd": ("emit",)}
    assert state(organism, "b") == [1]


# -- from the command line ----------------------------------------------------------------


HELLO = """
def hello(spore, ctx) -> None:
    print("booted", flush=True)
"""


def test_sighup_reloads_a_running_organism(tmp_path: Path, module: Callable[..., str]) -> None:
    mod, hello = module(), module(HELLO)
    text = GOOD + "      hello: {{handler: {hello}:hello, boot: {{}}}}\n"
    file = write_organism(tmp_path, text, mod=mod, hello=hello)
    process = subprocess.Popen(
        [sys.executable, "-m", "sporeflow.pipeline.cli", "run", str(file), "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(process.stdout), Lines(process.stderr)
    try:
        # The boot spore is handled once the organism runs, SIGHUP handler installed.
        out.wait_for("booted")
        write_organism(tmp_path, text.replace("to: a", "to: b"), mod=mod, hello=hello)
        process.send_signal(signal.SIGHUP)
        line = err.wait_for(": applied: ")
    finally:
        stop(process, out, err)
    assert line.startswith(f"reload: {file}: applied: changed fwd (emit)")
    assert process.returncode == 0


class _Counting:
    """A Reloadable that counts its reloads."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.reloads = 0
        self.reloaded = asyncio.Event()

    async def reload(self, path: str | Path | None = None) -> ReloadReport:
        self.reloads += 1
        self.reloaded.set()
        return diff_specs(self.spec, self.spec)


async def test_a_sighup_before_the_organism_runs_is_kept_for_after_and_never_ends_it() -> None:
    # Found by the whole suite under load: the CLI installed its SIGHUP handler only once
    # the start returned (later since the start may wait for its broker), and a SIGHUP
    # sent as a boot handler ran ended the process, SIGHUP's default.
    organism = _Counting(organism_from_dict({"agents": {"a": {"handler": print}}}))
    triggers = ReloadTriggers(organism, watch=False, echo=lambda line: None)
    triggers.listen()
    try:
        signal.raise_signal(signal.SIGHUP)  # taken by the loop's handler, not the default
        await wait_for(lambda: triggers.pending)
        assert organism.reloads == 0  # not before it runs
        triggers.start()
        await asyncio.wait_for(organism.reloaded.wait(), 10)
        assert organism.reloads == 1
    finally:
        await triggers.aclose()


def stop(process: subprocess.Popen[str], *outputs: Lines) -> None:
    """Ctrl-C the process, wait for it to drain and exit (killed after 20 s), close its
    outputs."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    finally:
        for output in outputs:
            output.close()


class Lines:
    """The lines of a process's output, read on a thread so that waits can time out."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self._stream = stream
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Once the process has ended: finish reading and close the stream."""
        self._thread.join(timeout=20)
        self._stream.close()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        """The first line holding ``needle``; fail after ``timeout`` seconds."""
        seen = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line with {needle!r} within {timeout}s; "
                                     f"saw {seen!r}") from None
            if line is None:
                raise AssertionError(f"the output ended without {needle!r}; saw {seen!r}")
            if needle in line:
                return line
            seen.append(line)
