"""The bridge's publishing across an outage of the broker: at least once, never lost.

- A spore is published while the backend's ``link`` is up. A publish that the loss of
  the connection cut off (``Disconnected``: the broker may hold it or not) is made
  again once the link is up again, so a spore may reach its queue twice (at least
  once; consumers see the same ``spore.id``).
- Handler output waits so, its delivery unacked meanwhile (``bridge``), for as long as
  the link tries: ``broker.give_up_after``. Then the link gives up, the publish raises
  :class:`BrokerError` (a dead letter here, ``broker error``), the organism fails stop
  (``on_failure``), and the delivery goes back to its queue when the broker returns.
- An outside ``send``/``request`` made while the link is down waits for the broker's
  confirm (:meth:`Publisher.confirmed`) up to its timeout: ``broker.send_timeout``, or
  the request's own. Then it raises :class:`BrokerError` and the spore is withdrawn:
  dead-lettered here, never published later, unless it was on the wire already (then
  it may still arrive). While the link is up, ``send`` returns once the spore is
  admitted, as on the embedded path; an outage after that delays its publish only.
- A response the broker returns (no queue bound to its requester's reply key: after an
  outage the requester's process may not have declared its reply queue again yet) is
  published again, pausing by the backoff rule, for ``REPLY_ROUTE_WAIT`` seconds; then
  it fails as any refused publish.
- The bridge publishes with :meth:`Publisher.publish_soon`: while the link is up, the
  backend publishes and tells a callback once confirmed (many confirms in flight, no
  task of ours per spore); a publish cut off goes on as :meth:`Publisher.publish`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from functools import partial
from typing import Any

from sporeflow.config import BrokerError, BrokerSpec, SporeflowError
from sporeflow.config.reasons import Reason, reason_of
from sporeflow.pipeline.broker.backend import Backend, Published
from sporeflow.pipeline.broker.link import Disconnected, Unroutable
from sporeflow.pipeline.broker.sent import SentSpores
from sporeflow.pipeline.core.ledger import Ledger
from sporeflow.pipeline.core.requests import FAILURE_KEY
from sporeflow.steps import Spore, SporeType
from sporeflow.steps.backoff import equal_jitter
from sporeflow.steps.signing import BadSignature

__all__ = ["REPLY_ROUTE_WAIT", "Publisher", "failure_notice"]

REPLY_ROUTE_WAIT = 10.0  # seconds a response waits for its reply queue's route
_FIRST_PAUSE, _LONGEST_PAUSE = 0.05, 1.0  # seconds between its attempts

Sign = Callable[[Spore, str | None], Spore]  # a spore as published: signed, with signing


class Publisher:
    """Publishes through ``backend`` across its outages; see the module docstring."""

    def __init__(self, backend: Backend, broker: BrokerSpec, counts: dict[str, int]) -> None:
        self.backend = backend
        backend.link.give_up_after = broker.give_up_after  # before open: it sizes x-expires
        self.send_timeout = broker.send_timeout
        self.counts = counts  # the bridge's: "republished" is ours
        counts["republished"] = 0
        # Told once when the link gives up: the organism fails stop.
        self.on_failure: Callable[[SporeflowError], None] | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}  # id(outside spore) -> confirm
        self._withdrawn: set[int] = set()  # id() of outside spores whose sender gave up
        # id() of spores published (a publish cut off by a loss too: it may have reached
        # the broker), while publish() has not returned
        self._on_wire: set[int] = set()
        self._retrying: set[asyncio.Task[None]] = set()  # publish_soon's, after a loss
        self.sent = SentSpores(backend.address)  # what organism.confirmed() waits for

    async def tell_failure(self, spore: Spore, agent: str, reason: str, error: str,
                           queue: str, sign: Sign, logger: logging.Logger) -> None:
        """Tell the requester of ``spore`` (another process's, its reply queue ``queue``)
        that ``agent`` failed it, rather than leave it to its timeout."""
        notice = failure_notice(spore, agent, reason, error)
        try:
            await self.publish(notice, partial(sign, notice, None), queue=queue)
            self.counts["failure_notices"] += 1
        except (BrokerError, BadSignature) as exc:  # its timeout will tell the requester
            logger.info("could not tell %s that request %s failed: %s", queue, spore.id, exc)

    @property
    def waiting(self) -> int:
        """Outside sends waiting now for the confirm of a broker the link lost."""
        return len(self._waiting)

    def opened(self) -> None:
        """The backend is open (its link connected): hear when it gives up."""
        self.backend.link.on_give_up.append(self._gave_up)

    def closing(self) -> None:
        """The bridge closes: what still waits for a lost connection stops waiting."""
        link = self.backend.link
        if not link.up:
            link.close("the organism stopped while the broker was unreachable")

    async def publish(self, spore: Spore, wire: Callable[[], Spore], *,
                      routing_key: str | None = None, queue: str | None = None,
                      reply_queue: str | None = None) -> None:
        """Publish ``wire()`` (``spore`` as it goes out: signed, with signing) once the
        link is up, again after a loss; raise :class:`BrokerError` when the broker refuses
        it, the link gave up or closed, or its sender withdrew it."""
        link = self.backend.link
        unroutable, waited = 0, 0.0  # times a response was returned; seconds paused since
        try:
            while True:
                await link.wait_up()
                if id(spore) in self._withdrawn:
                    raise BrokerError(f"spore {spore.id} was withdrawn: its sender stopped "
                                      f"waiting for RabbitMQ at {self.backend.address}")
                self._on_wire.add(id(spore))
                try:  # signed anew each time: a copy of the first is no replay
                    await self.backend.publish(wire(), routing_key=routing_key, queue=queue,
                                               reply_queue=reply_queue)
                except Disconnected:  # its confirm was cut off: it may be there already
                    self.counts["republished"] += 1  # when the link is up again
                    continue
                except Unroutable:
                    pause = None if queue is None else await self._route_awaited(unroutable,
                                                                                 waited)
                    if pause is None:
                        raise
                    unroutable, waited = unroutable + 1, waited + pause
                    continue
                self._done(spore, None)
                return
        except BrokerError as exc:
            self._done(spore, exc)
            raise
        finally:
            self._on_wire.discard(id(spore))

    async def _route_awaited(self, attempt: int, waited: float) -> float | None:
        """The pause made before a response returned ``attempt`` times before (its reply
        queue unbound), ``waited`` seconds paused so far, is tried again; None once
        ``REPLY_ROUTE_WAIT`` is spent: the pauses slept add up to it, the last one cut
        short, so a route back within it is found."""
        left = REPLY_ROUTE_WAIT - waited
        if left <= 0:
            return None
        pause = min(left, equal_jitter(_FIRST_PAUSE, _LONGEST_PAUSE, attempt + 1,
                                       random.random))
        await self.backend.link.unless_ended(asyncio.sleep(pause))
        return pause

    def publish_soon(self, spore: Spore, wire: Callable[[], Spore], done: Published, *,
                     routing_key: str | None = None, queue: str | None = None,
                     reply_queue: str | None = None) -> None:
        """:meth:`publish`, started here; ``done`` is told None once the broker confirmed
        it, or the error ``publish`` raises. While the link is up, no task of ours waits
        for it: the backend tells us. A publish cut off by a loss goes on as ``publish``
        does, in a task, once the link is up again."""
        where = {"routing_key": routing_key, "queue": queue, "reply_queue": reply_queue}
        if self.backend.link.up and id(spore) not in self._withdrawn:
            try:  # wire() raises for a spore it cannot sign: the caller's to handle
                self.backend.publish_soon(wire(), partial(self._landed, spore, wire, where,
                                                          done), **where)
                return
            except Disconnected:
                pass  # lost just now: publish() waits for the link
        self._again(spore, wire, where, done)

    def _landed(self, spore: Spore, wire: Callable[[], Spore], where: dict[str, Any],
                done: Published, failure: BaseException | None) -> None:
        if isinstance(failure, Disconnected):
            self.counts["republished"] += 1  # when the link is up again
            self._again(spore, wire, where, done)
            return
        if isinstance(failure, Unroutable) and where["queue"] is not None:
            self._again(spore, wire, where, done)  # a response: its route is waited for
            return
        if failure is None or isinstance(failure, BrokerError):
            self._done(spore, failure)
        done(failure)

    def _again(self, spore: Spore, wire: Callable[[], Spore], where: dict[str, Any],
               done: Published) -> None:
        task = asyncio.get_running_loop().create_task(self.publish(spore, wire, **where))
        self._retrying.add(task)
        task.add_done_callback(partial(self._retried, done))

    def _retried(self, done: Published, task: asyncio.Task[None]) -> None:
        self._retrying.discard(task)
        done(asyncio.CancelledError() if task.cancelled() else task.exception())

    def settled(self, spore: Spore) -> None:
        """``spore`` left this process (confirmed, or another way: resolved, returned,
        dead-lettered)."""
        self.sent.left(spore, None)
        self._done(spore, None)

    async def confirmed(self, spore: Spore, deadline: float | None) -> None:
        """An outside spore just admitted: return at once while the link is up; else once
        the broker confirmed it. Raise :class:`BrokerError` if it failed, or, withdrawing
        it, at ``deadline`` (the loop's time; None: ``send_timeout`` from now)."""
        link = self.backend.link
        if link.up:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiting.setdefault(id(spore), loop.create_future())
        when = deadline if deadline is not None else loop.time() + self.send_timeout
        try:
            async with asyncio.timeout_at(when):
                await waiter
        except TimeoutError:
            # Found by a fault injector: the time can run out as the link comes back,
            # with the spore on its way already: it may arrive, and a retry twice.
            fate = ("it may still arrive (it was being published when the time ran out): "
                    "a retry may deliver it twice" if id(spore) in self._on_wire else
                    "it was not sent (retry it, or raise organism.broker.send_timeout)")
            self._withdraw(spore)
            raise BrokerError(
                f"RabbitMQ at {self.backend.address} did not confirm spore {spore.id} in "
                f"time: the connection is {link.state} ({link.down_for:.1f} s); "
                f"{fate}") from None
        except asyncio.CancelledError:
            self._withdraw(spore)
            raise

    def _withdraw(self, spore: Spore) -> None:
        self._waiting.pop(id(spore), None)
        self._withdrawn.add(id(spore))

    def _done(self, spore: Spore, failure: BrokerError | None) -> None:
        self._withdrawn.discard(id(spore))
        waiter = self._waiting.pop(id(spore), None)
        if waiter is not None and not waiter.done():
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(BrokerError(str(failure)))

    def unpublished(self, spore: Spore, failure: BaseException, ledger: Ledger, *,
                    made_again: bool, logger: logging.Logger) -> None:
        """Tell ``ledger`` why ``spore`` was not published, a dead letter, unless the broker
        refused it while its handler's delivery went back to its queue (``made_again``:
        its handler makes it again there, with the same id)."""
        if isinstance(failure, BadSignature):  # no key here for its sender
            logger.warning("could not sign spore %s: %s", spore.id, failure)
            ledger.record(spore, Reason.BAD_SIGNATURE, failure)
        elif isinstance(failure, BrokerError):
            self.counts["publish_failures"] += 1
            (logger.warning if self.backend.link.up else logger.debug)(
                "could not publish spore %s: %s", spore.id, failure)  # else the link said
            if made_again:
                ledger.kept_elsewhere(spore)
            else:
                ledger.record(spore, Reason.BROKER_ERROR, failure)
        elif isinstance(failure, SporeflowError):  # e.g. not written as JSON
            logger.warning("could not publish spore %s: %s", spore.id, failure)
            ledger.record(spore, reason_of(failure), failure)
        elif not isinstance(failure, asyncio.CancelledError):
            logger.error("publishing spore %s failed", spore.id, exc_info=failure)
            ledger.record(spore, Reason.BROKER_ERROR, failure)

    def _gave_up(self, failure: BrokerError) -> None:
        if self.on_failure is not None:
            self.on_failure(failure)


def failure_notice(spore: Spore, agent: str, reason: str, error: str) -> Spore:
    """The response telling the requester of ``spore`` that ``agent`` failed it."""
    failure: dict[str, Any] = {"agent": agent, "reason": str(reason), "error": error[:2000]}
    return Spore(knowledge={}, spore_type=SporeType.RESPONSE, from_agent=agent,
                 to_agent=spore.from_agent, reply_to=spore.id, thread_id=spore.thread,
                 causation_id=spore.id, correlation_id=spore.conversation,
                 metadata={FAILURE_KEY: failure})
