"""A journal file is untrusted input: a row changed behind sporeflow's back is refused on
replay by the chain, like any spore, and dead-lettered with why; the others run."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore, SporeflowError
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.journal.store import Journal

Form = dict[str, Any]


def _set(**fields: Any) -> Callable[[Form], str]:
    return lambda form: json.dumps({**form, **fields})


def _knowledge_nan(form: Form) -> str:
    return json.dumps({**form, "knowledge": {"x": math.nan}})  # NaN: Python's, not JSON


def _truncated(form: Form) -> str:
    return json.dumps(form)[:-9]


# how the row is changed -> (the dead letter's reason, a piece of its error)
TAMPERINGS: dict[str, tuple[Callable[[Form], str], str, str]] = {
    "not json": (_truncated, "invalid", "holds no spore: its text is not JSON"),
    "not an object": (lambda form: "[1, 2]", "invalid", "must be a JSON object"),
    "unknown field": (_set(evil=1), "invalid", "unknown spore field(s) ['evil']"),
    "another id": (_set(id="someone-else"), "invalid", "'someone-else'"),
    "knowledge not JSON": (_knowledge_nan, "invalid", "which JSON cannot represent"),
    "knowledge a string": (_set(knowledge="{}"), "invalid", "knowledge must be a JSON object"),
    "hops a string": (_set(hops="3"), "invalid", "hops must be an integer"),
    "created_at garbage": (_set(created_at="yesterday"), "invalid", "created_at"),
    "priority out of range": (_set(priority=99), "limit exceeded", "priority 99"),
    "hops past the limit": (_set(hops=33), "limit exceeded", "over limits.max_hops=32"),
    "unknown agent": (_set(to_agent="nobody"), "unknown agent", "nobody"),
    "oversized": (_set(knowledge={"pad": "x" * (1 << 20)}), "limit exceeded",
                  "over limits.max_spore_bytes"),
}


async def test_tampered_rows_are_dead_lettered_on_replay_and_the_good_ones_handled(
        tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    good = [Spore(knowledge={"n": n}, to_agent="worker") for n in range(3)]
    victims = {name: Spore(knowledge={"n": 100 + i}, to_agent="worker")
               for i, name in enumerate(TAMPERINGS)}
    journal = Journal(path)
    await journal.open()
    await journal.record([good[0], *victims.values(), *good[1:]])
    await journal.close()
    with sqlite3.connect(path) as conn:  # as anyone with access to the file could
        for name, spore in victims.items():
            tamper = TAMPERINGS[name][0]
            conn.execute("UPDATE pending SET spore = ? WHERE id = ?",
                         (tamper(spore.to_dict()), spore.id))
    conn.close()
    handled: list[Any] = []

    async def worker(spore: Spore, ctx: Any) -> None:
        handled.append(spore.knowledge)

    spec = Organism.from_dict({"agents": {"worker": {"handler": worker}}}).spec
    org = Organism(spec, journal=path)
    async with org.running():
        await org.idle()
        assert org.stats()["journal"]["failed"] is False
    assert handled == [{"n": 0}, {"n": 1}, {"n": 2}]
    letters = {letter.spore.id: letter for letter in org.dead_letters}
    assert set(letters) == {spore.id for spore in victims.values()}
    for name, spore in victims.items():
        letter = letters[spore.id]
        _, reason, hint = TAMPERINGS[name]
        assert (name, str(letter.reason)) == (name, reason)
        assert hint in letter.error, (name, letter.error)
    with JournalFile(path) as file:  # settled for good, and `sporeflow dlq` reads them
        assert file.pending() == []
        assert {stored.letter.spore.id for stored in file.dead_letters()} == set(letters)


@pytest.mark.parametrize("name", ["not json", "priority out of range"])
async def test_a_replayed_dead_letter_of_a_tampered_row_is_refused_again(
        name: str, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    spore = Spore(knowledge={"n": 1}, to_agent="worker")
    journal = Journal(path)
    await journal.open()
    await journal.record([spore])
    await journal.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE pending SET spore = ?",
                     (TAMPERINGS[name][0](spore.to_dict()),))
    conn.close()
    handled: list[Any] = []
    spec = Organism.from_dict({"agents": {"worker": {
        "handler": lambda s, c: handled.append(s)}}}).spec
    for _ in range(2):
        org = Organism(spec, journal=path)
        async with org.running():
            await org.idle()
        [letter] = org.dead_letters
        assert letter.spore.id == spore.id
        with JournalFile(path) as file:  # `sporeflow dlq replay`
            if letter.reason == "invalid":  # no spore to deliver: never replayed
                assert file.replay(file.dead_letters()) == 0
                assert len(file.dead_letters()) == 1
                break
            assert file.replay(file.dead_letters()) == 1  # and refused again
    assert handled == []


@pytest.mark.parametrize("at", ["garbage", 7, b"\xff"])
async def test_a_dead_letter_row_with_an_unreadable_time_is_listed_and_purged(
        at: Any, tmp_path: Path) -> None:
    """Found by an attacker: one row whose time was not ISO text made every dlq command
    fail with a traceback, so it could not even be purged."""
    path = tmp_path / "j.db"
    await _one_dead_letter(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE dead_letters SET at = ?", (at,))
    conn.close()
    with JournalFile(path) as file:
        [letter] = file.dead_letters()
        assert letter.letter.at.year == 1970
        assert file.purge([letter]) == 1
        assert file.dead_letters() == []


@pytest.mark.parametrize(("column", "value"), [
    ("error", b"\xffbinary"), ("reason", b"handler failed"), ("agent", b"\xfe"),
    ("traceback", b"Traceback\xff"),
    ("spore", "created_at"), ("spore", "spore_type"), ("spore", "expires_at")])
def test_a_changed_dead_letter_row_is_listed_shown_and_purged(
        column: str, value: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a fault injector: one dead-letter row with a blob where text was, or a
    spore field of the wrong type, made `dlq list`, `list --json` or `show` fail with a
    traceback, so that it could not even be looked at."""
    from click.testing import CliRunner

    from sporeflow.pipeline.cli.main import cli

    path = tmp_path / "j.db"
    asyncio.run(_one_dead_letter(path))
    with sqlite3.connect(path) as conn:
        if column == "spore":  # that field of the spore made garbage
            [text] = conn.execute("SELECT spore FROM dead_letters").fetchone()
            conn.execute("UPDATE dead_letters SET spore = ?",
                         (json.dumps({**json.loads(text), value: "garbage"}),))
        else:
            conn.execute(f"UPDATE dead_letters SET {column} = ?", (value,))
    conn.close()
    monkeypatch.chdir(tmp_path)  # no organism.yaml here: the journal alone
    for command in (["list"], ["list", "--json"], ["show", "--id", "1"]):
        result = CliRunner().invoke(cli, ["dlq", *command, "--journal", str(path)])
        assert (result.exit_code, result.exception) == (0, None), result.output
        assert "dead letter" in result.output or "1" in result.output
    if column == "spore":
        shown = CliRunner().invoke(cli, ["dlq", "show", "--id", "1", "--journal", str(path)])
        assert "'garbage'" in shown.stdout  # what the row holds, as text
    result = CliRunner().invoke(cli, ["dlq", "purge", "--all", "--journal", str(path)])
    assert result.exit_code == 0
    with JournalFile(path) as file:
        assert file.dead_letters() == []


async def _one_dead_letter(path: Path) -> None:
    spec = Organism.from_dict({"agents": {"worker": {
        "handler": lambda s, c: (_ for _ in ()).throw(ValueError("no"))}}}).spec
    org = Organism(spec, journal=path)
    async with org.running():
        await org.send("worker", {"n": 1})
        await org.idle()


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def test_a_dead_letter_of_knowledge_nested_past_any_limit_is_journaled(
        tmp_path: Path) -> None:
    """Found by a fault injector: a handler sent knowledge nested past the interpreter's
    recursion limit; its dead letter, written as the text of the spore, raised in the
    journal's writer, and the journal failed: the run stopped, the next refused to start."""
    path = tmp_path / "j.db"
    knowledge = {"deep": _nested(5000)}

    async def sender(spore: Spore, ctx: Any) -> None:
        with pytest.raises(SporeflowError):
            await ctx.send("worker", knowledge)

    spec = Organism.from_dict({"agents": {"worker": {"handler": lambda s, c: None},
                                          "sender": {"handler": sender}}}).spec
    for _ in range(2):  # the second start finds the journal sound
        org = Organism(spec, journal=path)
        async with org.running():
            await org.send("sender", {})
            await org.idle()
        assert org.stats()["journal"]["failed"] is False
    with JournalFile(path) as file:
        letters = file.dead_letters()
    assert [stored.letter.agent for stored in letters] == ["sender", "sender"]
    assert all("not_json" in str(stored.letter.spore.knowledge) for stored in letters)


async def test_a_dead_letter_of_knowledge_past_any_size_is_journaled_as_bounded_text(
        tmp_path: Path) -> None:
    """Found in the last review: a handler returned knowledge of one list referred to ten
    times, twenty deep (10**20 lists as JSON); the chain refused it without writing it,
    but its dead letter's JSON form was written out whole for the journal, and the run
    never ended."""
    path = tmp_path / "j.db"
    tower: list[Any] = [1]
    for _ in range(20):
        tower = [tower] * 10

    spec = Organism.from_dict({"agents": {
        "maker": {"handler": lambda s, c: {"l": tower}, "emit": {"to": "sink"}},
        "sink": {"handler": lambda s, c: None}}}).spec
    org = Organism(spec, journal=path)
    async with org.running():
        await org.send("maker", {})
        await asyncio.wait_for(org.idle(), 20)  # a backstop: before, it never came
    with JournalFile(path) as file:
        [stored] = file.dead_letters()
    assert stored.letter.reason == "limit exceeded"
    assert "not_json" in str(stored.letter.spore.knowledge)
    assert len(str(stored.letter.spore.knowledge)) < 11_000  # the bounded text
