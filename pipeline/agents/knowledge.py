"""Knowledge references ("light spores travel far"): big knowledge kept in a store.

A handler stores knowledge with ``ref = await ctx.store(knowledge)`` and sends a
spore carrying ``knowledge_references=(ref,)`` instead of the knowledge itself;
the receiver gets it back with ``await ctx.resolve(spore)``.

The store is named in organism.yaml::

    organism: {name: docs, knowledge_store: memory}            # the default
    organism: {name: docs, knowledge_store: stores:make_store}  # module:factory

A factory is called with no arguments and returns an object with two async
methods, ``put(knowledge) -> ref`` and ``get(ref) -> knowledge`` (see
:class:`KnowledgeStore`). The built-in memory store lives in the organism's
process: over RabbitMQ, with agents in several processes, name a shared one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

from sporeflow.config import ConfigError, OrganismSpec, Problem, SporeError
from sporeflow.config.words import with_article

__all__ = ["KnowledgeStore", "MemoryKnowledgeStore", "make_knowledge_store"]


@runtime_checkable
class KnowledgeStore(Protocol):
    """Where referenced knowledge lives."""

    async def put(self, knowledge: dict[str, Any]) -> str:
        """Keep ``knowledge``; return the reference that gets it back."""
        ...

    async def get(self, ref: str) -> dict[str, Any]:
        """The knowledge ``ref`` refers to; raise when there is none."""
        ...


class MemoryKnowledgeStore:
    """In this process, content-addressed, keeping the ``capacity`` most recently used."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.evicted = 0
        self._entries: OrderedDict[str, str] = OrderedDict()  # ref -> JSON text

    def __len__(self) -> int:
        return len(self._entries)

    async def put(self, knowledge: dict[str, Any]) -> str:
        try:  # kept as JSON: checked, and detached from the caller's dict
            text = json.dumps(knowledge, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise SporeError(f"knowledge to store is not JSON ({exc}); store only dicts of "
                             f"JSON values") from exc
        if not isinstance(knowledge, dict):
            raise SporeError(f"knowledge to store must be a dict, got "
                             f"{type(knowledge).__name__}")
        ref = f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"
        self._entries[ref] = text
        self._entries.move_to_end(ref)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evicted += 1
        return ref

    async def get(self, ref: str) -> dict[str, Any]:
        text = self._entries.get(ref)
        if text is None:
            raise SporeError(f"knowledge reference {ref!r} is not in the memory store (never "
                             f"stored in this process, or evicted after {self.capacity} "
                             f"newer entries)")
        self._entries.move_to_end(ref)
        knowledge: dict[str, Any] = json.loads(text)
        return knowledge


def make_knowledge_store(spec: OrganismSpec) -> KnowledgeStore:
    """The store ``organism.knowledge_store`` names (the memory store by default)."""
    factory = spec.knowledge_store_factory
    if factory is None:
        return MemoryKnowledgeStore()
    store = factory()
    if not isinstance(store, KnowledgeStore):
        raise ConfigError([Problem(
            str(spec.source or "<dict>"), 1, 1, "organism.knowledge_store",
            f"{spec.knowledge_store!r} returned {with_article(type(store).__name__)}, which "
            f"lacks async put(knowledge) -> ref and get(ref) -> knowledge; return a store "
            f"with both")])
    return store
