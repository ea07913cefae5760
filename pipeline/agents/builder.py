"""Build an agent's runtime from its spec: how its handler is invoked (function, class,
orchestrator, worker process), how its results become spores, and its lane."""

from __future__ import annotations

import asyncio
import inspect
import logging
from bisect import bisect_left
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sporeflow.config import AgentSpec, Emit
from sporeflow.pipeline.agents.context import Context, HandlerPort
from sporeflow.pipeline.agents.orchestration import orchestrator
from sporeflow.pipeline.agents.procpool import ProcessPool
from sporeflow.pipeline.agents.state import AgentStates
from sporeflow.pipeline.core.latency import BOUNDS as LATENCY_BOUNDS
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import AgentLane, LanePolicy, RunnerPool, Spore, shape_replies

__all__ = ["AgentBuilder", "InvocationWrapper"]

Invoke = Callable[[Spore, int], Any]
Shape = Callable[[Any, Spore], Any]


class InvocationWrapper(Protocol):
    """Wraps an agent's invoke and shape (tracing puts a span around each call)."""

    def wrap(self, agent: str, invoke: Invoke, shape: Shape) -> tuple[Invoke, Shape]: ...


class AgentBuilder:
    """Makes :class:`AgentRuntime` objects for one organism run."""

    def __init__(self, *, port: HandlerPort, ledger: Ledger, pool: RunnerPool,
                 procpool: ProcessPool, states: AgentStates,
                 latency: dict[str, LatencyHistogram], base_dir: Path,
                 now: Callable[[], datetime],
                 wrapper: InvocationWrapper | None = None) -> None:
        self.port = port
        self.ledger = ledger
        self.pool = pool
        self.procpool = procpool
        self.states = states
        self.latency = latency
        self.base_dir = base_dir
        self.now = now
        self.wrapper = wrapper

    def build(self, spec: AgentSpec) -> AgentRuntime:
        name = spec.name
        latency = self.latency.setdefault(name, LatencyHistogram())
        ledger = self.ledger
        counts = latency.counts

        def on_done(spore: Spore, replies: list[Spore], seconds: float) -> None:
            # The histogram's bucket, inline rather than a method call: once per spore.
            counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
            latency.total += seconds
            if replies or ledger.watched:
                ledger.handled(spore, replies, name, seconds)
            else:  # nothing came of it and nobody watches: just settle it
                ledger.intake.settle(1)

        def on_failed(spore: Spore, reason: str, error: BaseException, attempts: int) -> None:
            ledger.failed(name, spore, reason, error, attempts)

        # Bound to this runtime, not looked up by name: after a reload, a removed or
        # replaced agent's lane still finishes its work with its own runtime.
        invoke, shape = self._invoker(spec, lambda: agent), self._shaper(spec)
        if self.wrapper is not None:
            invoke, shape = self.wrapper.wrap(name, invoke, shape)
        lane = AgentLane(name, invoke, shape,
                         LanePolicy(spec.concurrency, spec.timeout, spec.retry),
                         on_done=on_done, on_failed=on_failed, now=self.now, pool=self.pool)
        agent = AgentRuntime(spec, lane, logging.getLogger(f"sporeflow.agent.{name}"))
        self.states.attach(agent)  # a class agent's holder, state loaded beforehand
        return agent

    def _invoker(self, spec: AgentSpec, runtime: Callable[[], AgentRuntime]) -> Invoke:
        handler: Callable[..., Any] = orchestrator(spec) or spec.handler  # gather, sequence
        port = self.port
        if spec.cpu_bound:  # in a worker process; spores and results cross as JSON
            return self.procpool.invoker(spec, self.base_dir)
        if inspect.isclass(handler):  # one instance per agent handles every spore

            async def invoke_instance(spore: Spore, attempt: int) -> Any:
                agent = runtime()
                return await agent.actor.call(spore, Context(port, agent, spore, attempt))

            return invoke_instance
        # A callable object counts as async when its class's __call__ is.
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__)

        def invoke_async(spore: Spore, attempt: int) -> Any:
            return handler(spore, Context(port, runtime(), spore, attempt))

        def invoke_sync(spore: Spore, attempt: int) -> Any:
            # Plain functions may block: they run on a worker thread, off the loop.
            context = Context(port, runtime(), spore, attempt)
            return asyncio.to_thread(handler, spore, context)

        return invoke_async if is_async else invoke_sync

    @staticmethod
    def _shaper(spec: AgentSpec) -> Shape:
        name, emit = spec.name, spec.emit

        def shape(result: Any, parent: Spore) -> Any:
            if hasattr(result, "__aiter__"):
                return _collect(result, parent, name, emit)
            return shape_replies(result, parent=parent, agent=name, emit=emit)

        return shape


async def _collect(results: Any, parent: Spore, name: str, emit: Emit | None) -> list[Spore]:
    """Shape what an async-iterable return value yields, item by item."""
    replies: list[Spore] = []
    async for item in results:
        replies.extend(shape_replies(item, parent=parent, agent=name, emit=emit))
    return replies
