"""The loop warning: only for agents whose replies can loop, and once per reload."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sporeflow.config import check_organism
from sporeflow.config.handler_returns import never_replies
from sporeflow.pipeline import Organism, Spore, SporeError
from sporeflow.pipeline.reload.watch import ReloadTriggers

LOOP_WARNING = "has no emit, so its replies go back to"


def bare_return(spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
    if spore:
        return
    print(spore)


def returns_none_explicitly(spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
    return None


async def async_sink(spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
    def inner() -> int:
        return 1  # a nested function's return is not the handler's

    ctx.state["n"] = inner()


def replies(spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
    if spore:
        return None
    return {"n": 1}


def streams(spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
    yield {"n": 1}


class Sink:
    def handle(self, spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
        print(spore)


class Replier:
    async def handle(self, spore: Any, ctx: Any):  # type: ignore[no-untyped-def]
        return {"ok": True}


@functools.wraps(replies)
def wrapped(spore: Any, ctx: Any) -> Any:
    return replies(spore, ctx)


@pytest.mark.parametrize("handler", [bare_return, returns_none_explicitly, async_sink, Sink])
def test_a_handler_that_returns_nothing_never_replies(handler: Callable[..., Any]) -> None:
    assert never_replies(handler)


@pytest.mark.parametrize("handler", [replies, streams, Replier, wrapped, lambda s, c: None,
                                     functools.partial(returns_none_explicitly, 1)])
def test_a_handler_that_may_return_something_may_reply(handler: Callable[..., Any]) -> None:
    # A lambda and a partial have no readable def: taken to reply, the safe side.
    assert not never_replies(handler)


SINK = """
def src(spore, ctx):
    return {"n": 1}

def sink(spore, ctx):
    print("got", spore.knowledge)
"""

ECHO = SINK.replace('print("got", spore.knowledge)', "return spore.knowledge")


def organism(folder: Path, mod: str, sink: str = "sink") -> Path:
    file = folder / "organism.yaml"
    file.write_text(f"channels: {{news: {{}}}}\n"
                    f"agents:\n"
                    f"  src: {{handler: {mod}:src, boot: {{}}, emit: {{channel: news}}}}\n"
                    f"  sink: {{handler: {mod}:{sink}, subscribe: [news]}}\n")
    return file


def test_a_subscriber_sink_without_annotation_gets_no_loop_warning(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    _, warnings = check_organism(organism(tmp_path, handler_modules(SINK)))
    assert warnings == []


def test_a_subscriber_that_returns_knowledge_gets_the_loop_warning(
        tmp_path: Path, handler_modules: Callable[[str], str]) -> None:
    file = organism(tmp_path, handler_modules(ECHO))
    _, warnings = check_organism(file)
    [warning] = warnings
    assert (warning.line, warning.path) == (4, "agents.sink")
    assert LOOP_WARNING in warning.message


async def test_a_reload_reports_each_warning_once(
        tmp_path: Path, handler_modules: Callable[[str], str],
        caplog: pytest.LogCaptureFixture) -> None:
    org = Organism.from_file(organism(tmp_path, handler_modules(ECHO)))
    caplog.clear()  # the load's own warning, logged once
    echoed: list[str] = []
    with caplog.at_level(logging.INFO, logger="sporeflow"):
        async with org.running():
            report = await org.reload()
            ReloadTriggers(org, watch=False, echo=echoed.append).report(report)
    shown = echoed + [record.getMessage() for record in caplog.records]
    assert sum(LOOP_WARNING in line for line in shown) == 1
    [warning] = report.warnings
    assert LOOP_WARNING in warning
    assert echoed[0].startswith(f"reload: {tmp_path / 'organism.yaml'}: applied: no change")


def test_loading_logs_the_warnings_that_check_returns(
        tmp_path: Path, handler_modules: Callable[[str], str],
        caplog: pytest.LogCaptureFixture) -> None:
    file = organism(tmp_path, handler_modules(ECHO))
    with caplog.at_level(logging.WARNING, logger="sporeflow.config"):
        Organism.from_file(file)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert str(check_organism(file)[1][0]) == record.getMessage()


async def test_a_dict_of_another_type_is_refused_saying_to_make_it_a_dict() -> None:
    # Found by a new user: Counter (a word count's natural type), OrderedDict and
    # defaultdict were refused as "not a dict" or "not JSON", with no word of dict(it).
    from collections import Counter, OrderedDict

    async def ret(spore: Spore, ctx: Any) -> Any:
        return Counter("hello")

    async def nested(spore: Spore, ctx: Any) -> Any:
        return {"counts": Counter("hi")}

    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"agents": {
        "ret": {"handler": ret, "emit": {"to": "sink"}},
        "nested": {"handler": nested, "emit": {"to": "sink"}},
        "sink": {"handler": sink}}})
    async with org.running():
        await org.send("ret", {})
        await org.send("nested", {})
        with pytest.raises(SporeError, match=r"got OrderedDict: .*; pass dict\(it\)$"):
            await org.send("sink", OrderedDict(a=1))
        await org.idle()
    errors = sorted(letter.error for letter in org.dead_letters)
    assert errors[0].endswith("(a Counter is a dict of another type: return dict(it))")
    assert errors[1].endswith("; make it a plain dict: dict(it)")


async def test_a_bad_item_an_async_generator_yields_is_said_to_be_yielded() -> None:
    # The error said "returned an int" for an item the handler yielded.
    async def stream(spore: Spore, ctx: Any) -> Any:
        yield {"ok": 1}
        yield 42

    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    org = Organism.from_dict({"agents": {
        "stream": {"handler": stream, "emit": {"to": "sink"}},
        "sink": {"handler": sink}}})
    async with org.running():
        await org.send("stream", {})
        await org.idle()
    [letter] = org.dead_letters
    assert letter.error.startswith("SporeError: agent 'stream' yielded an int, 42; yield None, "
                                   "a dict"), letter.error
