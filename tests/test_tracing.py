"""OpenTelemetry tracing: a span per handler call, parented along the conversation."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sporeflow.pipeline import (
    Organism,
    Spore,
    SporeflowError,
    SporeTracer,
    extract_trace_context,
    inject_trace_context,
)
from sporeflow.pipeline.cli.main import cli
from sporeflow.pipeline.observe import tracing as tracing_module

SMALL = Path(__file__).parent / "organisms" / "small" / "organism.yaml"


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A provider of our own (the global one is set once per process: never in tests)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The CLI configures the ``sporeflow`` logger; put it back after the test."""
    logger = logging.getLogger("sporeflow")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def test_one_span_per_handler_call_with_the_spores_attributes(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    organism = Organism.from_file(SMALL, tracing=SporeTracer(tracer_provider))
    async with organism.running():
        sent = await organism.send("intake", {"text": "hi"})
        await organism.idle()
    spans = by_name(exporter.get_finished_spans())
    assert {name: len(found) for name, found in spans.items()} == {
        "handle intake": 1, "handle shouter": 1, "handle ear1": 1, "handle ear2": 1}
    [intake] = spans["handle intake"]
    assert intake.kind is SpanKind.CONSUMER
    assert intake.attributes is not None
    assert dict(intake.attributes) == {
        "sporeflow.agent": "intake", "sporeflow.spore.id": sent.id,
        "sporeflow.thread.id": sent.id, "sporeflow.spore.type": "knowledge",
        "sporeflow.spore.sender": "system", "sporeflow.channel": "main",
        "sporeflow.attempt": 1}
    [ear1] = spans["handle ear1"]
    assert ear1.attributes is not None
    assert ear1.attributes["sporeflow.thread.id"] == sent.id
    assert ear1.attributes["sporeflow.spore.type"] == "broadcast"
    assert ear1.attributes["sporeflow.spore.sender"] == "shouter"


async def test_a_reply_chain_is_one_trace_each_span_the_child_of_the_last(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    organism = Organism.from_file(SMALL, tracing=SporeTracer(tracer_provider))
    async with organism.running():
        await organism.send("intake", {"text": "hi"})
        await organism.idle()
    spans = {name: found[0] for name, found in by_name(exporter.get_finished_spans()).items()}
    intake, shouter = spans["handle intake"], spans["handle shouter"]
    assert parent_of(intake) is None  # sent from outside with no span current: a root
    assert parent_of(shouter) == span_id(intake)
    assert parent_of(spans["handle ear1"]) == parent_of(spans["handle ear2"]) == span_id(shouter)
    assert len({trace_id(span) for span in spans.values()}) == 1


async def test_the_outside_callers_span_is_the_origin_of_what_it_sends(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    organism = Organism.from_file(SMALL, tracing=SporeTracer(tracer_provider))
    caller = tracer_provider.get_tracer("test")
    async with organism.running():
        with caller.start_as_current_span("caller") as outer:
            sent = await organism.send("squarer", {"n": 2})
        await organism.idle()
    assert "traceparent" in sent.metadata
    [squarer] = by_name(exporter.get_finished_spans())["handle squarer"]
    assert parent_of(squarer) == outer.get_span_context().span_id


async def test_a_request_from_a_handler_parents_the_responders_span(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    organism = Organism.from_file(SMALL, tracing=SporeTracer(tracer_provider))
    async with organism.running():
        answer = await organism.request("asker", {"n": 3}, timeout=5)
    assert answer.knowledge == {"asked": 3, "square": 9}
    spans = by_name(exporter.get_finished_spans())
    [asker], [squarer] = spans["handle asker"], spans["handle squarer"]
    assert parent_of(squarer) == span_id(asker)
    assert trace_id(squarer) == trace_id(asker)


async def test_a_failing_handler_span_records_the_error_and_each_retry_has_one(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    calls: list[int] = []

    async def flaky(spore: Spore, ctx: Any) -> None:
        calls.append(ctx.attempt)
        raise ValueError("always")

    organism = Organism.from_dict(
        {"organism": {"name": "flaky"}, "agents": {"flaky": {
            "handler": flaky, "retry": {"attempts": 2, "backoff": "1ms"}}}},
        tracing=SporeTracer(tracer_provider))
    async with organism.running():
        await organism.send("flaky", {})
        await organism.idle()
    spans = by_name(exporter.get_finished_spans())["handle flaky"]
    assert calls == [1, 2]
    assert sorted(s.attributes["sporeflow.attempt"] for s in spans  # type: ignore[index]
                  ) == [1, 2]
    assert all(span.status.status_code is StatusCode.ERROR for span in spans)
    assert all(any(e.name == "exception" for e in span.events) for span in spans)


async def test_a_span_records_an_exception_whose_str_raises(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("str() of this exception fails")

    async def bad(spore: Spore, ctx: Any) -> None:
        raise Unprintable()

    organism = Organism.from_dict({"organism": {"name": "bad"}, "agents": {"bad": {
        "handler": bad}}}, tracing=SporeTracer(tracer_provider))
    async with organism.running():
        await organism.send("bad", {})
        await organism.idle()
    [span] = by_name(exporter.get_finished_spans())["handle bad"]
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "<str() failed: RuntimeError>"
    assert [d.error for d in organism.dead_letters] == [
        "Unprintable: <str() failed: RuntimeError>"]


async def test_a_sync_handlers_span_covers_its_thread(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    inner = tracer_provider.get_tracer("handler")

    def blocking(spore: Spore, ctx: Any) -> None:
        with inner.start_as_current_span("inside"):
            pass

    organism = Organism.from_dict(
        {"organism": {"name": "sync"}, "agents": {"blocking": {"handler": blocking}}},
        tracing=SporeTracer(tracer_provider))
    async with organism.running():
        await organism.send("blocking", {})
        await organism.idle()
    spans = by_name(exporter.get_finished_spans())
    [outer], [inside] = spans["handle blocking"], spans["inside"]
    assert parent_of(inside) == span_id(outer)


async def test_replies_yielded_by_an_async_generator_carry_the_handlers_span(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider

    async def fan(spore: Spore, ctx: Any) -> Any:
        for n in range(2):
            yield {"n": n}

    async def sink(spore: Spore, ctx: Any) -> None:
        return None

    organism = Organism.from_dict(
        {"organism": {"name": "gen"}, "agents": {
            "fan": {"handler": fan, "emit": {"to": "sink"}}, "sink": {"handler": sink}}},
        tracing=SporeTracer(tracer_provider))
    async with organism.running():
        await organism.send("fan", {})
        await organism.idle()
    spans = by_name(exporter.get_finished_spans())
    [fan_span] = spans["handle fan"]
    assert [parent_of(s) for s in spans["handle sink"]] == [span_id(fan_span)] * 2


async def test_without_tracing_spores_carry_no_trace_context() -> None:
    organism = Organism.from_file(SMALL)
    assert organism.tracer is None
    seen: list[Spore] = []
    organism.on_outside(seen.append)
    async with organism.running():
        await organism.send("squarer", {"n": 2}, sender="tester")
        await organism.idle()
    [answer] = seen
    assert "traceparent" not in answer.metadata


def test_inject_and_extract_carry_the_current_span(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    from opentelemetry import trace

    tracer_provider, _ = provider
    with tracer_provider.get_tracer("t").start_as_current_span("sender") as span:
        headers = inject_trace_context({})
    context = extract_trace_context(headers)
    assert context is not None
    carried = trace.get_current_span(context).get_span_context()
    assert carried.span_id == span.get_span_context().span_id
    assert carried.is_remote
    assert extract_trace_context({}) is None
    assert inject_trace_context({"x": 1}) == {"x": 1}  # no span current: nothing added


@pytest.mark.usefixtures("keep_logging")
def test_without_opentelemetry_tracing_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing_module, "tracing_available", lambda: False)
    with pytest.raises(SporeflowError, match=r"pip install 'sporeflow\[tracing\]'"):
        Organism.from_file(SMALL, tracing=True)
    result = CliRunner().invoke(cli, ["run", str(SMALL), "--trace", "--until-idle", "-q"])
    assert result.exit_code == 1
    assert "pip install 'sporeflow[tracing]'" in result.output
    assert "Traceback" not in result.output


def test_tracing_off_never_imports_opentelemetry() -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from sporeflow.pipeline import Organism
        from sporeflow.pipeline.cli.main import cli

        async def main():
            organism = Organism.from_file({str(SMALL)!r})
            async with organism.running():
                await organism.send("intake", {{"text": "hi"}})
                await organism.idle()
            return organism.stats()["totals"]["handled"]

        handled = asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        print(handled, loaded)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["4", "[]"]
