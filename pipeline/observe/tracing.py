"""OpenTelemetry tracing of handler invocations (the optional ``tracing`` extra).

With tracing on, each handler invocation is one span, ``handle <agent>``, whose
parent is the span that produced the spore: the W3C trace context travels in
``spore.metadata["traceparent"]``, so a conversation can be followed hop by hop
(and, over a broker, across processes). Spores sent from outside carry the
caller's current span, when there is one.

Nothing here imports ``opentelemetry`` until a :class:`SporeTracer` is made, and an
organism without one pays nothing per spore.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from sporeflow.config.extras import extra_hint, has_modules, missing_extra
from sporeflow.config.words import message_of
from sporeflow.pipeline.core.deadletters import URL_PASSWORDS, Masker, error_text
from sporeflow.steps import Spore

if TYPE_CHECKING:
    from opentelemetry.context import Context as TraceContext
    from opentelemetry.trace import TracerProvider

__all__ = [
    "INSTALL_HINT",
    "TRACEPARENT",
    "SporeTracer",
    "ensure_tracer_provider",
    "extract_trace_context",
    "inject_trace_context",
    "make_tracer",
    "tracing_available",
]

TRACEPARENT = "traceparent"
INSTALL_HINT = extra_hint("tracing")

Invoke = Callable[[Spore, int], Awaitable[Any]]
Shape = Callable[[Any, Spore], Any]


def tracing_available() -> bool:
    """Whether the OpenTelemetry API and SDK are installed."""
    return has_modules("opentelemetry.trace", "opentelemetry.sdk")


def _require_opentelemetry() -> None:
    if not tracing_available():
        raise missing_extra("tracing", "OpenTelemetry", "tracing")


class SporeTracer:
    """Opens a span per handler invocation and carries trace context in spore metadata.

    ``tracer_provider`` defaults to the globally configured one (see
    :func:`ensure_tracer_provider`); tests pass their own. A failure is recorded on its
    span with ``masker`` over its text (the organism that uses the tracer sets its own).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None,
                 masker: Masker = URL_PASSWORDS) -> None:
        _require_opentelemetry()
        self.masker = masker
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = trace.get_tracer("sporeflow", tracer_provider=tracer_provider)
        self._propagator = TraceContextTextMapPropagator()
        self._consumer = trace.SpanKind.CONSUMER

    def wrap(self, agent: str, invoke: Invoke, shape: Shape) -> tuple[Invoke, Shape]:
        """Return ``(invoke, shape)`` for a lane, with each invocation in a span.

        The returned ``invoke`` also shapes the handler's result inside the span
        (an async-iterable result runs there too), so every reply carries the
        span's context; the returned ``shape`` passes those replies through.
        """
        name = f"handle {agent}"
        tracer, propagator, stamp = self._tracer, self._propagator, self._stamp_current
        consumer = self._consumer

        async def traced(spore: Spore, attempt: int) -> list[Spore] | None:
            attributes = {
                "sporeflow.agent": agent,
                "sporeflow.spore.id": spore.id,
                "sporeflow.thread.id": spore.thread,
                "sporeflow.spore.type": spore.spore_type.value,
                "sporeflow.spore.sender": spore.from_agent,
                "sporeflow.channel": spore.channel,
                "sporeflow.attempt": attempt,
            }
            origin = propagator.extract(spore.metadata)
            # OpenTelemetry would record the exception as it is: recorded masked below.
            with tracer.start_as_current_span(name, context=origin, kind=consumer,
                                              attributes=attributes, record_exception=False,
                                              set_status_on_exception=False) as span:
                try:
                    result = await invoke(spore, attempt)
                    if result is None:
                        return None
                    replies = shape(result, spore)
                    if not isinstance(replies, list):
                        replies = await replies
                except Exception as exc:
                    self._failed(span, exc)
                    raise
                return [stamp(reply, replace=True) for reply in replies]

        return traced, _passthrough

    def _failed(self, span: Any, error: Exception) -> None:
        """Record ``error`` on ``span``, masked: spans leave the process (an exporter)."""
        from opentelemetry.trace import Status, StatusCode

        # The event record_exception makes, less its str(error), which may raise.
        span.add_event("exception", attributes={
            "exception.type": type(error).__name__,
            "exception.message": self.masker.mask(message_of(error)),
            "exception.stacktrace": self.masker.mask("".join(traceback.format_exception(error))),
            "exception.escaped": "False",
        })
        span.set_status(Status(StatusCode.ERROR, error_text(error, self.masker)))

    def stamp(self, spore: Spore) -> Spore:
        """``spore`` carrying the current span's context, unless it carries one already.

        For spores that enter from outside: the caller's span becomes their origin.
        """
        return self._stamp_current(spore, replace=False)

    def stamp_sent(self, spore: Spore) -> Spore:
        """``spore`` carrying the current span's context: for what a handler sends."""
        return self._stamp_current(spore, replace=True)

    def _stamp_current(self, spore: Spore, *, replace: bool) -> Spore:
        if not replace and TRACEPARENT in spore.metadata:
            return spore
        carrier: dict[str, Any] = {}
        self._propagator.inject(carrier)
        if TRACEPARENT not in carrier:  # no span is current: nothing to carry
            return spore
        # A new spore rather than an edit in place: the metadata dict may be shared.
        return dataclasses.replace(spore, metadata={**spore.metadata, **carrier})


def _passthrough(result: Any, parent: Spore) -> Any:
    return result


def make_tracer(tracing: bool | SporeTracer,
                masker: Masker = URL_PASSWORDS) -> SporeTracer | None:
    """The tracer an organism uses for its ``tracing`` option (None: tracing off); it
    masks failures with ``masker``, the organism's."""
    if isinstance(tracing, SporeTracer):
        tracing.masker = masker
        return tracing
    return SporeTracer(masker=masker) if tracing else None


def inject_trace_context(carrier: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Put the current span's W3C trace context (``traceparent``) into ``carrier``.

    For transports (e.g. AMQP headers); without OpenTelemetry it leaves ``carrier``
    as it is. Returns ``carrier``.
    """
    if tracing_available():
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        TraceContextTextMapPropagator().inject(carrier)
    return carrier


def extract_trace_context(carrier: Mapping[str, Any]) -> TraceContext | None:
    """The OpenTelemetry context whose parent is the span named in ``carrier``.

    None when OpenTelemetry is not installed or ``carrier`` names no span.
    """
    if not tracing_available() or TRACEPARENT not in carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier)


def ensure_tracer_provider() -> Callable[[], None]:
    """Make sure spans go somewhere; returns a function that flushes them at exit.

    A provider configured already (by the application, or by ``opentelemetry-instrument``
    from the ``OTEL_*`` variables) is used as it is. Otherwise an SDK provider printing
    spans to stderr is installed.
    """
    _require_opentelemetry()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        def flush() -> None:
            force_flush = getattr(current, "force_flush", None)
            if force_flush is not None:
                force_flush()

        return flush
    # OTEL_SERVICE_NAME, when set, names the service; Resource.create reads it.
    name = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "sporeflow"}
    provider = SdkTracerProvider(resource=Resource.create(name))
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
    return provider.shutdown
