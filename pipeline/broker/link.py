"""A broker connection's state across outages, and the pauses between attempts to connect.

A backend whose connection can drop (``AmqpBackend``, through aio-pika's robust
connection) tells its :class:`Link` when it starts connecting, when an attempt fails,
when the connection is made (topology declared) or lost, and when it is back (topology,
consumers and reply queue restored):

    connecting ─▶ connected ─▶ disconnected ─▶ connected ─▶ ...   (reconnects + 1)
         │                           │
         └───────── give_up_after ───┴─▶ gave up   (fail stop)
    any state ─▶ closed   (the backend closed, or dropped the connection: ``dropped``)

A connection may also be up and blocked (:meth:`Link.blocked`): under its memory or disk
alarm RabbitMQ reads nothing from a connection that published until the alarm clears.
That is said once, and so is its end; a start it blocks gives up saying so, not asking
whether the broker runs (it does), and a one-off command's (``give_up_after`` 0) at once.

One rule for the first connection and for every one after a loss: attempts are paused
by :class:`Backoff`, each failed one counted and logged at a falling rate (the 1st, 2nd,
4th, 8th...), and the link gives up after ``give_up_after`` seconds without a connection
(counted from the first attempt, or from the loss; 0: at the first failed attempt).
Each change of state is logged once. Whoever publishes waits on it
(:meth:`Link.wait_up`), so an outage delays a spore and never drops it; once the link
gave up or closed, waiting raises :class:`BrokerError`.
A backend that cannot lose its connection (``MemoryBackend``) has a link always up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sporeflow.config import BrokerError, redact_text
from sporeflow.steps.backoff import equal_jitter

__all__ = ["Backoff", "Disconnected", "Link", "Requeued", "Unroutable"]

CONNECTING, CONNECTED, DISCONNECTED = "connecting", "connected", "disconnected"
GAVE_UP, CLOSED = "gave up", "closed"
_ENDED = (GAVE_UP, CLOSED)
# What a blocked connection means, in the operator's words.
_ALARM = ("it is running, but its memory or disk alarm is on (rabbitmq-diagnostics alarms), "
          "and it reads nothing from a publishing connection until the alarm clears")
_log = logging.getLogger("sporeflow.broker.link")
_T = TypeVar("_T")


class Disconnected(BrokerError):
    """The connection was lost before the broker confirmed a publish: it may or may not
    hold the message. Publish it again once the link is up (at least once)."""


class Unroutable(BrokerError):
    """The broker returned a publish: no queue is bound to its routing key just now."""


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
        # Seconds without a connection before giving up (None: never). 0, unless told
        # otherwise (the organism's broker.give_up_after): a one-off command fails at once.
        self.give_up_after: float | None = 0.0
        self.state = CONNECTED if up else CONNECTING
        self.reconnects = 0  # connections made again after a loss
        self.attempts = 0  # attempts to connect that failed, since connecting or the loss
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
        self.blocked_by: str | None = None  # why the broker blocks the connection now
        self._blocked_at = 0.0

    @property
    def up(self) -> bool:
        return self.state == CONNECTED

    def renewed(self) -> Link:
        """A link for a new connection to the same address, with this one's settings."""
        link = Link(self.address, clock=self._clock)
        link.give_up_after = self.give_up_after
        return link

    def reopened(self) -> Link:
        """The link for the next connection: this one, on which publishers may wait already,
        unless it ended (gave up, closed): then a new one, with this one's settings."""
        return self.renewed() if self.state in _ENDED else self

    @property
    def down_for(self) -> float:
        """Seconds without a connection: since the first attempt, or since the loss (0
        while connected)."""
        return 0.0 if self.state == CONNECTED else self._clock() - self._since

    def connecting(self) -> None:
        """The first attempt to connect begins: ``give_up_after`` counts from now."""
        if self.state != CONNECTING:
            return
        self._since = self._clock()
        self.attempts = 0
        self._arm()

    def connected(self) -> None:
        """The connection is made (the topology declared): first, or again (with
        everything restored) after a loss."""
        if self.state in _ENDED:
            return
        if self.state == DISCONNECTED:
            self.reconnects += 1
            _log.warning("RabbitMQ at %s: reconnected after %.1f s (%d failed attempt(s)); "
                         "topology, consumers and reply queue declared again, publishing "
                         "resumes", self.address, self.down_for, self.attempts)
        elif self.state == CONNECTING and self.attempts:
            _log.warning("RabbitMQ at %s: connected after %.1f s (%d failed attempt(s)); "
                         "publishing resumes", self.address, self.down_for, self.attempts)
        self._cancel_timer()
        self.attempts = 0
        self._enter(CONNECTED)

    def blocked(self, reason: str | None) -> None:
        """The broker blocks the connection, saying ``reason`` ("low on memory"), or
        (None) unblocked it: its memory or disk alarm began, or cleared."""
        if (reason is None) == (self.blocked_by is None) or self.state in _ENDED:
            return
        if reason is not None and self._one_off:  # it would wait as long as the alarm lasts
            self.blocked_by = reason
            self.give_up()
            return
        if reason is not None:
            self._blocked_at = self._clock()
            _log.warning("RabbitMQ at %s is blocking the connection (%s): %s; %s waits until "
                         "then", self.address, reason, _ALARM,
                         "this process's start" if self.state == CONNECTING else "publishing")
        else:
            _log.warning("RabbitMQ at %s unblocked the connection after %.1f s: its alarm "
                         "cleared", self.address, self._clock() - self._blocked_at)
        self.blocked_by = reason

    def blocked_start(self) -> BrokerError | None:
        """Why a start given up meanwhile did not start, if the broker blocked it."""
        if self.blocked_by is None:
            return None
        return BrokerError(f"RabbitMQ at {self.address} blocked the connection while this "
                           f"process started ({self.blocked_by}): {_ALARM}; the start was "
                           f"given up")

    def lost(self, cause: BaseException | None) -> None:
        """The connection dropped; called again for each attempt to connect that fails,
        the first connection's as those after a loss."""
        if self.state not in _ENDED:  # the next connection is not blocked (yet)
            self.blocked_by = None
        if cause is not None:
            self._last_error = redact_text(f"{type(cause).__name__}: {cause}")
        if self.state in (CONNECTING, DISCONNECTED):
            self._attempt_failed()
            return
        if self.state != CONNECTED:
            return  # ended
        self.generation += 1
        self._enter(DISCONNECTED)
        for callback in self.on_lost:
            callback()
        _log.warning("RabbitMQ at %s: connection lost (%s); reconnecting. Publishing waits; "
                     "deliveries in progress go back to their queues%s", self.address,
                     self._last_error or "closed", self._limit())
        self._arm()

    def _attempt_failed(self) -> None:
        self.attempts += 1
        if self.give_up_after is not None and self.down_for >= self.give_up_after:
            self.give_up()  # 0: at the first failed attempt; else the timer's due now
            return
        first = self.state == CONNECTING
        if self.attempts & (self.attempts - 1) == 0:  # 1, 2, 4, 8...: a falling rate
            _log.warning("RabbitMQ at %s: %s, attempt %d failed after %.1f s %s (%s)%s",
                         self.address, "connecting" if first else "reconnecting",
                         self.attempts, self.down_for,
                         "without a connection yet; publishing waits" if first
                         else "disconnected", self._last_error, self._limit())

    def refused(self, cause: BaseException) -> None:
        """The broker refused this process while it first connected (its credentials, its
        virtual host): trying again cannot help, so it gives up at once. After a loss it
        tries on (a broker restarting may refuse for a moment)."""
        if self.state != CONNECTING:
            self.lost(cause)
            return
        self._last_error = redact_text(f"{type(cause).__name__}: {cause}")
        self.give_up(refused=True)

    def give_up(self, *, refused: bool = False) -> None:
        """Stop waiting for the broker: waiters get :class:`BrokerError`, and so do the
        ``on_give_up`` callbacks (the organism fails stop)."""
        if self.state in _ENDED:
            return
        last = self._last_error or "none"
        if refused:
            failure = BrokerError(
                f"RabbitMQ at {self.address} refused this process ({last}): trying again "
                f"cannot help; check the user, password and virtual host of the backend URL, "
                f"and that the user may use that virtual host")
            self._end(GAVE_UP, failure)
        elif self._one_off:  # raised to the command, and said no more
            failure = BrokerError(
                f"RabbitMQ at {self.address} blocks the connection ({self.blocked_by}): "
                f"{_ALARM}; this command does not wait for it: run it again once "
                f"`rabbitmq-diagnostics alarms` lists none" if self.blocked_by is not None else
                f"cannot reach RabbitMQ at {self.address}: {last}; is the broker running, "
                f"and are the host, port and credentials right?")
            self._end(GAVE_UP, failure)
        else:
            failure = BrokerError(
                f"gave up on RabbitMQ at {self.address}: {self._tried(last)} "
                f"organism.broker.give_up_after is {self.give_up_after or 0:g} s (raise it, "
                f"or null: never give up, to wait longer). Exiting so that a supervisor "
                f"restarts this process")
            self._end(GAVE_UP, failure)
            _log.error("%s", failure)
        for callback in self.on_give_up:
            callback(failure)

    @property
    def _one_off(self) -> bool:
        """A one-off command first connecting (``give_up_after`` 0): it waits for nothing,
        neither a broker it cannot reach nor one that blocks its connection."""
        return self.state == CONNECTING and self.give_up_after == 0

    def _tried(self, last: str) -> str:
        """What the link waited for before giving up, in words (``last``: its last error)."""
        if self.state == CONNECTING and self.blocked_by is not None:
            return (f"it blocked the connection while this process started ({self.blocked_by}), "
                    f"{self.down_for:.1f} s since starting: {_ALARM};")
        if self.state == CONNECTING:
            return (f"could not connect for {self.down_for:.1f} s since starting, "
                    f"{self.attempts} attempt(s) failed (the last: {last}); is the broker "
                    f"running, and are the host, port and credentials right?")
        return (f"disconnected for {self.down_for:.1f} s, {self.attempts} attempt(s) to "
                f"reconnect failed (the last: {last});")

    def dropped(self, why: str) -> None:
        """The backend dropped the connection without waiting for the broker (a stop out
        of time): as at a loss, what came on it is the broker's again and what waits on it
        ends (``on_lost``); then the link is closed, saying ``why``."""
        self.generation += 1
        for callback in self.on_lost:
            callback()
        self.close(why)

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

    async def unless_ended(self, attempt: Awaitable[_T]) -> _T:
        """Await ``attempt`` (connecting), unless the link gives up or closes first: then
        cancel it and raise :class:`BrokerError` saying why."""
        trying = asyncio.ensure_future(attempt)
        ending = asyncio.ensure_future(self._ended())
        try:
            await asyncio.wait((trying, ending), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when cancelled: neither outlives this call
            ending.cancel()
            if not trying.done():
                trying.cancel()
                await asyncio.gather(trying, return_exceptions=True)
        if self.failure is not None:
            raise BrokerError(str(self.failure))
        return trying.result()

    async def _ended(self) -> None:
        while self.failure is None:
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

    def _arm(self) -> None:
        """Give up ``give_up_after`` from now (at 0: at the first failed attempt)."""
        self._cancel_timer()
        if self.give_up_after:
            self._timer = asyncio.get_running_loop().call_later(self.give_up_after,
                                                                self.give_up)

    def _end(self, state: str, failure: BrokerError) -> None:
        self._cancel_timer()
        self.failure = failure
        self._enter(state)

    def _enter(self, state: str) -> None:
        if self.state == CONNECTED and state != CONNECTED:
            self._since = self._clock()  # down_for counts from the loss
        self.state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
