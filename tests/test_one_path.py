"""One path for every spore (issue 15): forged responses, wrongly typed fields from every
entry, stages that exist for agents added later, and a user's own stage."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiostream import pipable_operator, streamcontext

from sporeflow.config import StageSpec
from sporeflow.pipeline import (
    Context,
    Organism,
    OrganismStateError,
    Spore,
    SporeDeadLettered,
    SporeError,
)
from sporeflow.pipeline.core.ledger import LedgerHook
from sporeflow.pipeline.core.requests import new_request_id
from sporeflow.steps import SporeType


def reasons(organism: Organism) -> list[str]:
    return [str(letter.reason) for letter in organism.dead_letters]


# -- responses ------------------------------------------------------------------------

async def test_a_hermit_cannot_reach_another_agent_by_any_spore_type() -> None:
    handled: list[str] = []

    async def victim(spore: Spore, ctx: Context) -> None:
        handled.append(spore.spore_type)

    async def hermit(spore: Spore, ctx: Context) -> list[Spore]:
        return [Spore(knowledge={"x": kind.value}, spore_type=kind, to_agent="victim",
                      reply_to="guess-1")
                for kind in SporeType if kind is not SporeType.BROADCAST]

    organism = Organism.from_dict({"agents": {
        "victim": {"handler": victim}, "hermit": {"handler": hermit, "peers": []}}})
    async with organism.running():
        await organism.send("hermit", {})
        await organism.idle()
    assert handled == []
    assert sorted(reasons(organism)) == sorted(
        ["not a peer"] * 3 + ["unexpected response"])


async def test_a_forged_response_never_resolves_another_agents_request() -> None:
    asked = asyncio.Event()
    release = asyncio.Event()
    seen_request: list[str] = []

    async def oracle(spore: Spore, ctx: Context) -> dict[str, Any]:
        seen_request.append(spore.id)
        asked.set()
        await release.wait()
        return {"answer": "genuine"}

    async def forger(spore: Spore, ctx: Context) -> Spore:
        # It knows the request's id (the worst case) but is not the agent asked.
        return Spore(knowledge={"answer": "forged"}, spore_type=SporeType.RESPONSE,
                     to_agent="system", reply_to=spore.knowledge["target"])

    organism = Organism.from_dict({"agents": {"oracle": {"handler": oracle},
                                              "forger": {"handler": forger}}})
    refused = asyncio.Event()
    organism.events.subscribe(
        lambda event: refused.set() if isinstance(event, SporeDeadLettered) else None)
    async with organism.running():
        pending = asyncio.ensure_future(organism.request("oracle", {}, timeout=10))
        await asyncio.wait_for(asked.wait(), 5)
        await organism.send("forger", {"target": seen_request[0]})
        await asyncio.wait_for(refused.wait(), 5)
        release.set()
        answer = await pending
    assert answer.knowledge == {"answer": "genuine"}
    assert reasons(organism) == ["unexpected response"]


def test_request_ids_are_unguessable() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 for i in ids)  # 128 random bits, not a counter


async def test_requests_from_handlers_and_outside_carry_random_ids() -> None:
    ids: list[str] = []

    async def echo(spore: Spore, ctx: Context) -> dict[str, Any]:
        ids.append(spore.id)
        return {}

    async def asker(spore: Spore, ctx: Context) -> None:
        await ctx.request("echo", {})

    organism = Organism.from_dict({"agents": {"echo": {"handler": echo},
                                              "asker": {"handler": asker}}})
    async with organism.running():
        await organism.request("echo", {}, timeout=5)
        await organism.send("asker", {})
        await organism.idle()
    assert len(ids) == 2
    assert all(len(i) == 32 and "-" not in i for i in ids)


# -- wrongly typed fields -----------------------------------------------------------

BAD_FIELDS: list[tuple[str, Any]] = [
    ("spore_type", "request"), ("created_at", "2026-01-01T00:00:00Z"), ("created_at", 17),
    ("created_at", datetime(2026, 1, 1)), ("expires_at", "soon"), ("priority", "high"),
    ("hops", "1"), ("thread_id", 5), ("reply_to", 5), ("metadata", []), ("id", 7),
    ("knowledge_references", ["not", "a", "tuple"]), ("data_references", (1,)),
    ("to_agent", 3), ("from_agent", ""), ("channel", None),
]


def bad_spore(field: str, value: Any) -> Spore:
    fields: dict[str, Any] = {"knowledge": {"n": 1}, "to_agent": "sink", field: value}
    return Spore(**fields)


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
async def test_a_wrongly_typed_field_from_outside_is_refused_naming_it(
        field: str, value: Any) -> None:
    organism = Organism.from_dict({"agents": {"sink": {"handler": lambda s, c: None}}})
    async with organism.running():
        with pytest.raises(SporeError) as refused:
            await organism.submit(bad_spore(field, value))
        await organism.send("sink", {"n": 2})
        await organism.idle()
        assert organism.stats()["agents"]["sink"]["handled"] == 1
    assert field in str(refused.value)


# A handler's spore gets its sender set to the agent, an id derived from its parent's
# (steps.ids) and its parent's thread: those fields cannot be wrong on this path.
@pytest.mark.parametrize(("field", "value", "journal"), [
    (field, value, journal) for field, value in BAD_FIELDS for journal in (False, True)
    if field not in ("from_agent", "id", "thread_id")])
async def test_a_wrongly_typed_field_returned_by_a_handler_is_a_dead_letter(
        field: str, value: Any, journal: bool, tmp_path: Path) -> None:
    handled: list[int] = []

    async def maker(spore: Spore, ctx: Context) -> Spore:
        return bad_spore(field, value)

    async def sink(spore: Spore, ctx: Context) -> None:
        handled.append(spore.knowledge["n"])

    organism = Organism(Organism.from_dict({"agents": {
        "maker": {"handler": maker}, "sink": {"handler": sink}}}).spec,
        journal=tmp_path / "j.db" if journal else None)
    async with organism.running():
        await organism.send("maker", {})
        await organism.idle()
        # The organism (and its journal) keep working.
        await asyncio.wait_for(organism.send("sink", {"n": 2}), 5)
        await organism.idle()
        if organism.journal is not None:
            assert organism.stats()["journal"]["failed"] is False
    assert handled == [2]
    letters = list(organism.dead_letters)
    assert [str(letter.reason) for letter in letters] in (["invalid"], ["limit exceeded"])
    assert field in letters[0].error


# -- the wiring snapshot and the declared chain -------------------------------------------

async def test_an_added_agents_schema_refuses_a_breaking_broadcast_every_time(
        tmp_path: Path) -> None:
    (tmp_path / "needs_n.json").write_text(json.dumps(
        {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}))
    heard: list[Any] = []

    async def late(spore: Spore, ctx: Context) -> None:
        heard.append(spore.knowledge)

    organism = Organism.from_dict({"channels": {"news": {}}, "agents": {
        "early": {"handler": lambda s, c: None, "subscribe": ["news"]}}}, base_dir=tmp_path)
    async with organism.running():
        await organism.broadcast({"n": 0}, channel="news")  # the chain is running already
        await organism.idle()
        await organism.add_agent("late", {"handler": late, "subscribe": ["news"],
                                          "schema": "needs_n.json"})
        for _ in range(3):
            await organism.broadcast({"n": "not a number"}, channel="news")
        await organism.broadcast({"n": 1}, channel="news")
        await organism.idle()
    assert heard == [{"n": 1}]
    assert reasons(organism) == ["schema"] * 3


@pipable_operator
async def redact(source: AsyncIterable[list[Spore]], *, reject: Any,
                 seen: list[str]) -> AsyncIterator[list[Spore]]:
    """Hide the `secret` field of every knowledge; refuse spores marked `drop`."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            kept = []
            for spore in batch:
                seen.append(spore.from_agent)
                if spore.knowledge.get("drop"):
                    reject(spore, "invalid", SporeError("dropped by the redaction stage"))
                    continue
                if "secret" in spore.knowledge:
                    spore = Spore(**{**{f: getattr(spore, f) for f in (
                        "spore_type", "from_agent", "to_agent", "channel", "priority",
                        "reply_to", "thread_id", "hops", "metadata", "id", "created_at")},
                        "knowledge": {**spore.knowledge, "secret": "***"}})
                kept.append(spore)
            if kept:
                yield kept


async def test_a_user_stage_sees_every_spore_including_replayed_ones(tmp_path: Path) -> None:
    received: list[Any] = []
    blocking = asyncio.Event()

    async def keep(spore: Spore, ctx: Context) -> None:
        if spore.knowledge.get("hold") and not received:
            blocking.set()
            await asyncio.Event().wait()  # never finishes: the stop leaves it in the journal
        received.append(spore.knowledge)

    seen: list[str] = []
    stage = StageSpec(operator=redact, before="route", options={"seen": seen})
    spec = Organism.from_dict({"agents": {"keep": {"handler": keep}}}).spec
    journal = tmp_path / "j.db"
    first = Organism(spec, journal=journal, stages=[stage])
    await first.start()
    await first.send("keep", {"drop": True})
    await first.send("keep", {"hold": True, "secret": "b"}, sender="holder")
    await asyncio.wait_for(blocking.wait(), 5)
    assert await first.stop(drain_timeout=0) == 1
    assert seen == ["system", "holder"]
    # The held one is no dead letter: the journal keeps it for the next start.
    assert reasons(first) == ["invalid"]
    assert first.stats()["totals"]["unfinished_kept"] == 1
    received.append({"first run": "over"})
    second = Organism(spec, journal=journal, stages=[stage])
    async with second.running():
        await second.idle()
    # Replayed from the journal, through the user's stage: seen and redacted again.
    assert seen == ["system", "holder", "holder"]
    assert received == [{"first run": "over"}, {"hold": True, "secret": "***"}]


async def test_a_journaled_broadcast_refused_by_one_schema_stays_pending_for_the_others(
        tmp_path: Path) -> None:
    (tmp_path / "needs_n.json").write_text(json.dumps({"type": "object", "required": ["n"]}))
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(spore: Spore, ctx: Context) -> None:
        started.set()
        await release.wait()

    spec = Organism.from_dict({"channels": {"news": {}}, "agents": {
        "strict": {"handler": lambda s, c: None, "subscribe": ["news"],
                   "schema": "needs_n.json"},
        "slow": {"handler": slow, "subscribe": ["news"]}}}, base_dir=tmp_path).spec
    organism = Organism(spec, journal=tmp_path / "j.db")
    async with organism.running():
        await organism.broadcast({"no": "n"}, channel="news")
        await asyncio.wait_for(started.wait(), 5)
        assert organism.journal is not None
        await organism.journal.flush()
        # strict refused it; slow still has it: the spore is unfinished, not deleted.
        assert organism.journal.pending == 1
        release.set()
        await organism.idle()
        await organism.journal.flush()
        assert organism.journal.pending == 0
    assert reasons(organism) == ["schema"]


STAGE_MODULE = '''
from aiostream import pipable_operator, streamcontext


@pipable_operator
async def tag(source, *, reject, label):
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield [type(spore)(**{**{f: getattr(spore, f) for f in spore.__dataclass_fields__},
                                  "metadata": {**spore.metadata, "tag": label}})
                   for spore in batch]


def not_an_operator(source):
    return source
'''


def write_staged_organism(tmp_path: Path, stages: str) -> Path:
    (tmp_path / "stages_mod.py").write_text(STAGE_MODULE)
    (tmp_path / "keep_mod.py").write_text(
        "seen = []\n\nasync def keep(spore, ctx):\n    seen.append(spore.metadata.get('tag'))\n")
    file = tmp_path / "organism.yaml"
    file.write_text(f"agents:\n  keep: {{handler: keep_mod:keep}}\npipeline:\n{stages}")
    return file


async def test_a_stage_declared_in_organism_yaml_runs_in_the_chain(tmp_path: Path) -> None:
    file = write_staged_organism(tmp_path, "  stages:\n    - {use: stages_mod:tag, before: route,"
                                           " options: {label: seen-by-yaml}}\n")
    organism = Organism.from_file(file)
    async with organism.running():
        await organism.send("keep", {})
        await organism.idle()
    import keep_mod  # type: ignore[import-not-found]  # beside the organism file

    assert keep_mod.seen == ["seen-by-yaml"]


@pytest.mark.parametrize(("stages", "hint"), [
    ("  stages:\n    - {use: stages_mod:missing, before: route}\n",
     "pipeline.stages.0.use: handler 'stages_mod:missing'"),
    ("  stages:\n    - {use: stages_mod:not_an_operator, after: route}\n",
     "not an aiostream pipable operator"),
    ("  stages:\n    - {use: stages_mod:tag, before: rout}\n", "pipeline.stages.0.before: 'rout'"),
    ("  stages:\n    - {use: stages_mod:tag}\n", "give exactly one of before: or after:"),
])
def test_a_bad_stage_declaration_is_a_located_error(tmp_path: Path, stages: str,
                                                     hint: str) -> None:
    from sporeflow.config import ConfigError, load_organism

    with pytest.raises(ConfigError) as error:
        load_organism(write_staged_organism(tmp_path, stages))
    assert hint in str(error.value)
    assert "organism.yaml:" in str(error.value)


def test_the_stage_names_a_user_may_name_are_the_chains() -> None:
    from sporeflow.config.model import STAGE_NAMES
    from sporeflow.pipeline.core.budget import ThreadBudget

    spec = Organism.from_dict({"agents": {"a": {"handler": lambda s, c: None}}}).spec
    organism = Organism(spec)
    budget = ThreadBudget(max_spores=10)
    from sporeflow.pipeline.core.chain import declare_chain
    from sporeflow.pipeline.core.run import Run

    run = Run(spec=spec, dead_letters=organism.dead_letters, requests=organism._requests,
              wiring=organism._cell, logger=organism.logger, now=organism.now,
              outbox=organism.outbox, listeners=[], outside=set(),
              running=lambda: True)
    stages = declare_chain(limits=spec.limits, ledger=run.ledger, requests=run.requests,
                           wiring=organism.wiring, outside=set(),
                           now=organism.now, budget=budget, owed=run.owed)
    assert tuple(stage.name for stage in stages) == STAGE_NAMES


@pytest.mark.parametrize(("argument", "value"), [
    ("priority", "high"), ("spore_type", "request"), ("expires_in", "soon")])
async def test_a_wrongly_typed_argument_of_ctx_send_raises_in_the_handler_and_is_refused(
        argument: str, value: Any) -> None:
    raised: list[BaseException] = []

    async def sender(spore: Spore, ctx: Context) -> None:
        try:
            await ctx.send("sink", {"n": 1}, **{argument: value})
        except Exception as exc:  # the refusal reaches the handler
            raised.append(exc)

    handled: list[Any] = []

    async def sink(spore: Spore, ctx: Context) -> None:
        handled.append(spore.knowledge)

    organism = Organism.from_dict({"agents": {"sender": {"handler": sender},
                                              "sink": {"handler": sink}}})
    async with organism.running():
        await organism.send("sender", {})
        await organism.idle()
        await organism.send("sink", {"n": 2})
        await organism.idle()
    assert handled == [{"n": 2}]
    assert len(raised) == 1
    assert isinstance(raised[0], SporeError)
    assert argument in str(raised[0])


@pipable_operator
async def explode(source: AsyncIterable[list[Spore]], *, reject: Any,
                  error: BaseException) -> AsyncIterator[list[Spore]]:
    async with streamcontext(source) as batches:
        async for batch in batches:
            if any(spore.knowledge.get("boom") for spore in batch):
                raise error
            yield batch


@pytest.mark.parametrize("error", [RuntimeError("a bug"), asyncio.CancelledError()])
async def test_a_chain_that_dies_says_so_whatever_it_raised(error: BaseException) -> None:
    """Even a CancelledError nobody asked for (the chain's task was not cancelled) is a
    crash: logged, the organism failed, idle() raising; never a chain silently gone."""
    async def keep(spore: Spore, ctx: Context) -> None:
        return None

    spec = Organism.from_dict({"agents": {"keep": {"handler": keep}}}).spec
    organism = Organism(spec, stages=[StageSpec(operator=explode, before="route",
                                                options={"error": error})])
    await organism.start()
    try:
        await organism.send("keep", {"boom": True})
        with pytest.raises(OrganismStateError, match="crashed"):
            await asyncio.wait_for(organism.idle(), 10)
        assert organism.state == "failed"
    finally:
        with contextlib.suppress(OrganismStateError):  # a stop says it crashed, again
            await organism.stop(drain_timeout=1)


# -- a user's stage before validate ---------------------------------------------------------

@pipable_operator
async def tag(source: AsyncIterable[list[Spore]], *, reject: Any,
              mark: Any) -> AsyncIterator[list[Spore]]:
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield [mark(spore) for spore in batch]


def _add_a_set(spore: Spore) -> Spore:
    spore.knowledge["tags"] = {"a", "b"}  # changed in place: no JSON now
    return spore


def _copied(spore: Spore) -> Spore:
    return dataclasses.replace(spore, metadata={**spore.metadata, "tagged": True})


async def test_a_send_a_stage_before_validate_changed_is_validated() -> None:
    # Before: ctx.send's spore, checked at the call, was known to validate by its id();
    # the user's stage changed it before validate, which did not look again.
    received: list[Any] = []

    async def fan(spore: Spore, ctx: Context) -> None:
        await ctx.send("sink", {"n": 1})

    async def sink(spore: Spore, ctx: Context) -> None:
        received.append(spore.knowledge)

    spec = Organism.from_dict({"agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}}).spec
    organism = Organism(spec, stages=[StageSpec(operator=tag, before="validate",
                                                options={"mark": _add_a_set})])
    async with organism.running():
        await organism.send("fan", {"go": True})
        await asyncio.wait_for(organism.idle(), 10)
    assert received == []
    assert reasons(organism) == ["invalid"]


async def test_a_spore_at_the_address_of_a_send_a_stage_replaced_is_validated() -> None:
    # Before: a stage before validate passed on copies; the sends it took were freed with
    # their id() left among the checked, and spores made later at those addresses (here:
    # knowledge holding NaN) passed validate unchecked.
    sends = 200
    received: list[Any] = []

    async def fan(spore: Spore, ctx: Context) -> None:
        for n in range(sends):
            await ctx.send("sink", {"n": n})

    async def bad(spore: Spore, ctx: Context) -> list[Spore]:
        return [Spore(knowledge={"bad": math.nan}, to_agent="sink", from_agent="bad")
                for _ in range(sends)]

    async def sink(spore: Spore, ctx: Context) -> None:
        received.append(spore.knowledge)

    spec = Organism.from_dict({"agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "bad": {"handler": bad, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}}).spec
    organism = Organism(spec, stages=[StageSpec(operator=tag, before="validate",
                                                options={"mark": _copied})])
    async with organism.running():
        await organism.send("fan", {"go": True})
        await asyncio.wait_for(organism.idle(), 10)
        await organism.send("bad", {"go": True})
        await asyncio.wait_for(organism.idle(), 10)
    assert [k for k in received if "bad" in k] == []
    assert sorted(k["n"] for k in received) == list(range(sends))
    assert organism.stats()["dead_letters"]["by_reason"] == {"invalid": sends}


class _Raises(LedgerHook):
    """A user's hook that raises wherever it is told something of agent ``fan``'s."""

    def admitted(self, spores: Any, agent: str | None, parent: Spore | None) -> None:
        if agent == "fan":
            raise RuntimeError("a hook of the user's failed")

    def handled(self, spore: Spore, replies: list[Spore], agent: str,
                latency: float) -> None:
        if agent == "fan":
            raise RuntimeError("a hook of the user's failed")


async def test_a_users_hook_that_raises_neither_fails_a_send_nor_unsettles_a_spore(
        caplog: pytest.LogCaptureFixture) -> None:
    # Before: a user's hook raising in `admitted` made ctx.send raise, its spore never
    # queued (and its id() left among the checked: a spore made next at that address,
    # here knowledge holding NaN, passed validate unchecked); raising in `handled`, it
    # skipped the settling: the spore stayed held and idle() waited for ever.
    sends = 50
    received: list[Any] = []
    raised: list[str] = []

    async def fan(spore: Spore, ctx: Context) -> list[Spore]:
        invalid = [Spore(knowledge={"bad": math.nan}, to_agent="sink", from_agent="fan")
                   for _ in range(sends)]  # copied as they are returned (steps.replies)
        for n in range(sends):
            try:
                await ctx.send("sink", {"n": n})
            except RuntimeError as exc:
                raised.append(str(exc))
        return invalid

    async def sink(spore: Spore, ctx: Context) -> None:
        received.append(spore.knowledge)

    spec = Organism.from_dict({"agents": {"fan": {"handler": fan, "emit": {"to": "sink"}},
                                          "sink": {"handler": sink}}}).spec
    organism = Organism(spec)
    organism.add_hook(_Raises())
    async with organism.running():
        await organism.send("fan", {"go": True})
        await asyncio.wait_for(organism.idle(), 10)
    assert raised == []
    assert sorted(knowledge["n"] for knowledge in received) == list(range(sends))
    assert organism.stats()["dead_letters"]["by_reason"] == {"invalid": sends}
    told = [r.getMessage() for r in caplog.records if "ledger hook" in r.getMessage()]
    assert told == [
        "the ledger hook _Raises.admitted raised (1 time(s) so far); the spore is settled "
        "all the same",
        "the ledger hook _Raises.handled raised (1 time(s) so far); the spore is settled "
        "all the same"]
