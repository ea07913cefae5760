"""A handler's output that breaks a rule is told the same way whichever way it came out:
returned, yielded or sent with ``ctx.send`` (a WARNING naming the agent and the target,
a dead letter naming the agent), and the refusal says where in the knowledge it broke."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sporeflow.config import SporeError
from sporeflow.config.model import Limits
from sporeflow.pipeline import Context, Organism, Spore
from sporeflow.pipeline.core.deadletters import DeadLetter, StoredDeadLetter
from sporeflow.steps.validate import check_spore


class Thing:
    pass


class Unprintable:
    """An object of a handler's own whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def returned(knowledge: dict[str, Any]) -> Any:
    async def handler(spore: Spore, ctx: Context) -> dict[str, Any]:
        return knowledge

    return handler


def yielded(knowledge: dict[str, Any]) -> Any:
    async def handler(spore: Spore, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        yield knowledge

    return handler


def sent(knowledge: dict[str, Any]) -> Any:
    async def handler(spore: Spore, ctx: Context) -> None:
        await ctx.send("sink", knowledge)

    return handler


@pytest.mark.parametrize("way", [returned, yielded, sent])
@pytest.mark.parametrize(("knowledge", "reason"), [
    ({"when": datetime.now(UTC)}, "invalid"),
    ({"blob": "x" * 300_000}, "limit exceeded"),
    # Found by the dlq helper: quoting it raised its RuntimeError in the handler, which
    # failed (ctx.send) instead of the send being refused as invalid.
    ({"odd": Unprintable()}, "invalid"),
])
async def test_a_refused_output_is_a_warning_and_a_letter_naming_its_agent(
        way: Any, knowledge: dict[str, Any], reason: str,
        caplog: pytest.LogCaptureFixture) -> None:
    organism = Organism.from_dict({
        "limits": {"max_spore_bytes": 100_000},
        "agents": {"maker": {"handler": way(knowledge), "emit": {"to": "sink"}},
                   "sink": {"handler": lambda spore, ctx: None}}})
    with caplog.at_level(logging.WARNING, logger="sporeflow"):
        async with organism.running():
            await organism.send("maker", {})
            await organism.idle()
            assert organism.stats()["agents"]["sink"]["handled"] == 0
    # (ctx.send raises in the handler too: its spore is a letter of its own, handler failed)
    [letter] = [letter for letter in organism.dead_letters if letter.reason == reason]
    assert letter.agent == "maker"
    assert letter.spore.from_agent == "maker"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    told = f"refused: maker -> sink: {reason}: "  # the reason was not in the line
    assert any(message.startswith(told) for message in warnings), warnings
    if reason == "limit exceeded":  # sizes and the limit only: said whole
        assert any(" bytes as JSON, over limits.max_spore_bytes=" in message
                   for message in warnings), warnings


async def test_an_expired_output_is_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Time running out is not the sender's mistake: told at INFO as before."""
    async def maker(spore: Spore, ctx: Context) -> Spore:
        return Spore(knowledge={}, to_agent="sink",
                     expires_at=datetime(2000, 1, 1, tzinfo=UTC))

    organism = Organism.from_dict({"agents": {"maker": {"handler": maker},
                                              "sink": {"handler": lambda s, c: None}}})
    with caplog.at_level(logging.INFO, logger="sporeflow"):
        async with organism.running():
            await organism.send("maker", {})
            await organism.idle()
    [letter] = organism.dead_letters
    assert (str(letter.reason), letter.agent) == ("expired", None)
    assert not [r for r in caplog.records
                if r.levelno >= logging.WARNING and letter.spore.id in r.getMessage()]


@pytest.mark.parametrize(("knowledge", "message"), [
    ({"a": {"b": [1, {"c": Thing()}]}},
     "knowledge.a.b[1].c holds a Thing, which is not JSON: <"),
    ({"when": datetime(2026, 12, 7, 0, 22, 41, 123456)},
     "knowledge.when holds a datetime, which is not JSON: datetime.datetime(2026, 12, 7, "
     "0, 22, 4…; write it as text with .isoformat()"),
    ({"tags": {"x"}}, "knowledge.tags holds a set, which is not JSON: {'x'}; make it a list"),
    ({"odd key": {1: "a"}}, 'knowledge["odd key"] has the key 1, an int: knowledge keys '
                            "must be strings"),
    ({"f": [float("inf")]}, "knowledge.f[0] holds inf, which JSON cannot represent"),
])
def test_what_is_not_json_is_named_by_its_place(knowledge: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(SporeError) as refused:
        check_spore(Spore(knowledge=knowledge), Limits())
    assert str(refused.value).startswith(message), str(refused.value)


def test_metadata_that_is_not_json_is_named_too() -> None:
    with pytest.raises(SporeError, match=r"^metadata\.trace holds a bytes"):
        check_spore(Spore(knowledge={}, metadata={"trace": b"\x00"}), Limits())


@pytest.mark.parametrize(("reason", "agent", "to_agent"), [
    ("no subscribers", "maker", None),  # refused at its sender: broadcast again as sent
    ("schema", "maker", None),
    ("handler failed", "reader", "reader"),  # failed at one subscriber: to it alone
    ("handler failed", "maker", "maker"),  # its sender subscribes to the channel too
])
def test_a_replayed_broadcast_goes_where_it_failed(reason: str, agent: str,
                                                   to_agent: str | None) -> None:
    broadcast = Spore(knowledge={}, from_agent="maker", channel="news")
    letter = DeadLetter.of(broadcast, reason, None, agent=agent)
    assert StoredDeadLetter(1, letter).replayable().to_agent == to_agent
