"""Pending requests: who awaits which request, and from whom the answer must come.

A request's id is random (as AMQP RPC correlation ids are), so a response cannot
be forged by guessing it, and the book remembers the agent each request went to: a
response resolves its request only when it comes from that agent (``route`` asks
:meth:`RequestBook.asked`). Requests that arrived from another process over a broker
are expected too (``expect``): their responses go back through the broker.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from sporeflow.config import DeliveryError, HandlerError, RequestTimeout
from sporeflow.config.reasons import Reason
from sporeflow.steps import Spore

__all__ = ["FAILURE_KEY", "RequestBook", "new_request_id"]

FAILURE_KEY = "sporeflow.failure"
"""Metadata of a response that tells the requester its responder failed."""

_ABANDONED_REMEMBERED = 10_000
_REMOTE_REMEMBERED = 10_000
_V = TypeVar("_V")


def new_request_id() -> str:
    """An unguessable spore id for a request: 128 bits from the OS's CSPRNG (what
    ``secrets`` uses, without its extra call)."""
    return os.urandom(16).hex()


class RequestBook:
    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Future[Spore], str]] = {}
        self._remote: OrderedDict[str, str] = OrderedDict()  # request id -> asked agent
        self.abandoned: OrderedDict[str, None] = OrderedDict()
        # Answered lately (here, or forwarded to a requester elsewhere): request id -> the
        # id of the response that answered it, so that a copy of that response (its
        # request delivered again over a broker, answered again) is known as one.
        self.answered: OrderedDict[str, str] = OrderedDict()
        self._returned: set[str] = set()  # awaited here; their handler returned, unanswered

    def open(self, spore: Spore) -> asyncio.Future[Spore]:
        """Await a response to ``spore`` (a request) from ``spore.to_agent``."""
        future: asyncio.Future[Spore] = asyncio.get_running_loop().create_future()
        self._waiting[spore.id] = (future, spore.to_agent or "")
        return future

    def close(self, request_id: str) -> None:
        """Stop waiting. Unanswered (its asker timed out, or was cancelled), the request is
        remembered: a response that comes after is a ``late response``."""
        entry = self._waiting.pop(request_id, None)
        self._returned.discard(request_id)
        if entry is not None and (entry[0].cancelled() or not entry[0].done()):
            _remember(self.abandoned, request_id, None)

    def returned(self, request_id: str) -> None:
        """The handler of request ``request_id`` returned (a response may be on its way)."""
        if request_id in self._waiting:
            self._returned.add(request_id)

    def unanswered(self, request_id: str) -> bool:
        """Whether the handler of request ``request_id``, awaited here, returned (and no
        response resolved it): said when it times out, since nothing else says it."""
        return request_id in self._returned

    def expect(self, request_id: str, agent: str) -> None:
        """A request from another process went to ``agent`` here: its response may pass."""
        self._remote[request_id] = agent
        if len(self._remote) > _REMOTE_REMEMBERED:
            self._remote.popitem(last=False)

    def awaits(self, request_id: str) -> bool:
        return request_id in self._waiting

    def asked(self, request_id: str) -> str | None:
        """The agent pending request ``request_id`` went to, or None if none is pending."""
        entry = self._waiting.get(request_id)
        if entry is not None:
            return entry[1] if not entry[0].done() else None
        return self._remote.get(request_id)

    def resolve(self, response: Spore) -> bool:
        """Hand ``response`` to its waiter here; False if the request is another
        process's (the response goes back over the broker)."""
        request_id = response.reply_to or ""
        entry = self._waiting.get(request_id)
        if entry is None:
            if self._remote.pop(request_id, None) is not None:
                _remember(self.answered, request_id, response.id)
            return False
        future = entry[0]
        if not future.done():
            _remember(self.answered, request_id, response.id)  # a second one is told why
            failure = response.metadata.get(FAILURE_KEY)
            if isinstance(failure, dict) and failure.get("reason") == Reason.EXPIRED:
                future.set_exception(_expired(request_id, entry[1]))
            elif isinstance(failure, dict):
                future.set_exception(HandlerError(
                    f"agent {failure.get('agent')!r} failed on request {request_id} "
                    f"({failure.get('reason')}): {failure.get('error')}",
                    agent=str(failure.get("agent")), spore_id=request_id))
            else:
                future.set_result(response)
        return True

    def fail(self, request_id: str, error: BaseException, *, reason: str) -> None:
        """The handler of request ``request_id`` failed (``reason``): its waiter raises
        ``error``, or, when it expired before it could run, ``RequestTimeout``."""
        entry = self._waiting.get(request_id)
        if entry is not None and not entry[0].done():  # a cancelled one is done too
            entry[0].set_exception(_expired(request_id, entry[1]) if reason == Reason.EXPIRED
                                   else error)

    def refused(self, request_id: str, reason: str, error: BaseException | None, *,
                responder: str | None = None) -> None:
        """The request (or, with ``responder``, its response) was refused."""
        entry = self._waiting.get(request_id)
        if entry is None or entry[0].done() or (responder is not None
                                                and responder != entry[1]):
            return
        if reason == Reason.EXPIRED:
            entry[0].set_exception(_expired(request_id, entry[1]))
            return
        entry[0].set_exception(error if isinstance(error, Exception) else DeliveryError(
            f"request {request_id} was refused: {reason}", reason=reason))

    def stop(self, error: Callable[[], BaseException]) -> None:
        """The organism stopped: every waiter raises ``error()``."""
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(error())


def _expired(request_id: str, agent: str) -> RequestTimeout:
    """What the asker of request ``request_id`` raises when it (or its response) expired
    on its way: a request expires with its asker's timeout, so that is a timeout, whichever
    stage or process noticed it first, never the responder's failure."""
    return RequestTimeout(
        f"no response from {agent!r} to request {request_id}: it expired (its timeout "
        f"passed) before {agent!r} could answer it, {agent!r} busy or the event loop "
        f"blocked; give the request a longer timeout, or {agent!r} more concurrency")


def _remember(ids: OrderedDict[str, _V], request_id: str, value: _V) -> None:
    """Keep ``request_id`` (with ``value``) among the last ``_ABANDONED_REMEMBERED`` of
    ``ids``."""
    ids[request_id] = value
    if len(ids) > _ABANDONED_REMEMBERED:
        ids.popitem(last=False)
