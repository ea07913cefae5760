"""Typed handlers at run time: the payload in, knowledge out (see ``config.typed``).

The chain's schema stage has refused what fits none of the agent's payload types; the
invoker picks the handler and makes its value by the same rule
(:meth:`PayloadRoutes.select`), and what the handler returns or yields (a dataclass, a
model, a list of them) is dumped to knowledge before the lane's shaper sees it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from sporeflow.config.typed import PayloadRoutes, to_knowledge
from sporeflow.pipeline.agents.context import Context, HandlerPort
from sporeflow.pipeline.agents.threads import AgentThreads
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import Spore

__all__ = ["typed_invoker", "typed_shaper"]

Invoke = Callable[[Spore, int], Any]
Shape = Callable[[Any, Spore], Any]


def typed_invoker(routes: PayloadRoutes, port: HandlerPort,
                  runtime: Callable[[], AgentRuntime], threads: AgentThreads) -> Invoke:
    """Call the handler whose type the knowledge fits with the value made of it; a class
    agent's typed method gets it through the agent's instance."""
    kinds = {route.kind: _kind_of(route.handler) for route in routes.routes}

    async def invoke_typed(spore: Spore, attempt: int) -> Any:
        route, value = routes.selected(spore.knowledge)  # validated by the schema stage
        agent = runtime()
        context = Context(port, agent, spore, attempt)
        if agent.actor is not None:  # a class agent: its handle method is typed
            return await agent.actor.call(spore, context, threads, payload=value)
        kind = kinds[route.kind]
        if kind == "generator":
            return route.handler(value, context)
        if kind == "async":
            return await route.handler(value, context)
        return await threads.run(route.handler, value, context, spore=spore)

    return invoke_typed


def _kind_of(handler: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(handler):
        return "generator"
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__):
        return "async"
    return "sync"


def typed_shaper(shape: Shape) -> Shape:
    """``shape`` after dumping returned records to knowledge (each item of a stream too)."""

    def shape_typed(result: Any, parent: Spore) -> Any:
        if result.__class__ is not dict and hasattr(result, "__aiter__"):
            return shape(_dumped(result), parent)
        return shape(to_knowledge(result), parent)

    return shape_typed


async def _dumped(items: Any) -> AsyncIterator[Any]:
    try:
        async for item in items:
            yield to_knowledge(item)
    finally:
        if hasattr(items, "aclose"):
            await items.aclose()
