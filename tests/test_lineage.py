"""Lineage: every spore a handler makes names its parent (``causation_id``) and its
conversation (``correlation_id``), and both survive every form a spore takes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sporeflow.config import Emit, Limits, SporeError
from sporeflow.pipeline import Organism, Spore, SporeType
from sporeflow.pipeline.broker.amqp_codec import (
    spore_body_headers,
    spore_from_amqp,
    spore_to_amqp,
)
from sporeflow.steps import shape_replies
from sporeflow.steps.spore import spore_as_found
from sporeflow.steps.validate import MAX_LINEAGE_ID_LENGTH, check_spore

ROOT = Spore(knowledge={}, from_agent="outside", to_agent="a", id="root-1")
CHILD = Spore(knowledge={"n": 1}, from_agent="a", to_agent="b", id="child-1",
              causation_id="root-1", correlation_id="root-1")


def test_a_reply_names_its_parent_and_the_roots_id_as_its_conversation() -> None:
    result = [{"n": 0}, Spore(knowledge={"n": 1}, causation_id="forged"), "<x>2</x>"]
    shaped = shape_replies(result, parent=ROOT, agent="a", emit=Emit(to="b"))
    assert [(s.causation_id, s.correlation_id) for s in shaped] == [("root-1", "root-1")] * 3
    [grandchild] = shape_replies({"n": 2}, parent=shaped[0], agent="b", emit=None)
    assert (grandchild.causation_id, grandchild.correlation_id) == (shaped[0].id, "root-1")


def test_a_root_with_a_correlation_id_passes_it_on() -> None:
    root = Spore(knowledge={}, from_agent="outside", to_agent="a", correlation_id="conv-9")
    [reply] = shape_replies({"n": 0}, parent=root, agent="a", emit=None)
    assert (reply.causation_id, reply.correlation_id) == (root.id, "conv-9")
    assert root.conversation == "conv-9"
    assert ROOT.conversation == "root-1"


@pytest.mark.parametrize("form", ["json", "xml", "amqp"])
def test_the_lineage_survives_every_wire_form(form: str) -> None:
    grandchild = Spore(knowledge={}, from_agent="b", to_agent="c", causation_id="child-1",
                       correlation_id="root-1")
    for spore in (ROOT, CHILD, grandchild):
        if form == "json":
            back = Spore.from_json(spore.to_json())
        elif form == "xml":
            back = Spore.from_xml(spore.to_xml())
        else:
            back = spore_from_amqp(*spore_body_headers(spore))
        assert (back.causation_id, back.correlation_id) == (
            spore.causation_id, spore.correlation_id)


def test_amqp_headers_are_pravals_and_leave_out_a_correlation_equal_to_the_cause() -> None:
    _, headers = spore_body_headers(CHILD)
    assert headers["causation_id"] == "root-1"
    assert "correlation_id" not in headers
    _, headers = spore_body_headers(Spore(knowledge={}, causation_id="c", correlation_id="r"))
    assert (headers["causation_id"], headers["correlation_id"]) == ("c", "r")
    assert "causation_id" not in spore_body_headers(ROOT)[1]


def test_a_stored_form_written_before_lineage_still_loads() -> None:
    old = ROOT.to_dict()
    del old["causation_id"], old["correlation_id"]
    for spore in (Spore.from_dict(old), spore_as_found(old)):
        assert (spore.id, spore.causation_id, spore.correlation_id) == ("root-1", None, None)
        check_spore(spore, Limits())


@pytest.mark.parametrize("value", ["", 7, "x" * (MAX_LINEAGE_ID_LENGTH + 1)])
@pytest.mark.parametrize("field", ["causation_id", "correlation_id"])
def test_validation_bounds_lineage_ids(field: str, value: Any) -> None:
    spore = Spore(knowledge={}, **{field: value})
    with pytest.raises(SporeError, match=field):
        check_spore(spore, Limits())
    decoded = spore_as_found({**ROOT.to_dict(), field: value})  # a journal row, as found
    with pytest.raises(SporeError, match=field):
        check_spore(decoded, Limits())
    check_spore(Spore(knowledge={}, **{field: "x" * MAX_LINEAGE_ID_LENGTH}), Limits())


async def test_sends_requests_responses_and_yields_carry_the_lineage() -> None:
    seen: dict[str, Spore] = {}

    async def front(spore: Spore, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        seen["root"] = spore
        seen["sent"] = await ctx.send("sink", {"k": "sent"})
        seen["answer"] = await ctx.request("back", {"k": "asked"}, timeout=30)
        yield {"k": "yielded"}

    async def back(spore: Spore, ctx: Any) -> dict[str, Any]:
        seen["request"] = spore
        return {"k": "answer"}

    async def sink(spore: Spore, ctx: Any) -> None:
        seen[spore.knowledge["k"]] = spore

    org = Organism.from_dict({"agents": {"front": {"handler": front, "emit": {"to": "sink"}},
                                         "back": {"handler": back},
                                         "sink": {"handler": sink}}})
    async with org.running():
        root = await org.send("front", {})
        await org.idle()
    assert root.causation_id is None
    assert root.correlation_id is None
    for name in ("sent", "request", "yielded"):
        assert (seen[name].causation_id, seen[name].correlation_id) == (root.id, root.id), name
    answer = seen["answer"]
    assert answer.spore_type is SporeType.RESPONSE
    assert (answer.causation_id, answer.correlation_id) == (seen["request"].id, root.id)
    assert seen["sent"].thread_id == root.id  # the thread stays as it was


def praval_reef() -> Any:
    try:
        from praval.core import reef
    except ImportError as exc:  # a clear failure, never a skip
        pytest.fail(f"praval is not installed ({exc}); pip install 'sporeflow[interop]'")
    return reef


def test_praval_and_sporeflow_read_each_others_lineage_headers() -> None:
    import aio_pika

    reef = praval_reef()
    praval_spore, request = reef.Spore, reef.SporeType.REQUEST
    theirs = praval_spore(id="p-1", spore_type=request, from_agent="praval_asker",
                          to_agent="a", knowledge={"n": 1}, created_at=ROOT.created_at,
                          expires_at=None, priority=5, reply_to=None,
                          correlation_id="conv-p", causation_id="p-0")
    message = theirs.to_amqp_message()
    ours = spore_from_amqp(message.body, message.headers)
    assert (ours.causation_id, ours.correlation_id) == ("p-0", "conv-p")
    [reply] = shape_replies({"n": 2}, parent=ours, agent="a", emit=None)
    body, headers, _ = spore_to_amqp(reply)
    back = praval_spore.from_amqp_message(aio_pika.Message(body, headers=headers))
    assert (back.causation_id, back.correlation_id) == ("p-1", "conv-p")
    assert back.reply_to == "p-1"
    # A root of Praval's without a correlation id: the response it pairs has none either.
    message = praval_spore(id="p-2", spore_type=request, from_agent="praval_asker",
                           to_agent="a", knowledge={}, created_at=ROOT.created_at,
                           expires_at=None, priority=5, reply_to=None).to_amqp_message()
    bare = spore_from_amqp(message.body, message.headers)
    [answer] = shape_replies({}, parent=bare, agent="a", emit=None)
    body, headers, _ = spore_to_amqp(answer)
    read = praval_spore.from_amqp_message(aio_pika.Message(body, headers=headers))
    assert (read.causation_id, read.correlation_id) == ("p-2", None)
    assert (answer.causation_id, answer.correlation_id) == ("p-2", "p-2")  # ours, whole

