"""Which spore events a follower (``sporeflow tail``, ``GET /v1/events``) sees, and the
JSON line each becomes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sporeflow.config.json_shape import writable_json
from sporeflow.pipeline.observe.events import (
    Event,
    SporeAdmitted,
    SporeDeadLettered,
    SporeEvent,
    SporeExpired,
    SporeFailed,
    SporeHandled,
)

__all__ = ["SPORE_EVENT_KINDS", "TailFilter", "event_line"]

SPORE_EVENT_KINDS = tuple(kind.kind for kind in (
    SporeAdmitted, SporeHandled, SporeFailed, SporeExpired, SporeDeadLettered))


@dataclass(frozen=True, slots=True)
class TailFilter:
    """Which spore events to show; an empty set lets everything of its kind through.

    An event concerns an agent when the agent handled or failed it, sent it, or it
    is addressed to that agent.
    """

    agents: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *, agents: Iterable[str] = (), channels: Iterable[str] = (),
           types: Iterable[str] = (), kinds: Iterable[str] = ()) -> TailFilter:
        return cls(frozenset(agents), frozenset(channels), frozenset(types), frozenset(kinds))

    def __call__(self, event: Event) -> bool:
        if not isinstance(event, SporeEvent):
            return False
        spore = event.spore
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.channels and spore.channel not in self.channels:
            return False
        if self.types and spore.spore_type.value not in self.types:
            return False
        return not self.agents or not self.agents.isdisjoint(
            (event.agent, spore.from_agent, spore.to_agent))


def event_line(event: Event, *, knowledge: bool = True) -> str:
    """The JSON line ``tail`` prints for ``event``."""
    fields = event.to_dict()
    if not knowledge and isinstance(fields.get("spore"), dict):
        fields["spore"] = {k: v for k, v in fields["spore"].items() if k != "knowledge"}
    return writable_json(fields, default=str)
