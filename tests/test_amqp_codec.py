"""The AMQP wire form: Praval's layout, full round trips, and only SporeError on bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sporeflow.pipeline import Spore, SporeError, SporeType
from sporeflow.pipeline.broker.amqp_codec import spore_from_amqp, spore_to_amqp

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_headers_and_body_follow_pravals_layout() -> None:
    spore = Spore(knowledge={"n": 1}, spore_type=SporeType.REQUEST, from_agent="a",
                  to_agent="b", priority=7, created_at=NOW, expires_at=NOW + timedelta(seconds=30))
    body, headers, properties = spore_to_amqp(spore, now=NOW)
    assert json.loads(body) == {"n": 1}
    # Empty and default headers (reply_to, thread_id, channel main, hops 0, version 1.0)
    # are left out.
    assert headers == {
        "spore_id": spore.id, "spore_type": "request", "from_agent": "a", "to_agent": "b",
        "priority": "7", "created_at": NOW.isoformat(),
        "expires_at": (NOW + timedelta(seconds=30)).isoformat()}
    assert spore_from_amqp(body, headers) == spore
    assert properties["expiration"] == timedelta(seconds=30)
    assert (properties["priority"], properties["message_id"]) == (7, spore.id)


def test_the_default_priority_is_left_out_and_read_back() -> None:
    spore = Spore(knowledge={}, from_agent="a", to_agent="b", created_at=NOW)
    body, headers, properties = spore_to_amqp(spore)
    assert "priority" not in headers
    assert properties["priority"] == 5
    assert spore_from_amqp(body, headers) == spore


def test_a_priority_out_of_range_is_read_as_written_for_the_validate_stage() -> None:
    """Its range is the validate stage's limit (tests/test_broker_untrusted.py)."""
    spore = spore_from_amqp(b"{}", {"spore_id": "x", "spore_type": "knowledge",
                                     "from_agent": "a", "priority": "11"})
    assert spore.priority == 11


def test_every_field_survives_a_round_trip() -> None:
    spore = Spore(knowledge={"text": "é", "list": [1, 2.5, None]}, from_agent="a", to_agent=None,
                  channel="news", spore_type=SporeType.BROADCAST, priority=2, reply_to="r1",
                  thread_id="t1", hops=3, metadata={"kind": "note"},
                  knowledge_references=("k1",), data_references=("d1",),
                  created_at=NOW, expires_at=NOW + timedelta(minutes=1))
    body, headers, _ = spore_to_amqp(spore, now=NOW)
    assert spore_from_amqp(body, headers) == spore


def test_metadata_travels_in_pravals_envelope() -> None:
    body, _, _ = spore_to_amqp(Spore(knowledge={"n": 1}, metadata={"kind": "x"}))
    envelope = json.loads(body)
    assert envelope["_praval_spore_envelope"] == "2.0"
    assert (envelope["knowledge"], envelope["metadata"]) == ({"n": 1}, {"kind": "x"})


def test_a_praval_message_decodes_with_naive_timestamps_read_as_local_time() -> None:
    naive = datetime(2026, 5, 1, 12, 0)
    headers = {"spore_id": "p1", "spore_type": "request", "from_agent": "praval_asker",
               "to_agent": "squarer", "created_at": naive.isoformat(), "expires_at": "",
               "priority": "5", "reply_to": "", "version": "1.0", "correlation_id": ""}
    spore = spore_from_amqp(b'{"n": 7}', headers)
    assert (spore.id, spore.from_agent, spore.to_agent, spore.knowledge) == (
        "p1", "praval_asker", "squarer", {"n": 7})
    assert spore.created_at == naive.astimezone(UTC)
    assert (spore.channel, spore.hops, spore.expires_at) == ("main", 0, None)


def test_bytes_headers_are_read_as_utf8() -> None:
    spore = spore_from_amqp(b"{}", {"spore_id": b"x", "spore_type": b"knowledge",
                                    "from_agent": b"a", "hops": b"2"})
    assert (spore.id, spore.hops) == ("x", 2)


@pytest.mark.parametrize(("body", "headers", "message"), [
    (b"{", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a"}, "not JSON"),
    (b"[1]", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a"}, "knowledge"),
    (b"{}", {"spore_type": "knowledge", "from_agent": "a"}, "'spore_id' is missing"),
    (b"{}", {"spore_id": "x", "spore_type": "gossip", "from_agent": "a"}, "gossip"),
    (b"{}", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a",
             "priority": "high"}, "'priority'"),
    (b"{}", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a",
             "created_at": "yesterday"}, "ISO 8601"),
    (b"{}", {"spore_id": 5, "spore_type": "knowledge", "from_agent": "a"}, "must be text"),
    (b"{}", {"spore_id": b"\xff", "spore_type": "knowledge", "from_agent": "a"}, "UTF-8"),
    (b"{}", "not a table", "table"),
    (b"\xff\xfe", {"spore_id": "x", "spore_type": "knowledge", "from_agent": "a"},
     "not JSON"),
])
def test_a_bad_message_raises_spore_error_saying_what_is_wrong(
        body: bytes, headers: Any, message: str) -> None:
    with pytest.raises(SporeError, match=message):
        spore_from_amqp(body, headers)


def test_an_expired_spore_gets_no_time_left() -> None:
    past = Spore(knowledge={}, expires_at=datetime.now(UTC) - timedelta(seconds=5))
    assert spore_to_amqp(past)[2]["expiration"] == timedelta(0)
    assert "expiration" not in spore_to_amqp(Spore(knowledge={}))[2]
