"""What the outside world calls to talk to a running organism: ``send``, ``broadcast``,
``submit`` and ``request``, all through the run's ingress (see ``core.ingress``); and
the boot spores an organism sends at its start, as from outside (``boot``)."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from sporeflow.config import OrganismSpec
from sporeflow.pipeline.broker.bridge import Bridge
from sporeflow.pipeline.core.ingress import Ingress
from sporeflow.pipeline.core.run import Run
from sporeflow.steps import ExpiresIn, Spore, SporeType, timeout_seconds

if TYPE_CHECKING:
    from sporeflow.pipeline.journal.store import Journal

__all__ = ["OutsideApi"]


class OutsideApi:
    """The sending half of :class:`~sporeflow.pipeline.Organism`."""

    _ingress: Ingress | None  # the current run's, at hand for the hot path
    _bridge: Bridge | None  # the broker's, when there is one
    _journal: Journal | None
    spec: OrganismSpec

    def _not_started(self) -> NoReturn:
        raise NotImplementedError

    def _require_running(self) -> Run:
        raise NotImplementedError

    def submit(self, spore: Spore, *, admit_within: float | None = None,
               whole: bool = False, confirm: bool = True) -> Coroutine[Any, Any, Spore]:
        """Admit a ready-made spore from outside; wait while the organism is full, at most
        ``admit_within`` seconds if given (then :class:`OrganismFull`: nothing admitted).
        ``whole``: refuse now, rather than dead-letter later, a spore no agent would get
        (unknown recipient, a channel nobody hears, the recipient's schema refuses it).
        ``confirm``: as for :meth:`send`."""
        return self._require_running().ingress.submit(spore, admit_within=admit_within,
                                                      whole=whole, confirm=confirm)

    def refuse(self, spore: Spore, error: Exception) -> None:
        """Dead-letter ``spore``, which a source of the organism's own (``sources:``) could
        not send: a bad line, a spore the organism refused. Nobody else is told."""
        self._require_running().ingress.refuse(spore, error)

    # submit, send and broadcast return the ingress's coroutine rather than being
    # coroutines of their own: one frame less per spore, and a bad argument raises at
    # the call already.
    def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "system",
             channel: str | None = None, priority: int = 5, expires_in: ExpiresIn | None = None,
             spore_type: SporeType = SporeType.KNOWLEDGE, confirm: bool = True,
             **extra: Any) -> Coroutine[Any, Any, Spore]:
        """Send knowledge to one agent; await it for the spore sent.

        With a journal it returns once the spore is on disk. ``confirm=False`` returns
        once it is admitted, and the journal writes it with the next group commit:
        ``await organism.confirmed()`` returns once every spore sent so far is on disk
        (pipelined sends, as publisher confirms are)."""
        ingress = self._ingress or self._not_started()
        return ingress.enter(ingress.outside_spore(
            knowledge, to=to_agent, channel=channel, sender=sender, spore_type=spore_type,
            priority=priority, expires_in=expires_in, extra=extra), confirm=confirm)

    def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                  sender: str = "system", priority: int = 5,
                  expires_in: ExpiresIn | None = None, confirm: bool = True,
                  **extra: Any) -> Coroutine[Any, Any, Spore]:
        """Broadcast knowledge to every subscriber of ``channel``; await it for the spore.
        ``confirm`` and ``extra`` (further fields of the spore, ``metadata``...): as for
        :meth:`send`."""
        ingress = self._ingress or self._not_started()
        return ingress.enter(ingress.outside_spore(
            knowledge, to=None, channel=channel, sender=sender,
            spore_type=SporeType.BROADCAST, priority=priority, expires_in=expires_in,
            extra=extra), confirm=confirm)

    async def confirmed(self, spore: Spore | None = None) -> None:
        """Return once every spore sent so far (``confirm=False`` ones included) is on
        disk, or, over a broker, confirmed by it (or ended here); at once with neither.
        Raises the journal's :class:`JournalError` if it failed, :class:`BrokerError` if
        a spore sent since the last call could not be published. With ``spore``, once it
        has left, raising nothing for it (its own loss is a dead letter) and leaving
        what other sends lost to the next ``confirmed()`` without one."""
        self._require_running()
        if self._journal is not None:
            await self._journal.flush()
        elif self._bridge is not None:
            sent = self._bridge.publisher.sent
            await (sent.gone(spore.id) if spore is not None else sent.confirmed())

    async def boot(self, agent: str, knowledge: Mapping[str, Any], *,
                   again: bool = False) -> Spore | None:
        """Send ``agent`` its boot spore: over a broker once per deployment (see
        ``broker.boots``), with a journal once per journal, else at every start;
        ``again``: even so. Returns it, or None when it was not sent."""
        if self._bridge is not None:
            return await self._bridge.boots.boot(
                agent, lambda spore_id: self._boot_spore(agent, knowledge, spore_id), again=again)
        boot_id = None
        if self._journal is not None and not again:
            boot_id = self._journal.boot_id(agent)  # None: this journal sent it already
            if boot_id is None:
                return None
        return await self._boot_spore(agent, knowledge, boot_id)

    async def _boot_hosted(self, *, again: bool) -> None:
        """Send the boot spore of each agent declaring one (``boot``), of those this
        process hosts over a broker."""
        for agent in self.spec.agents.values():
            if agent.boot is not None and (self._bridge is None
                                           or agent.name in self._bridge.hosted):
                await self.boot(agent.name, agent.boot, again=again)

    async def _boot_spore(self, agent: str, knowledge: Mapping[str, Any],
                          spore_id: str | None = None) -> Spore:
        """Send ``agent`` a boot spore, with ``spore_id`` if given; its handler is a source
        of work, stopped first at a stop (see ``core.ingress``)."""
        spore = await (self.send(agent, dict(knowledge)) if spore_id is None
                       else self.send(agent, dict(knowledge), id=spore_id))
        self._require_running().ingress.sources.add(spore.id)
        return spore

    async def request(self, to_agent: str, knowledge: dict[str, Any], *,
                      timeout: float | timedelta | str = 30.0,
                      sender: str = "system", priority: int = 5,
                      admit_within: float | None = None) -> Spore:
        """Send a request and return the response spore.

        Raises :class:`RequestTimeout` when no response comes within ``timeout``
        seconds, and :class:`HandlerError` (caused by the handler's exception) as
        soon as the responder fails, without waiting for the timeout; with
        ``admit_within``, :class:`OrganismFull` when the organism had no room for it
        within that many seconds.
        """
        ingress = self._require_running().ingress
        seconds = timeout_seconds(timeout)  # a request expires when its asker stops waiting
        spore = ingress.outside_spore(knowledge, to=to_agent, channel=None, sender=sender,
                                      spore_type=SporeType.REQUEST, priority=priority,
                                      expires_in=seconds, extra={})
        return await ingress.request(spore, seconds, admit_within=admit_within)

