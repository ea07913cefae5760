"""A keyed agent's handler side (``agents.X.key``): per key, a class agent's instance or a
function agent's ``ctx.state``, and the context that hands them to the handler.

The lane (``steps.keyed``) decides when a key runs; the key table (``steps.keytable``)
when its holder is made, evicted and restored. Here: what a holder is. A class agent's
instance is made on the key's first spore (``on_start`` runs then); at eviction its
``save_state()`` is kept and the instance dropped (``on_stop`` runs only at the
organism's stop, for the keys live then); when the key returns, a new instance gets
``load_state(state)``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sporeflow.config import AgentSpec, OrganismStateError
from sporeflow.pipeline.agents.context import Context, HandlerPort
from sporeflow.pipeline.agents.state import ClassAgent, apply_state
from sporeflow.pipeline.agents.threads import AgentThreads
from sporeflow.pipeline.core.wiring import AgentRuntime
from sporeflow.steps import Spore
from sporeflow.steps.keyed import key_reader
from sporeflow.steps.keytable import KeyTable

__all__ = ["KeyHolders", "KeyedContext", "keyed_invoker"]


@dataclass(slots=True)
class _Key:
    """What one key holds: a function agent's state, or a class agent's instance."""

    actor: ClassAgent | None
    state: dict[str, Any] = field(default_factory=dict)


class KeyHolders:
    """Makes, saves and loads the holders of one keyed agent's keys (``steps.keytable``)."""

    def __init__(self, spec: AgentSpec) -> None:
        self.name = spec.name
        self.cls = spec.handler if inspect.isclass(spec.handler) else None

    def make(self, key: str, state: Any) -> _Key:
        holder = _Key(ClassAgent(self.cls, f"{self.name}[{key}]") if self.cls else None)
        if state is not None:
            self.load(holder, state)
        return holder

    def save(self, holder: _Key) -> Any:
        state = holder.actor.save() if holder.actor is not None else holder.state
        try:  # a JSON round trip both checks the state and detaches it from the key
            return json.loads(json.dumps(state))
        except (TypeError, ValueError) as exc:
            where = "save_state()" if holder.actor is not None else "ctx.state"
            raise OrganismStateError(
                f"agent {self.name!r}: {where} of a key is not JSON-serialisable ({exc}); "
                f"keep only dicts, lists, strings, numbers, booleans and None there") from exc

    def load(self, holder: _Key, state: Any) -> None:
        apply_state(holder.actor, holder.state, state,
                    f"agent {self.name!r} is a keyed function agent: a key's state")


class KeyedContext(Context):
    """The context of a keyed agent's handler: ``key`` and that key's ``state``."""

    __slots__ = ("_state", "key")

    def __init__(self, organism: HandlerPort, agent: AgentRuntime, spore: Spore,
                 attempt: int, key: str, state: dict[str, Any]) -> None:
        super().__init__(organism, agent, spore, attempt)
        self.key = key
        self._state = state

    @property
    def state(self) -> dict[str, Any]:
        """This key's own mutable state, kept across its spores."""
        return self._state


def keyed_invoker(spec: AgentSpec, port: HandlerPort, runtime: Callable[[], AgentRuntime],
                  threads: AgentThreads, keys: KeyTable) -> Callable[[Spore, int], Any]:
    """How a keyed agent's handler is called: with its key's holder, which the lane has
    made live (``KeyTable.acquire``) before the spore's run."""
    assert spec.key is not None
    key_of = key_reader(spec.key, spec.name)
    handler = spec.handler
    is_generator = inspect.isasyncgenfunction(handler)
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__)

    async def invoke(spore: Spore, attempt: int) -> Any:
        key = key_of(spore)
        holder: _Key = keys.holder(key)
        ctx = KeyedContext(port, runtime(), spore, attempt, key, holder.state)
        if holder.actor is not None:
            return await holder.actor.call(spore, ctx, threads)
        if is_generator:
            return handler(spore, ctx)
        if is_async:
            return await handler(spore, ctx)
        return await threads.run(handler, spore, ctx, spore=spore)

    return invoke
