"""A broker connection's state across outages, and the pauses between attempts to reconnect.

A backend whose connection can drop (``AmqpBackend``, through aio-pika's robust
connection) tells its :class:`Link` when the connection is lost, when an attempt to
reconnect fails, and when it is back (topology, consumers and reply queue restored):

    connecting ─▶ connected ─▶ disconnected ─▶ connected ─▶ ...   (reconnects + 1)
                                     │
                                     └─ give_up_after ─▶ gave up   (fail stop)
    any state ─▶ closed   (the backend closed)

The link logs each change once (attempts at a falling rate: the 1st, 2nd, 4th, 8th...),
counts reconnections, and gives up after ``give_up_after`` seconds disconnected.
Whoever publishes waits on it (:meth:`Link.wait_up`), so an outage delays a spore and
never drops it; once the link gave up or closed, waiting raises :class:`BrokerError`.
A backend that cannot lose its connection (``MemoryBackend``) has a link always up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from sporeflow.config import BrokerError
from sporeflow.steps.backoff import equal_jitter

__all__ = ["Backoff", "Disconnected", "Link", "Requeued"]

CONNECTING, CONNECTED, DISCONNECTED = "connecting", "connected", "disconnected"
GAVE_UP, CLOSED = "gave up", "closed"
_ENDED = (GAVE_UP, CLOSED)
_log = logging.getLogger("sporeflow.broker.link")


class Disconnected(BrokerError):
    """The connection was lost before the broker confirmed a publish: it may or may not
    hold the message. Publish it again once the link is up (at least once)."""


class Requeued(BrokerError):
    """A delivery came on a connection since lost: the broker gave it back to its queue
    already, so it can no longer be acked, nacked or dead-lettered."""


class Backoff:
    """Pauses between attempts to reconnect: doubling from ``base`` up to ``cap`` (20
    times ``base`` unless given), each drawn between half and all of that ("equal
    jitter"), so that the processes that lost one broker do not return to it in step.

    :meth:`pause` may be read more than once per attempt (aio-pika logs the value it
    sleeps): it returns what is left of the current pause and starts the next one only
    when that one is over. :meth:`reset` starts again from ``base``.
    """

    def __init__(self, base: float, cap: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random) -> None:
        self.base = max(base, 0.0)
        self.cap = max(cap if cap is not None else self.base * 20, self.base)
        self.attempt = 0  # pauses started since the last reset
        self._clock, self._draw = clock, draw
        self._until = float("-inf")

    def reset(self) -> None:
        self.attempt = 0
        self._until = float("-inf")

    def pause(self) -> float:
        now = self._clock()
        if now >= self._until:
            self.attempt += 1
            self._until = now + equal_jitter(self.base, self.cap, self.attempt, self._draw)
        return self._until - now


class Link:
    """The state of one backend's connection to ``address`` (see the module docstring)."""

    def __init__(self, address: str, *, up: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.give_up_after: float | None = None  # seconds disconnected; None: never
        self.state = CONNECTED if up else CONNECTING
        self.reconnects = 0  # connections made again after a loss
        self.attempts = 0  # attempts to reconnect that failed, in this outage
        self.generation = 0  # one more at each loss: what came before it is stale
        self.failure: BrokerError | None = None  # why it gave up, or closed
        # Told once, when the link gives up (the backend stops, the organism fails stop).
        self.on_give_up: list[Callable[[BrokerError], None]] = []
        # Told at each loss: what waits on the lost connection gives up (publishes whose
        # confirm would never come).
        self.on_lost: list[Callable[[], None]] = []
        self._clock = clock
        self._since = clock()
        self._last_error = ""
        self._changed = asyncio.Event()  # set, and replaced, at each change of state
        self._timer: asyncio.TimerHandle | None = None

    @property
    def up(self) -> bool:
        return self.state == CONNECTED

    def renewed(self) -> Link:
        """A link for a new connection to the same address, with this one's settings."""
        link = Link(self.address, clock=self._clock)
        link.give_up_after = self.give_up_after
        return link

    @property
    def down_for(self) -> float:
        """Seconds since the connection was lost (0 while connected)."""
        return 0.0 if self.state in (CONNECTED, CONNECTING) else self._clock() - self._since

    def connected(self) -> None:
        """The connection is made: first, or again (with everything restored) after a loss."""
        if self.state in _ENDED:
            return
        if self.state == DISCONNECTED:
            self.reconnects += 1
            _log.warning("RabbitMQ at %s: reconnected after %.1f s (%d failed attempt(s)); "
                         "topology, consumers and reply queue declared again, publishing "
                         "resumes", self.address, self.down_for, self.attempts)
        self._cancel_timer()
        self.attempts = 0
        self._enter(CONNECTED)

    def lost(self, cause: BaseException | None) -> None:
        """The connection dropped; called again for each attempt to reconnect that fails."""
        if cause is not None:
            self._last_error = f"{type(cause).__name__}: {cause}"
        if self.state == DISCONNECTED:
            self.attempts += 1
            if self.attempts & (self.attempts - 1) == 0:  # 1, 2, 4, 8...: a falling rate
                _log.warning("RabbitMQ at %s: reconnecting, attempt %d failed after %.1f s "
                             "disconnected (%s)%s", self.address, self.attempts, self.down_for,
                             self._last_error, self._limit())
            return
        if self.state != CONNECTED:
            return  # not connected yet (open() reports it), or ended
        self.generation += 1
        self._enter(DISCONNECTED)
        for callback in self.on_lost:
            callback()
        _log.warning("RabbitMQ at %s: connection lost (%s); reconnecting. Publishing waits; "
                     "deliveries in progress go back to their queues%s", self.address,
                     self._last_error or "closed", self._limit())
        if self.give_up_after is not None:
            self._timer = asyncio.get_running_loop().call_later(self.give_up_after,
                                                                self.give_up)

    def give_up(self) -> None:
        """Stop waiting for the broker: waiters get :class:`BrokerError`, and so do the
        ``on_give_up`` callbacks (the organism fails stop)."""
        if self.state in _ENDED:
            return
        failure = BrokerError(
            f"gave up on RabbitMQ at {self.address}: disconnected for {self.down_for:.1f} s, "
            f"{self.attempts} attempt(s) to reconnect failed (the last: "
            f"{self._last_error or 'none'}); organism.broker.give_up_after is "
            f"{self.give_up_after} s. Exiting so that a supervisor restarts this process")
        self._end(GAVE_UP, failure)
        _log.error("%s", failure)
        for callback in self.on_give_up:
            callback(failure)

    def close(self, why: str = "it was closed") -> None:
        """The backend closed: waiters get :class:`BrokerError` saying ``why``."""
        if self.state not in _ENDED:
            self._end(CLOSED, BrokerError(f"the connection to RabbitMQ at {self.address} is "
                                          f"closed: {why}"))

    async def wait_up(self) -> None:
        """Return once connected; raise :class:`BrokerError` once given up or closed."""
        while not self.up:
            if self.failure is not None:
                raise BrokerError(str(self.failure))
            await self._changed.wait()

    async def wait_lost(self, generation: int, within: float) -> bool:
        """Whether the connection of ``generation`` was lost, waiting up to ``within``
        seconds for a loss to be reported (an error may come before its report)."""
        try:
            async with asyncio.timeout(within):
                while self.generation == generation and self.up:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self.generation != generation or not self.up

    def _limit(self) -> str:
        return (f"; giving up after {self.give_up_after:g} s" if self.give_up_after is not None
                else "")

    def _end(self, state: str, failure: BrokerError) -> None:
        self._cancel_timer()
        self.failure = failure
        self._enter(state)

    def _enter(self, state: str) -> None:
        if state != self.state and CONNECTED in (state, self.state):
            self._since = self._clock()  # down_for counts from the loss
        self.state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
