"""A replayed dead letter is delivered under the permission of its original delivery: a
broadcast's delivery to a subscriber reaches it again although the sender has ``peers``;
a spore that was never allowed stays refused, and the refusal is logged."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sporeflow.config import NotAPeer, organism_from_dict
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.core.deadletters import LetterChoice
from sporeflow.pipeline.journal.offline import JournalFile
from sporeflow.pipeline.service import operations


def _organism(received: list[Spore], *, fail_first: bool = True) -> Organism:
    failures = [fail_first]

    async def triage(spore: Spore, ctx: Any) -> None:
        if spore.knowledge.get("direct"):
            try:
                await ctx.send("archiver", {"n": 2})
            except NotAPeer:
                pass  # its dead letter is kept
        else:
            await ctx.broadcast({"n": 1}, channel="news")

    async def archiver(spore: Spore, ctx: Any) -> None:
        if failures[0]:
            failures[0] = False
            raise RuntimeError("disk full")
        received.append(spore)

    async def reader(spore: Spore, ctx: Any) -> None:
        return None

    return Organism(organism_from_dict({
        "organism": {"name": "replays"}, "channels": {"news": {}},
        "agents": {"triage": {"handler": triage, "peers": ["reader"]},
                   "archiver": {"handler": archiver, "subscribe": ["news"]},
                   "reader": {"handler": reader, "subscribe": ["news"]}}}))


async def test_a_replayed_broadcast_delivery_reaches_its_subscriber() -> None:
    received: list[Spore] = []
    organism = _organism(received)
    async with organism.running():
        await organism.send("triage", {})
        await organism.idle()
        [letter] = organism.dead_letters
        assert (letter.agent, letter.reason) == ("archiver", "handler failed")
        replayed = await operations.replay(organism, LetterChoice())
        await organism.idle()
    assert replayed.problems == ()
    assert list(organism.dead_letters) == []
    [spore] = received
    assert (spore.from_agent, spore.knowledge) == ("triage", {"n": 1})


async def test_a_spore_never_allowed_stays_refused_at_replay_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    received: list[Spore] = []
    organism = _organism(received, fail_first=False)
    async with organism.running():
        await organism.send("triage", {"direct": True})  # triage may not address archiver
        await organism.idle()
        [letter] = organism.dead_letters
        assert letter.reason == "not a peer"
        with caplog.at_level(logging.WARNING):
            replayed = await operations.replay(organism, LetterChoice())
        await organism.idle()
    assert received == []
    [problem] = replayed.problems
    assert "NotAPeer: agent 'triage' may not address 'archiver'" in problem
    assert len(organism.dead_letters) == 1  # put back
    [record] = [r for r in caplog.records if "replay" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "may not address 'archiver'" in record.getMessage()


async def test_a_broadcast_typed_spore_reaches_no_agent_beyond_the_channel() -> None:
    # Calling a direct spore a broadcast gains nothing: only subscribers of its channel.
    received: list[Spore] = []
    organism = _organism(received, fail_first=False)
    async with organism.running():
        forged = Spore(knowledge={"n": 3}, spore_type=SporeType.BROADCAST,
                       from_agent="triage", to_agent="archiver", channel="main")
        with pytest.raises(NotAPeer):
            await organism.submit(forged)
        allowed = dataclasses.replace(forged, channel="news")
        await organism.submit(allowed)
        await organism.idle()
    assert [s.knowledge for s in received] == [{"n": 3}]


async def direct_sender(spore: Spore, ctx: Any) -> None:
    try:
        await ctx.send("archiver", {"n": 2})
    except NotAPeer:
        pass  # its dead letter is kept


async def keep(spore: Spore, ctx: Any) -> None:
    return None


ORGANISM = """
organism: {name: replays, journal: j.db}
agents:
  triage: {handler: tests.test_replay_permissions:direct_sender, peers: []}
  archiver: {handler: tests.test_replay_permissions:keep}
"""


async def test_a_journal_replay_refused_by_the_rules_says_so_and_keeps_the_letter(
        tmp_path: Path) -> None:
    organism_file = tmp_path / "organism.yaml"
    organism_file.write_text(ORGANISM)
    organism = Organism.from_file(organism_file)
    async with organism.running():
        await organism.send("triage", {})
        await organism.idle()
    result = CliRunner().invoke(cli, ["dlq", "replay", str(organism_file), "--all"])
    assert result.exit_code == 1
    assert "not replayed: dead letter 1 (spore " in result.stderr
    assert "NotAPeer: agent 'triage' may not address 'archiver'" in result.stderr
    assert "0 dead letter(s) moved back" in result.stderr
    with JournalFile(tmp_path / "j.db") as journal:
        assert [stored.letter.reason for stored in journal.dead_letters()] == ["not a peer"]
        assert journal.pending() == []


def test_replay_refusals_let_a_broadcast_delivery_through_and_hold_a_direct_spore() -> None:
    from sporeflow.pipeline.core.deadletters import DeadLetter, StoredDeadLetter
    from sporeflow.pipeline.core.replaying import replay_refusals
    from sporeflow.steps import RoutingTable

    table = RoutingTable(agents=frozenset({"triage", "archiver"}),
                         subscribers={"news": ("archiver",)},
                         peers={"triage": frozenset()})
    broadcast = Spore(knowledge={}, spore_type=SporeType.BROADCAST, from_agent="triage",
                      channel="news")
    direct = Spore(knowledge={}, from_agent="triage", to_agent="archiver")
    letters = [StoredDeadLetter(1, DeadLetter(broadcast, "handler failed", "x", "archiver")),
               StoredDeadLetter(2, DeadLetter(direct, "not a peer", "x"))]
    allowed, refused = replay_refusals(letters, table, frozenset({"cli"}))
    assert [stored.number for stored in allowed] == [1]
    [why] = refused
    assert why.startswith("dead letter 2 (spore ")
    assert "NotAPeer: agent 'triage' may not address 'archiver'" in why


# -- letters that must never be replayed, and broadcasts only to a subscriber ---------------

def _letter(number: int, spore: Spore, reason: str, agent: str | None = None) -> Any:
    from sporeflow.pipeline.core.deadletters import DeadLetter, StoredDeadLetter

    return StoredDeadLetter(number, DeadLetter.of(spore, reason, None, agent=agent))


@pytest.mark.parametrize("reason", ["bad signature", "replayed"])
@pytest.mark.parametrize("with_table", [True, False])
def test_a_letter_refused_for_its_signature_is_never_replayed(reason: str,
                                                              with_table: bool) -> None:
    """Found by an attacker: dlq replay signed a forged (or changed, or replayed) spore
    with the organism's key and delivered it."""
    from sporeflow.pipeline.core.replaying import replay_refusals
    from sporeflow.pipeline.core.wiring import routing_table

    table = routing_table(_organism([]).spec) if with_table else None
    forged = _letter(1, Spore(knowledge={}, from_agent="reader", to_agent="archiver"), reason)
    fine = _letter(2, Spore(knowledge={}, from_agent="reader", to_agent="archiver"),
                   "handler failed", agent="archiver")
    allowed, refused = replay_refusals([forged, fine], table, ())
    assert allowed == [fine]
    [why] = refused
    assert why.startswith(f"dead letter 1 (spore {forged.letter.spore.id}): it failed its "
                          f"signature check ({reason}): a replay would sign it")


def test_an_invalid_letter_is_never_replayed() -> None:
    # Found by a new user: a lines source's bad line is a dead letter 'invalid' whose
    # spore stands in for it ({"line": ..., "number": ...}): replayed, handlers got that.
    from sporeflow.pipeline.core.replaying import replay_refusals

    stand_in = _letter(1, Spore(knowledge={"line": "not json", "number": 2},
                                from_agent="events", to_agent="archiver"), "invalid")
    allowed, refused = replay_refusals([stand_in], None, ())
    assert allowed == []
    [why] = refused
    assert "it was refused as invalid: what it keeps is no spore to deliver" in why


def test_a_replayed_broadcast_goes_only_to_a_subscriber() -> None:
    """Found by an attacker: a journal row naming a non-subscriber as the letter's agent
    made a replay hand a channel's broadcast to it."""
    from sporeflow.pipeline.core.replaying import replay_refusals
    from sporeflow.pipeline.core.wiring import routing_table

    table = routing_table(_organism([]).spec)
    news = Spore(knowledge={"secret": 1}, from_agent="triage", channel="news",
                 spore_type=SporeType.BROADCAST)
    to_triage = _letter(1, news, "handler failed", agent="triage")  # not a subscriber
    to_reader = _letter(2, news, "handler failed", agent="reader")
    # Refused at its sender (no subscriber then): replayed as the broadcast it was.
    as_sent = _letter(3, news, "no subscribers", agent="triage")
    allowed, refused = replay_refusals([to_triage, to_reader, as_sent], table, ())
    assert allowed == [to_reader, as_sent]
    assert refused == [f"dead letter 1 (spore {news.id}): NotAPeer: agent 'triage' does not "
                       f"subscribe to channel 'news': a broadcast goes only to its channel's "
                       f"subscribers (a delivery of one replayed, to the subscriber that "
                       f"failed on it); it stays a dead letter: once that is "
                       f"fixed, `dlq replay --id {news.id}` again, or `dlq purge --id "
                       f"{news.id}` to drop it"]


async def test_the_running_organism_keeps_a_letter_refused_for_its_signature() -> None:
    from sporeflow.pipeline.core.deadletters import DeadLetter

    received: list[Spore] = []
    organism = _organism(received, fail_first=False)
    forged = Spore(knowledge={"n": 9}, from_agent="reader", to_agent="archiver")
    async with organism.running():
        organism.dead_letters.add(DeadLetter.of(forged, "bad signature", None))
        result = await operations.replay(organism, LetterChoice())
        await organism.idle()
        assert received == []
        assert [letter.spore.id for letter in organism.dead_letters] == [forged.id]
    [problem] = result.problems
    assert "it failed its signature check (bad signature)" in problem


# -- letters of agents and channels taken out of the file --------------------------------------

async def fails(spore: Spore, ctx: Any) -> None:
    raise RuntimeError("disk full")


def test_a_letter_to_an_agent_or_channel_no_longer_there_is_refused_at_replay() -> None:
    from sporeflow.pipeline.core.replaying import replay_refusals
    from sporeflow.pipeline.core.wiring import routing_table

    table = routing_table(_organism([]).spec)
    gone = _letter(1, Spore(knowledge={}, from_agent="cli", to_agent="archivr"),
                   "handler failed", agent="archivr")
    old_news = _letter(2, Spore(knowledge={}, from_agent="triage", channel="old-news",
                                spore_type=SporeType.BROADCAST), "timeout")
    allowed, refused = replay_refusals([gone, old_news], table, frozenset({"cli"}))
    assert allowed == []
    assert "no agent 'archivr' in organism 'replays' (did you mean 'archiver'?)" in refused[0]
    assert "on channel 'old-news' reaches no agent (unknown channel)" in refused[1]


async def test_a_journal_replay_of_an_agent_taken_out_exits_1_and_keeps_the_letter(
        tmp_path: Path) -> None:
    # Was: "1 dead letter(s) moved back", exit 0; the next run made it `unknown agent`,
    # its first reason lost.
    organism_file = tmp_path / "organism.yaml"
    organism_file.write_text("organism: {name: replays, journal: j.db}\nagents:\n"
                             "  keeper: {handler: tests.test_replay_permissions:keep}\n"
                             "  archiver: {handler: tests.test_replay_permissions:fails}\n")
    organism = Organism.from_file(organism_file)
    async with organism.running():
        await organism.send("archiver", {})
        await organism.idle()
    organism_file.write_text("organism: {name: replays, journal: j.db}\nagents:\n"
                             "  keeper: {handler: tests.test_replay_permissions:keep}\n")
    result = CliRunner().invoke(cli, ["dlq", "replay", str(organism_file), "--all"])
    assert result.exit_code == 1
    assert "not replayed: dead letter 1 (spore " in result.stderr
    assert "no agent 'archiver' in organism 'replays'" in result.stderr
    with JournalFile(tmp_path / "j.db") as journal:
        assert [stored.letter.reason for stored in journal.dead_letters()] == [
            "handler failed"]
        assert journal.pending() == []


BOARD = {"organism": {"name": "board"}, "channels": {"board": {"publish": ["boss"]}},
         "agents": {"boss": {}, "director": {"subscribe": ["board"]}, "intern": {}}}


def _board(heard: list[tuple[str, Spore]]) -> dict[str, Any]:
    def handler(name: str) -> Any:
        async def handle(spore: Spore, ctx: Any) -> None:
            heard.append((name, spore))
        return handle

    return {**BOARD, "agents": {name: {"handler": handler(name), **settings}
                                for name, settings in BOARD["agents"].items()}}


async def test_a_broadcast_delivery_replayed_at_a_start_reaches_no_agent_off_its_channel(
        tmp_path: Path) -> None:
    """`dlq replay` moved a broadcast's delivery back to the journal, addressed to the
    subscriber that failed on it; the file took that agent off the channel before the
    next start: the start refuses it, as `dlq replay` would have (a broadcast goes only
    to its channel's subscribers), rather than hand it to an agent that left."""
    from sporeflow.pipeline.journal.store import Journal

    journal = Journal(tmp_path / "j.db")
    await journal.open()
    await journal.record([Spore(knowledge={"secret": 1}, from_agent="boss", channel="board",
                                spore_type=SporeType.BROADCAST, to_agent="intern")])
    await journal.close()
    heard: list[tuple[str, Spore]] = []
    organism = Organism(Organism.from_dict(_board(heard)).spec, journal=tmp_path / "j.db")
    async with organism.running():
        await organism.idle()
    assert heard == []
    [letter] = organism.dead_letters
    assert letter.reason == "not a peer"
    assert "'intern' does not subscribe to channel 'board'" in letter.error


async def test_a_broadcast_typed_spore_reaches_no_agent_off_its_channel_whatever_peers(
        ) -> None:
    """Calling a direct spore a broadcast of a channel gains nothing, also from a sender
    that may address anyone: the agent it names must subscribe to the channel."""
    heard: list[tuple[str, Spore]] = []
    organism = Organism.from_dict(_board(heard))
    async with organism.running():
        await organism.submit(Spore(knowledge={"secret": 2}, from_agent="boss",
                                    channel="board", spore_type=SporeType.BROADCAST,
                                    to_agent="intern"))
        await organism.submit(Spore(knowledge={"memo": 3}, from_agent="boss",
                                    channel="board", spore_type=SporeType.BROADCAST,
                                    to_agent="director"))
        await organism.idle()
    assert [(name, spore.knowledge) for name, spore in heard] == [("director", {"memo": 3})]
    assert [letter.reason for letter in organism.dead_letters] == ["not a peer"]
