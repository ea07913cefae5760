"""What a replay of a dead letter delivers, whatever its reason: found by a new user.

A replay means "handle it now": a letter whose expiry passed while it waited was
replayed and dead-lettered again at once as ``expired`` (its first reason lost, exit 0);
a response nobody awaits was "replayed" and came straight back as the same letter.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.core.deadletters import DeadLetter, StoredDeadLetter
from sporeflow.pipeline.core.replaying import replay_refusals


def _letter(number: int, spore: Spore, reason: str, agent: str | None = None) -> Any:
    return StoredDeadLetter(number, DeadLetter.of(spore, reason, None, agent=agent))


async def test_a_replayed_letter_whose_expiry_passed_is_handled() -> None:
    handled: list[Any] = []
    fail = [True]

    async def worker(spore: Spore, ctx: Any) -> None:
        if fail[0]:
            raise RuntimeError("not yet")
        handled.append(spore.knowledge["n"])

    organism = Organism.from_dict({"organism": {"name": "replays"},
                                   "agents": {"worker": {"handler": worker}}})
    async with organism.running():
        await organism.send("worker", {"n": 1}, expires_in=60)
        await organism.idle()
        [failed] = organism.dead_letters
        assert failed.reason == "handler failed"
        # It waited past its expiry as a dead letter; the handler is fixed; replay it.
        stale = failed.spore.expires_at - timedelta(days=1)  # as if it passed long ago
        stored = _letter(1, replace(failed.spore, expires_at=stale), "handler failed",
                         agent="worker")
        fail[0] = False
        spore = stored.replayable()
        assert spore.expires_at is None
        await organism.submit(spore)
        await organism.idle()
    assert handled == [1]
    assert [letter.reason for letter in organism.dead_letters] == ["handler failed"]


@pytest.mark.parametrize("reason", ["late response", "unexpected response"])
def test_a_response_nobody_awaits_is_never_replayed(reason: str) -> None:
    response = Spore(knowledge={"answer": 1}, from_agent="kb", to_agent="classifier",
                     spore_type=SporeType.RESPONSE, reply_to="r-gone",
                     created_at=datetime.now(UTC))
    allowed, refused = replay_refusals([_letter(1, response, reason, agent="kb")], None, ())
    assert allowed == []
    [why] = refused
    assert "a response nobody awaits" in why
    assert "purge it" in why


@pytest.mark.parametrize("reason", ["budget", "shutdown", "limit exceeded"])
def test_a_response_dead_for_another_reason_is_never_replayed_either(reason: str) -> None:
    """Found by review: the rule is keyed on two reasons, not on what a response is. A
    response refused 'budget' (its request failed with LimitExceeded then) or left by a
    stop ('shutdown': its asker is gone with the run) has nobody awaiting it either:
    replayed (say ``dlq replay --reason budget`` after raising the limit) it comes back
    at once as an 'unexpected response' letter, its first reason lost."""
    response = Spore(knowledge={"answer": 1}, from_agent="kb", to_agent="classifier",
                     spore_type=SporeType.RESPONSE, reply_to="r-gone",
                     created_at=datetime.now(UTC))
    allowed, refused = replay_refusals([_letter(1, response, reason)], None, ())
    assert allowed == []
    [why] = refused
    assert "a response nobody awaits" in why


async def test_a_dead_letter_notice_a_listener_failed_on_is_never_replayed() -> None:
    """Found by an attacker: the organism's notices are refused from anyone else (a forged
    one addressed to a listener reached it), so a replay, which submits as an outside
    sender, was refused with a message saying to fix the spore and replay again: it never
    could be. A notice is the organism's word about another letter, kept beside it: the
    rule of every replay (journal, broker, a running organism) says so, and what to do."""
    heard: list[Any] = []

    async def worker(spore: Spore, ctx: Any) -> None:
        raise RuntimeError("broken")

    async def pager(spore: Spore, ctx: Any) -> None:
        heard.append(spore.knowledge["reason"])
        raise RuntimeError("the pager is down")

    organism = Organism.from_dict({
        "organism": {"name": "pages"},
        "agents": {"worker": {"handler": worker},
                   "pager": {"handler": pager, "subscribe": ["dead-letter"]}}})
    async with organism.running():
        await organism.send("worker", {"n": 1})
        await organism.idle()
        letters = list(organism.dead_letters)
        assert sorted(letter.agent or "" for letter in letters) == ["pager", "worker"]
        stored = [StoredDeadLetter(n, letter) for n, letter in enumerate(letters, 1)]
        allowed, refused = replay_refusals(stored, None, ())
    assert [s.letter.agent for s in allowed] == ["worker"]
    [why] = refused
    assert "the organism's notice of another dead letter" in why
    assert "purge it" in why
    assert heard == ["handler failed"]
