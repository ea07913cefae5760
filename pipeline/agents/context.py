"""What a handler gets besides its spore: who it is, and how to talk to others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from sporeflow.config import AgentSpec
from sporeflow.pipeline.agents.knowledge import KnowledgeStore
from sporeflow.pipeline.agents.orchestration import Gathered, gather_replies
from sporeflow.pipeline.agents.peers import peers_prompt
from sporeflow.pipeline.agents.sent import Sent
from sporeflow.pipeline.core.budget import ThreadBudget
from sporeflow.pipeline.core.ingress import Ingress
from sporeflow.pipeline.core.requests import new_request_id
from sporeflow.pipeline.core.wiring import AgentRuntime, WiringSnapshot
from sporeflow.steps import (
    ExpiresIn,
    Spore,
    SporeType,
    expiry_after,
    new_spore,
    reply_spore,
    timeout_seconds,
)
from sporeflow.steps.ids import derived_id

__all__ = ["Context", "HandlerPort", "RunPort"]

T = TypeVar("T")


class HandlerPort(Protocol):
    """What a handler's context needs of the running organism."""

    knowledge_store: KnowledgeStore

    def now(self) -> datetime: ...

    def emit(self, spore: Spore, parent: Spore, agent: str, *, built: bool = False) -> None:
        ...

    def output(self, spores: list[Spore], parent: Spore, agent: str) -> None: ...

    def paging(self) -> Callable[..., Awaitable[None]] | None:
        """What a handler's send awaits while spores are paged out (None: nothing is):
        ``Intake.paged_in``."""

    def on_its_loop(self, call: str) -> None:
        """Refuse ``call`` off the organism's event loop (``Ingress.on_its_loop``)."""

    async def ask(self, spore: Spore, timeout: float | timedelta | str, parent: Spore,
                  agent: str) -> Spore: ...

    @property
    def agents(self) -> Mapping[str, AgentSpec]: ...

    def subscribers(self, channel: str) -> tuple[str, ...]: ...

    def spend(self, thread: str, amount: float) -> float: ...


class RunPort:
    """The :class:`HandlerPort` of one run: handlers' sends go to its ingress."""

    def __init__(self, *, ingress: Ingress, wiring: Callable[[], WiringSnapshot],
                 budget: ThreadBudget, knowledge_store: KnowledgeStore,
                 now: Callable[[], datetime]) -> None:
        self.emit = ingress.emit
        self.output = ingress.output
        self.on_its_loop = ingress.on_its_loop
        self._ingress = ingress
        self._intake = ingress.intake
        self._wiring = wiring
        self.spend = budget.spend
        self.knowledge_store = knowledge_store
        self.now = now

    async def ask(self, spore: Spore, timeout: float | timedelta | str, parent: Spore,
                  agent: str) -> Spore:
        return await self._ingress.request(spore, timeout, parent=parent, agent=agent)

    def paging(self) -> Callable[..., Awaitable[None]] | None:
        intake = self._intake
        return intake.paged_in if intake.spill.count else None

    @property
    def agents(self) -> Mapping[str, AgentSpec]:
        return {name: agent.spec for name, agent in self._wiring().agents.items()}

    def subscribers(self, channel: str) -> tuple[str, ...]:
        return self._wiring().table.subscribers.get(channel, ())


class Context:
    """Handed to each handler call, bound to the spore being handled.

    ``send``, ``broadcast`` and ``reply`` never wait for room: what a handler
    sends is part of work already admitted. ``request`` gives this agent's slot
    back while it waits, so the responder can run even on this same agent.

    What it sends gets an id derived from the spore handled and the order of the sends
    in this run (``s0``, ``s1``, ...; see ``steps.ids``); a request keeps a random id.
    """

    __slots__ = ("_organism", "_agent", "spore", "attempt", "_sent", "_waits", "_reclaiming")
    _sent: int  # this run's sends so far, set at the first: one that sends none pays nothing
    # Its requests waiting now, and whether its slot is being taken back: set at the
    # first request (see _lent), so that a run that asks nothing pays nothing.
    _waits: int
    _reclaiming: bool
    key: str | None = None  # a keyed agent's key (agents.X.key; see agents.keyed)

    def __init__(self, organism: HandlerPort, agent: AgentRuntime, spore: Spore,
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

    def now(self) -> datetime:
        """The organism's clock (a TestOrganism's virtual one): read it, not the machine's,
        for times a test should control."""
        return self._organism.now()

    def _sent_id(self) -> str:
        """The derived id of this run's next send."""
        try:
            position = self._sent
        except AttributeError:
            position = 0
        self._sent = position + 1
        return derived_id(self.spore.id, self.agent, f"s{position}")

    def _spore(self, knowledge: dict[str, Any], *, to: str | None, channel: str | None,
               spore_type: SporeType, priority: int | None, expires_in: ExpiresIn | None,
               ) -> Spore:
        parent = self.spore
        return new_spore(
            id=new_request_id() if spore_type is SporeType.REQUEST else self._sent_id(),
            knowledge=knowledge, spore_type=spore_type, from_agent=self.agent, to_agent=to,
            channel=channel or parent.channel,
            priority=priority if priority is not None else parent.priority,
            expires_at=expiry_after(self._organism.now(), expires_in),
            thread_id=parent.thread, hops=parent.hops + 1,
            causation_id=parent.id, correlation_id=parent.conversation,
        )

    # send, broadcast and reply are done when called, and return an awaitable (Sent): a
    # forgotten await loses nothing. See ``agents.sent``.

    def _awaitable(self, spore: Spore) -> Sent:
        paging = self._organism.paging()
        return Sent(spore, None if paging is None
                    else partial(paging, self._agent.lane, self._lent))

    def send(self, to: str, knowledge: dict[str, Any], *,
             spore_type: SporeType = SporeType.KNOWLEDGE, priority: int | None = None,
             expires_in: ExpiresIn | None = None) -> Sent:
        """Send knowledge to one agent; ``await`` it for the spore sent. Raises at the call,
        as :meth:`request` does: :class:`DeliveryError` when no agent is named ``to``
        (with a did-you-mean), :class:`NotAPeer` when ``to`` is not a peer."""
        self._organism.on_its_loop("ctx.send")
        spore = self._spore(knowledge, to=to, channel=None, spore_type=spore_type,
                            priority=priority, expires_in=expires_in)
        self._organism.emit(spore, self.spore, self.agent, built=True)
        return self._awaitable(spore)

    def broadcast(self, knowledge: dict[str, Any], *, channel: str | None = None,
                  priority: int | None = None, expires_in: ExpiresIn | None = None) -> Sent:
        """Broadcast on ``channel`` (default: the channel of the spore being handled)."""
        self._organism.on_its_loop("ctx.broadcast")
        spore = self._spore(knowledge, to=None, channel=channel,
                            spore_type=SporeType.BROADCAST, priority=priority,
                            expires_in=expires_in)
        self._organism.emit(spore, self.spore, self.agent, built=True)
        return self._awaitable(spore)

    def reply(self, knowledge: dict[str, Any]) -> Sent:
        """Answer the spore being handled: a response to a request, else to the sender."""
        self._organism.on_its_loop("ctx.reply")
        spore = reply_spore(knowledge, parent=self.spore, agent=self.agent, emit=None,
                            to=None if self.spore.spore_type is SporeType.REQUEST
                            else self.spore.from_agent, id=self._sent_id())
        self._organism.emit(spore, self.spore, self.agent)
        return self._awaitable(spore)

    def request(self, to: str, knowledge: dict[str, Any], *,
                timeout: float | timedelta | str = 30.0,
                priority: int | None = None) -> Coroutine[Any, Any, Spore]:
        """Send a request to ``to`` and return its response spore.

        Raises :class:`RequestTimeout` after ``timeout`` seconds, :class:`HandlerError`
        when the responder's handler fails, :class:`DeliveryError` when it is refused.
        """
        self._organism.on_its_loop("ctx.request")  # from a sync handler: nothing would happen
        return self._request(to, knowledge, timeout, priority)

    async def _request(self, to: str, knowledge: dict[str, Any],
                       timeout: float | timedelta | str, priority: int | None) -> Spore:
        return await self._lent(self._ask(to, knowledge, timeout, priority))

    async def _ask(self, to: str, knowledge: dict[str, Any],
                   timeout: float | timedelta | str, priority: int | None) -> Spore:
        """Send request ``knowledge`` to ``to`` and await its response (a request, one of a
        gather's): it expires when its asker stops waiting, so nobody works on it then."""
        seconds = timeout_seconds(timeout)
        spore = self._spore(knowledge, to=to, channel=None, spore_type=SporeType.REQUEST,
                            priority=priority, expires_in=seconds)
        return await self._organism.ask(spore, seconds, self.spore, self.agent)

    async def _lent(self, waiting: Awaitable[T]) -> T:
        """``await waiting`` (a request's response) with this run's slot lent: once, for
        as long as any of its requests waits, whichever task awaits it (``gather``, and
        ``wait_for`` on Python 3.11, run one in a task of its own)."""
        lane = self._agent.lane
        try:
            self._waits += 1
        except AttributeError:  # the run's first request
            self._waits, self._reclaiming = 1, False
        if self._waits == 1 and not self._reclaiming:
            lane.lend()
        try:
            return await waiting
        finally:
            self._waits -= 1
            if not self._waits and not self._reclaiming:
                self._reclaiming = True
                try:
                    await lane.reclaim()
                finally:
                    self._reclaiming = False
                if self._waits:  # a request began while the slot came back: lend again
                    lane.lend()

    def peers_prompt(self) -> str:
        """A short text describing the agents this one may address: each one's
        description, what it accepts (from its schema) and an example payload; made
        for the system prompt of a handler backed by a language model."""
        return peers_prompt(self._agent.spec, self._organism.agents)

    async def store(self, knowledge: dict[str, Any]) -> str:
        """Keep ``knowledge`` in the organism's knowledge store; return its reference, for
        a spore's ``knowledge_references``."""
        return await self._organism.knowledge_store.put(knowledge)

    async def resolve(self, spore: Spore | None = None) -> list[dict[str, Any]]:
        """The knowledge ``spore`` (default: the one being handled) refers to, in the order
        of its ``knowledge_references``."""
        refs = (spore or self.spore).knowledge_references
        get = self._organism.knowledge_store.get
        return list(await asyncio.gather(*(get(ref) for ref in refs)))

    def spend(self, amount: float) -> float:
        """Add ``amount`` to this conversation's cost; return its total so far.

        Past ``limits.max_cost_per_thread`` the conversation is stopped: its further
        spores are dead-lettered with reason ``budget``. This handler has run by then: a
        cost known in advance is better declared (``agents.X.cost``, see ``core.budget``).
        """
        return self._organism.spend(self.spore.thread, amount)

    def gather(self, to: Sequence[str] | None, knowledge: dict[str, Any], *,
               channel: str | None = None,
               timeout: float = 30.0) -> Coroutine[Any, Any, Gathered]:
        """Request ``knowledge`` from each agent in ``to`` (or, with ``to=None``, from every
        subscriber of ``channel`` but this agent) at once; return what came within
        ``timeout``, naming who is missing or failed (see ``pipeline.orchestration``)."""
        self._organism.on_its_loop("ctx.gather")
        return self._gather(to, knowledge, channel, timeout)

    async def _gather(self, to: Sequence[str] | None, knowledge: dict[str, Any],
                      channel: str | None, timeout: float) -> Gathered:
        if to is None:
            subscribers = self._organism.subscribers(channel or self.spore.channel)
            to = [name for name in subscribers if name != self.agent]

        def ask(target: str, payload: dict[str, Any], wait: float) -> Awaitable[Spore]:
            return self._ask(target, payload, wait, None)

        # The slot is lent once for all the requests: they wait together.
        return await self._lent(gather_replies(ask, list(to), knowledge, timeout=timeout))
