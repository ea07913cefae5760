"""Build an agent's runtime from its spec: how its handler is invoked (function, class,
orchestrator, worker process), how its results become spores, and its lane."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sporeflow.config import AgentSpec, Emit, Limits
from sporeflow.config.errors import StreamInterrupted
from sporeflow.pipeline.agents.context import Context, HandlerPort
from sporeflow.pipeline.agents.keyed import KeyHolders, keyed_invoker
from sporeflow.pipeline.agents.orchestration import orchestrator
from sporeflow.pipeline.agents.payloads import typed_invoker, typed_shaper
from sporeflow.pipeline.agents.procpool import ProcessPool
from sporeflow.pipeline.agents.state import AgentStates
from sporeflow.pipeline.agents.threads import AgentThreads, close_iterator
from sporeflow.pipeline.core.intake import Intake
from sporeflow.pipeline.core.latency import BOUNDS as LATENCY_BOUNDS
from sporeflow.pipeline.core.latency import LatencyHistogram
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import AgentLane, LanePolicy, RunnerPool, Spore, SporeType
from sporeflow.steps.dedupe import Dedupe, DedupingLane
from sporeflow.steps.keyed import KeyedDedupingLane, KeyedLane, key_reader
from sporeflow.steps.keytable import KeyTable
from sporeflow.steps.replies import shape_replies_off_loop
from sporeflow.steps.runners import HOLD_LOOP_AT_MOST

__all__ = ["AgentBuilder", "InvocationWrapper"]

_REQUEST = SporeType.REQUEST  # a module constant: read once per spore handled

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
                 now: Callable[[], datetime], limits: Limits,
                 wrapper: InvocationWrapper | None = None) -> None:
        self.port = port
        self.limits = limits  # the XML caps of handlers' replies
        self.ledger = ledger
        self.pool = pool
        self.procpool = procpool
        self.states = states
        self.latency = latency
        self.base_dir = base_dir
        self.now = now
        self.wrapper = wrapper
        # The sync handlers' threads of the agents built (those still in use).
        self.threads: weakref.WeakSet[AgentThreads] = weakref.WeakSet()
        self.dedupes: dict[str, Dedupe] = {}  # by agent, for this run (see steps.dedupe)
        self.key_tables: dict[str, KeyTable] = {}  # keyed agents', for this run

    def threads_running(self) -> int:
        """Handler calls the loop awaits from the agents' threads (abandoned ones not)."""
        return sum(threads.awaited for threads in list(self.threads))

    def close(self) -> None:
        """The run ends: every agent's idle threads end; abandoned ones are not waited for."""
        for threads in list(self.threads):
            threads.close()
        for keys in self.key_tables.values():
            keys.close()

    def build(self, spec: AgentSpec) -> AgentRuntime:
        name = spec.name
        latency = self.latency.setdefault(name, LatencyHistogram())
        ledger = self.ledger
        counts = latency.counts

        def on_done(spore: Spore, replies: list[Spore], seconds: float) -> None:
            # The histogram's bucket, inline rather than a method call: once per spore.
            counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1
            latency.total += seconds
            if replies or ledger.watched or spore.spore_type is _REQUEST:
                ledger.handled(spore, replies, name, seconds)
            else:  # nothing came of it, nobody watches, nobody waits: just settle it
                ledger.intake.settle(1)

        def on_failed(spore: Spore, reason: str, error: BaseException, attempts: int) -> None:
            ledger.failed(name, spore, reason, error, attempts)

        # Bound to this runtime, not looked up by name: after a reload, a removed or
        # replaced agent's lane still finishes its work with its own runtime.
        keys = self._key_table(spec) if spec.key is not None else None
        invoke = self._invoker(spec, lambda: agent, keys)
        shape = self._shaper(spec, lambda: agent)
        if spec.payloads is not None:  # typed handlers: records out as knowledge
            shape = typed_shaper(shape)
        if self.wrapper is not None:
            invoke, shape = self.wrapper.wrap(name, invoke, shape)
        policy = LanePolicy(spec.concurrency, spec.timeout, spec.retry)
        common: dict[str, Any] = {"on_done": on_done, "on_failed": on_failed,
                                  "now": self.now, "pool": self.pool}
        if spec.dedupe is not None:
            common.update(dedupe=self._dedupe(name, spec.dedupe),
                          on_dropped=lambda spore: ledger.dropped(spore, name))
        if keys is not None:
            assert spec.key is not None
            common.update(key_of=key_reader(spec.key, name), keys=keys)
        # The plain lane when neither is asked for: nothing paid for them.
        kinds: list[list[type[AgentLane]]] = [[AgentLane, DedupingLane],
                                              [KeyedLane, KeyedDedupingLane]]
        kind = kinds[keys is not None][spec.dedupe is not None]
        lane = kind(name, invoke, shape, policy, **common)
        agent = AgentRuntime(spec, lane, logging.getLogger(f"sporeflow.agent.{name}"),
                             keys=keys)
        self.states.attach(agent)  # a class agent's holder, state loaded beforehand
        return agent

    def _dedupe(self, name: str, window: float) -> Dedupe:
        """``name``'s dedupe window: the same ids and count across reloads of the agent."""
        dedupe = self.dedupes.get(name)
        if dedupe is None:
            dedupe = self.dedupes[name] = Dedupe(window, self.now)
        dedupe.window = window
        return dedupe

    def _key_table(self, spec: AgentSpec) -> KeyTable:
        """A keyed agent's keys: the same keys and states across reloads of the agent."""
        holders = KeyHolders(spec)
        keys = self.key_tables.get(spec.name)
        if keys is None:
            keys = self.key_tables[spec.name] = KeyTable(
                spec.name, holders, idle=spec.key_idle, limit=spec.max_keys)
        else:
            keys.rebind(holders, idle=spec.key_idle, limit=spec.max_keys)
        return keys

    def _invoker(self, spec: AgentSpec, runtime: Callable[[], AgentRuntime],
                 keys: KeyTable | None = None) -> Invoke:
        handler: Callable[..., Any] = orchestrator(spec) or spec.handler  # gather, sequence
        port = self.port
        if spec.cpu_bound:  # in a worker process; spores and results cross as JSON
            return self.procpool.invoker(spec, self.base_dir)
        # Sync handlers block: they run on the agent's own threads (made when first needed).
        threads = AgentThreads(spec.name, spec.concurrency, lambda: runtime().lane,
                               self.ledger.logger)
        if keys is not None:  # one instance or ctx.state per key
            self.threads.add(threads)
            return keyed_invoker(spec, port, runtime, threads, keys)
        if spec.payloads is not None:  # typed: the handler its payload's type picks
            self.threads.add(threads)
            return typed_invoker(spec.payloads, port, runtime, threads)
        if inspect.isclass(handler):  # one instance per agent handles every spore
            self.threads.add(threads)  # its method may be sync

            async def invoke_instance(spore: Spore, attempt: int) -> Any:
                agent = runtime()
                return await agent.actor.call(spore, Context(port, agent, spore, attempt),
                                              threads)

            return invoke_instance
        # A callable object counts as async when its class's __call__ is.
        if inspect.isasyncgenfunction(handler):  # streams: see _stream

            async def invoke_generator(spore: Spore, attempt: int) -> Any:
                return handler(spore, Context(port, runtime(), spore, attempt))

            return invoke_generator
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__)

        def invoke_async(spore: Spore, attempt: int) -> Any:
            return handler(spore, Context(port, runtime(), spore, attempt))

        def invoke_sync(spore: Spore, attempt: int) -> Any:
            context = Context(port, runtime(), spore, attempt)
            return threads.run(handler, spore, context, spore=spore)

        if is_async:
            return invoke_async
        self.threads.add(threads)
        return invoke_sync

    def _shaper(self, spec: AgentSpec, runtime: Callable[[], AgentRuntime]) -> Shape:
        name, emit = spec.name, spec.emit
        port, ledger, limits = self.port, self.ledger, self.limits

        def shape(result: Any, parent: Spore) -> Any:
            if result.__class__ is not dict and result is not None:
                if hasattr(result, "__aiter__"):
                    return _stream(result, parent, name, emit, port, ledger.intake, runtime,
                                   limits, ledger.keeps_unfinished)
                if hasattr(result, "__next__"):  # a generator: memory bounded, as a stream's
                    return _stream(_lazily(result), parent, name, emit, port,
                                   ledger.intake, runtime, limits, ledger.keeps_unfinished,
                                   made="returned")
            # Large XML comes back as an awaitable that parses on a worker thread.
            return shape_replies_off_loop(result, parent=parent, agent=name, emit=emit,
                                          limits=limits)

        return shape


async def _lazily(items: Iterator[Any]) -> AsyncIterator[Any]:
    """The items of an iterator an async handler returned (a generator), taken one at a
    time as a stream's are, so that what it makes past ``limits.max_in_memory`` is paged
    out as it comes rather than held whole first. The loop turns every 10 ms of it (as a
    runner lets it), so that the handler's timeout and other tasks run; a turn per item
    would cost more than the item. (A sync handler's is taken on its threads:
    ``AgentThreads.run``.)"""
    loop = asyncio.get_running_loop()
    turn = loop.time() + HOLD_LOOP_AT_MOST
    try:
        for item in items:
            yield item
            if loop.time() >= turn:
                await asyncio.sleep(0)
                turn = loop.time() + HOLD_LOOP_AT_MOST
    finally:  # the stream ended early (a timeout, a stop): end the generator too
        close_iterator(items)


async def _stream(results: Any, parent: Spore, name: str, emit: Emit | None,
                  port: HandlerPort, intake: Intake, runtime: Callable[[], AgentRuntime],
                  limits: Limits, keeps: Callable[[Spore], bool],
                  made: str = "yielded") -> list[Spore]:
    """Route what an async generator (or iterable) yields as it yields it, under the
    handler's timeout: a continuous source is a generator that yields forever.

    It stops at its next item once the organism is stopping (cut short: kept, when a
    journal or a broker keeps its spore, and started again at the next start; else it
    ends as handled, nothing being there to resume it), and waits, its slot lent,
    while spores are paged out to disk, so that a fast source keeps memory and disk
    bounded (see ``Intake.feed``). What it yields is numbered across the stream, for the
    derived ids (see ``steps.ids``).
    """
    position = 0
    async with contextlib.aclosing(results) if hasattr(results, "aclose") else (
            contextlib.nullcontext(results)) as items:
        async for item in items:
            replies = shape_replies_off_loop(item, parent=parent, agent=name, emit=emit,
                                             limits=limits, start=position, made=made)
            if not isinstance(replies, list):
                replies = await replies  # large XML, parsed on a worker thread
            if replies:
                position += len(replies)
                port.output(replies, parent, name)
            if intake.closed:  # a stop: resumed at the next start, if one keeps its spore
                if keeps(parent):
                    raise StreamInterrupted(f"the organism stopped before the stream of "
                                            f"{name!r} ended; it starts again at the next start")
                break
            if intake.spill.count:
                await intake.paged_in(runtime().lane)
    return []
