"""What the outside world calls to talk to a running organism: ``send``, ``broadcast``,
``submit`` and ``request``, all through the run's ingress (see ``core.ingress``)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NoReturn

from sporeflow.pipeline.core.ingress import Ingress
from sporeflow.pipeline.core.run import Run
from sporeflow.steps import Spore, SporeType

__all__ = ["OutsideApi"]


class OutsideApi:
    """The sending half of :class:`~sporeflow.pipeline.Organism`."""

    _ingress: Ingress | None  # the current run's, at hand for the hot path

    def _not_started(self) -> NoReturn:
        raise NotImplementedError

    def _require_running(self) -> Run:
        raise NotImplementedError

    def submit(self, spore: Spore) -> Coroutine[Any, Any, Spore]:
        """Admit a ready-made spore from outside; wait while the organism is full."""
        return self._require_running().ingress.submit(spore)

    # submit, send and broadcast return the ingress's coroutine rather than being
    # coroutines of their own: one frame less per spore, and a bad argument raises at
    # the call already.
    def send(self, to_agent: str, knowledge: dict[str, Any], *, sender: str = "system",
             channel: str | None = None, priority: int = 5, expires_in: float | None = None,
             spore_type: SporeType = SporeType.KNOWLEDGE,
             **extra: Any) -> Coroutine[Any, Any, Spore]:
        """Send knowledge to one agent; await it for the spore sent."""
        ingress = self._ingress or self._not_started()
        return ingress.enter(ingress.outside_spore(
            knowledge, to=to_agent, channel=channel, sender=sender, spore_type=spore_type,
            priority=priority, expires_in=expires_in, extra=extra))

    def broadcast(self, knowledge: dict[str, Any], *, channel: str = "main",
                  sender: str = "system", priority: int = 5,
                  expires_in: float | None = None) -> Coroutine[Any, Any, Spore]:
        """Broadcast knowledge to every subscriber of ``channel``; await it for the spore."""
        ingress = self._ingress or self._not_started()
        return ingress.enter(ingress.outside_spore(
            knowledge, to=None, channel=channel, sender=sender,
            spore_type=SporeType.BROADCAST, priority=priority, expires_in=expires_in,
            extra={}))

    async def request(self, to_agent: str, knowledge: dict[str, Any], *, timeout: float = 30.0,
                      sender: str = "system", priority: int = 5) -> Spore:
        """Send a request and return the response spore.

        Raises :class:`RequestTimeout` when no response comes within ``timeout``
        seconds, and :class:`HandlerError` (caused by the handler's exception) as
        soon as the responder fails, without waiting for the timeout.
        """
        ingress = self._require_running().ingress
        spore = ingress.outside_spore(knowledge, to=to_agent, channel=None, sender=sender,
                                      spore_type=SporeType.REQUEST, priority=priority,
                                      expires_in=None, extra={})
        return await ingress.request(spore, timeout)

