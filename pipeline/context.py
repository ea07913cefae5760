"""What a handler gets besides its spore: who it is, and how to talk to others."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sporeflow.config import AgentSpec
from sporeflow.steps import AgentLane, Spore, SporeType, reply_spore

if TYPE_CHECKING:
    from sporeflow.pipeline.organism import Organism

__all__ = ["AgentRuntime", "Context"]


@dataclass(eq=False)
class AgentRuntime:
    """An agent as the running organism holds it: its spec, lane, logger and state."""

    spec: AgentSpec
    lane: AgentLane
    logger: logging.Logger
    state: dict[str, Any] = field(default_factory=dict)


class Context:
    """Handed to each handler call, bound to the spore being handled.

    ``send``, ``broadcast`` and ``reply`` never wait for room: what a handler
    sends is part of work already admitted. ``request`` gives this agent's slot
    back while it waits, so the responder can run even on this same agent.
    """

    __slots__ = ("_organism", "_agent", "spore", "attempt")

    def __init__(self, organism: Organism, agent: AgentRuntime, spore: Spore,
                 attempt: int) -> None:
        self._organism = organism
        self._agent = agent
        self.spore = spore
        self.attempt = attempt

    @property
    def agent(self) -> str:
        return self._agent.spec.name

    @property
    def logger(self) -> logging.Logger:
        return self._agent.logger

    @property
    def state(self) -> dict[str, Any]:
        """This agent's own mutable state, kept across spores."""
        return self._agent.state

    def _spore(self, knowledge: dict[str, Any], *, to: str | None, channel: str | None,
               spore_type: SporeType, priority: int | None, expires_in: float | None,
               ) -> Spore:
        parent = self.spore
        return Spore(
            knowledge=knowledge, spore_type=spore_type, from_agent=self.agent, to_agent=to,
            channel=channel or parent.channel,
            priority=priority if priority is not None else parent.priority,
            expires_at=(self._organism.now() + timedelta(seconds=expires_in)
                        if expires_in is not None else None),
            thread_id=parent.thread, hops=parent.hops + 1,
        )

    async def send(self, to: str, knowledge: dict[str, Any], *,
                   spore_type: SporeType = SporeType.KNOWLEDGE, priority: int | None = None,
                   expires_in: float | None = None) -> Spore:
        """Send knowledge to one agent; refused peers raise :class:`NotAPeer`."""
        spore = self._spore(knowledge, to=to, channel=None, spore_type=spore_type,
                            priority=priority, expires_in=expires_in)
        self._organism._emit_from_handler(spore)
        return spore

    async def broadcast(self, knowledge: dict[str, Any], *, channel: str | None = None,
                        priority: int | None = None, expires_in: float | None = None) -> Spore:
        """Broadcast on ``channel`` (default: the channel of the spore being handled)."""
        spore = self._spore(knowledge, to=None, channel=channel,
                            spore_type=SporeType.BROADCAST, priority=priority,
                            expires_in=expires_in)
        self._organism._emit_from_handler(spore)
        return spore

    async def reply(self, knowledge: dict[str, Any]) -> Spore:
        """Answer the spore being handled: a response to a request, else to the sender."""
        spore = reply_spore(knowledge, parent=self.spore, agent=self.agent, emit=None,
                            to=None if self.spore.spore_type is SporeType.REQUEST
                            else self.spore.from_agent)
        self._organism._emit_from_handler(spore)
        return spore

    async def request(self, to: str, knowledge: dict[str, Any], *,
                      timeout: float = 30.0, priority: int | None = None) -> Spore:
        """Send a request to ``to`` and return its response spore.

        Raises :class:`RequestTimeout` after ``timeout`` seconds, :class:`HandlerError`
        when the responder's handler fails, :class:`DeliveryError` when it is refused.
        """
        spore = self._spore(knowledge, to=to, channel=None, spore_type=SporeType.REQUEST,
                            priority=priority, expires_in=None)
        lane = self._agent.lane
        lane.lend()
        try:
            return await self._organism._request(spore, timeout, from_handler=True)
        finally:
            await lane.reclaim()
