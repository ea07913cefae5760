from __future__ import annotations

from typing import Any

from sporeflow.steps import RoutingTable, Spore, SporeType, route
from sporeflow.steps.route import no_agent_error, unheard_error

from .conftest import aiter_of, collect

TABLE = RoutingTable(
    agents=frozenset({"a", "b", "c", "closed"}),
    subscribers={"news": ("a", "b", "c")},
    peers={"closed": frozenset({"b"})},
    publishers={"quiet": frozenset({"a"})},
    channels=frozenset({"news", "quiet", "main"}),
)


async def run(*spores: Spore, **options: Any) -> tuple[list[Any], list[tuple[Spore, str]]]:
    rejected: list[tuple[Spore, str]] = []
    out = await collect(route.raw(
        aiter_of(list(spores)), table=lambda: TABLE,
        on_reject=lambda spore, reason, error: rejected.append((spore, reason)), **options))
    return [d for batch in out for d in batch], rejected


async def test_direct_spore_goes_to_its_agent() -> None:
    spore = Spore(knowledge={}, to_agent="b")
    deliveries, rejected = await run(spore)
    assert deliveries == [(spore, ("b",))]
    assert not rejected


async def test_broadcast_skips_sender_and_counts_fanout() -> None:
    spore = Spore(knowledge={}, from_agent="a", channel="news")
    routed: list[tuple[Spore, int]] = []
    deliveries, _ = await run(spore, on_broadcast=lambda s, n: routed.append((s, n)))
    assert deliveries == [(spore, ("b", "c"))]
    assert routed == [(spore, 2)]


async def test_unknown_agent_and_unheard_broadcast_are_rejected() -> None:
    lost = Spore(knowledge={}, to_agent="z")
    unheard = Spore(knowledge={}, channel="quiet", from_agent="a")
    nowhere = Spore(knowledge={}, channel="void")
    _, rejected = await run(lost, unheard, nowhere)
    assert rejected == [(lost, "unknown agent"), (unheard, "no subscribers"),
                        (nowhere, "unknown channel")]


async def test_peers_and_publishers_are_enforced() -> None:
    allowed = Spore(knowledge={}, from_agent="closed", to_agent="b")
    refused = Spore(knowledge={}, from_agent="closed", to_agent="c")
    # A response passes the sender's peers only when it answers a request sent to it.
    answer = Spore(knowledge={}, from_agent="closed", to_agent="c",
                   spore_type=SporeType.RESPONSE, reply_to="q1")
    forged = Spore(knowledge={}, from_agent="closed", to_agent="c",
                   spore_type=SporeType.RESPONSE, reply_to="q2")
    shout = Spore(knowledge={}, from_agent="b", channel="quiet")
    resolved: list[Spore] = []
    deliveries, rejected = await run(allowed, refused, answer, forged, shout,
                                     asked={"q1": "closed"}.get, on_response=resolved.append)
    assert [d[0] for d in deliveries] == [allowed]
    assert resolved == [answer]
    assert rejected == [(refused, "not a peer"), (forged, "unexpected response"),
                        (shout, "not a peer")]


async def test_only_the_asked_agent_resolves_a_pending_request() -> None:
    awaited = Spore(knowledge={}, from_agent="b", to_agent="a",
                    spore_type=SporeType.RESPONSE, reply_to="r1")
    impostor = Spore(knowledge={}, from_agent="c", to_agent="a",
                     spore_type=SporeType.RESPONSE, reply_to="r1")
    late = Spore(knowledge={}, to_agent="a", spore_type=SporeType.RESPONSE, reply_to="r2")
    unasked = Spore(knowledge={}, to_agent="a", spore_type=SporeType.RESPONSE, reply_to="r3")
    resolved: list[Spore] = []
    deliveries, rejected = await run(awaited, impostor, late, unasked, asked={"r1": "b"}.get,
                                     abandoned={"r2"}, on_response=resolved.append)
    assert resolved == [awaited]
    assert rejected == [(impostor, "unexpected response"), (late, "late response"),
                        (unasked, "unexpected response")]
    assert deliveries == []


async def test_a_spore_from_a_queue_goes_only_to_that_queues_agent() -> None:
    mine = Spore(knowledge={}, from_agent="a", to_agent="b")
    theirs = Spore(knowledge={}, from_agent="a", to_agent="c")
    heard = Spore(knowledge={}, from_agent="a", channel="news")
    unheard = Spore(knowledge={}, from_agent="a", channel="quiet")
    deliveries, rejected = await run(mine, theirs, heard, unheard, arrived=lambda spore: "b")
    assert deliveries == [(mine, ("b",)), (heard, ("b",))]
    assert rejected == [(theirs, "wrong queue"), (unheard, "wrong queue")]


async def test_spores_for_the_outside_world_are_handed_out() -> None:
    home = Spore(knowledge={}, from_agent="a", to_agent="cli")
    out: list[Spore] = []
    deliveries, rejected = await run(home, outside={"cli"}, on_outside=out.append)
    assert out == [home]
    assert not deliveries
    assert not rejected


def test_did_you_mean_never_suggests_the_word_itself() -> None:
    """Found by an attacker: 'reaches no agent (no subscribers) (did you mean 'main'?)'
    for the channel main itself."""
    from sporeflow.config.reasons import did_you_mean

    assert did_you_mean("main", ["main", "mains"]) == " (did you mean 'mains'?)"
    assert did_you_mean("main", ["main"]) == ""


def test_a_name_of_any_length_is_quoted_cut_short_and_never_matched_against_others() -> None:
    # Found in review: a handler sending to a name of a megabyte had it quoted whole,
    # twice, in its error and dead letter, after difflib held the loop comparing it.
    table = RoutingTable(organism="o", agents=frozenset({"sink"}))
    name = "sink" + "x" * 1_000_000
    for error in (no_agent_error(table, name, Spore(knowledge={}, to_agent=name)),
                  unheard_error(table, Spore(knowledge={}, channel=name, from_agent=name))):
        assert len(str(error)) < 600
        assert "…" in str(error)
        assert "did you mean" not in str(error)
    assert "(did you mean 'sink'?)" in str(no_agent_error(table, "sinkk"))


async def test_a_second_response_to_one_request_says_the_request_was_answered() -> None:
    # Found by a new user: a handler answering a request with a list of two had its second
    # item dead-lettered as answering 'no pending request', which it had just been.
    from sporeflow.pipeline import Organism

    async def pricer(spore: Spore, ctx: Any) -> list[dict[str, Any]]:
        return [{"price": 1}, {"price": 2}]

    org = Organism.from_dict({"agents": {"pricer": {"handler": pricer}}})
    async with org.running():
        answer = await org.request("pricer", {}, timeout=5)
        await org.idle()
    assert answer.knowledge == {"price": 1}
    [letter] = org.dead_letters
    assert letter.reason == "unexpected response"
    assert (f"answers request {answer.reply_to}, which an earlier response answered "
            f"already: a request takes one response") in letter.error


async def test_a_copy_of_the_response_that_answered_is_dropped_not_refused() -> None:
    # Found by a fault injector: over a broker a request redelivered (its responder's
    # connection lost mid-handling) is answered again with the same response (same id);
    # that copy was refused 'unexpected response', telling a handler to return one item.
    answer = Spore(knowledge={"n": 1}, from_agent="b", to_agent="a",
                   spore_type=SporeType.RESPONSE, reply_to="r1")
    copy = Spore(knowledge={"n": 1}, from_agent="b", to_agent="a", id=answer.id,
                 spore_type=SporeType.RESPONSE, reply_to="r1")
    second = Spore(knowledge={"n": 2}, from_agent="b", to_agent="a",
                   spore_type=SporeType.RESPONSE, reply_to="r1")
    # A response this process forwarded for a request that timed out here meanwhile comes
    # back to it through the broker: late, whatever was forwarded.
    late = Spore(knowledge={}, from_agent="b", to_agent="a", spore_type=SporeType.RESPONSE,
                 reply_to="r2")
    copies: list[Spore] = []
    deliveries, rejected = await run(copy, second, late, abandoned={"r2"},
                                     answered={"r1": answer.id, "r2": late.id},
                                     on_copy=copies.append)
    assert copies == [copy]
    assert rejected == [(second, "unexpected response"), (late, "late response")]
    assert deliveries == []
