"""expire-filter: drop spores whose ``expires_at`` has passed.

``expires_at`` is wall-clock UTC: the spore's serialized form, the same in every
process. Inside one process expiry runs on the event loop's monotonic clock instead,
so that a step of the wall clock (NTP, a suspended laptop, an operator) neither
expires waiting spores early nor keeps them alive: where a spore passes this stage,
its ``expires_at`` is turned, once, into a deadline on ``loop.time()``, kept with the
spore and never serialized (a copy, a decoded or replayed spore is a new spore, and
gets its own where it enters a chain). Every later check in this process, the lane's
just before a handler runs, is :func:`expired`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError, SporeError
from sporeflow.config.reasons import Reason
from sporeflow.config.units import parse_duration
from sporeflow.config.words import shown
from sporeflow.steps.spore import Spore, set_deadline
from sporeflow.steps.types import Batch, Reject

__all__ = ["ExpiresIn", "expire_filter", "expired", "expiry_after", "timeout_seconds",
           "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


# What a sender may give as a spore's lifetime: seconds, a timedelta, or a duration as
# organism.yaml writes them.
ExpiresIn: TypeAlias = float | timedelta | str  # seconds, a timedelta, or "30s"
_YEAR = 365 * 24 * 3600.0  # a longer lifetime is a mistake (and overflows a datetime)


def expiry_after(now: datetime, expires_in: object) -> datetime | None:
    """``expires_at`` for a spore that expires ``expires_in`` (seconds or a timedelta)
    after ``now`` (None: never); refuse anything else."""
    if expires_in is None:
        return None
    if isinstance(expires_in, timedelta):
        return now + expires_in
    if isinstance(expires_in, str):  # "30s", as organism.yaml writes durations
        expires_in = _seconds(expires_in, "expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise SporeError(f"expires_in must be a number of seconds or a timedelta, got "
                         f"{expires_in!r:.40}; write expires_in=30 for 30 seconds")
    if not (math.isfinite(expires_in) and expires_in <= _YEAR):  # a timedelta would overflow
        raise SporeError(f"expires_in {expires_in!r:.40} is not a number of seconds up to a "
                         f"year; write expires_in=30 for 30 seconds")
    return now + timedelta(seconds=expires_in)


def _seconds(text: str | float, name: str) -> float:
    """``text``, a duration as organism.yaml writes them (``30s``, ``2m``, a number)."""
    try:
        return parse_duration(text)  # at most a year, as a number of seconds is
    except ValueError as exc:
        raise SporeError(f"{name}: {exc}") from None


def timeout_seconds(timeout: object) -> float:
    """A request's ``timeout`` in seconds: a number above 0, or a timedelta; refuse
    anything else at the call, before anything is sent."""
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, str):  # "5s", as organism.yaml writes durations
        timeout = _seconds(timeout, "timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout < math.inf):
        raise SporeError(f"timeout must be a number of seconds above 0 or a timedelta, got "
                         f"{shown(timeout, 40)}; write timeout=5 for 5 seconds")
    # At most a year, however written: the request expires with it (else its expiry
    # refuses it, naming an expires_in its asker never gave).
    return _seconds(timeout, "timeout")


def expired(spore: Spore, now: float, *, wall: Callable[[], datetime] = utc_now) -> bool:
    """Whether ``spore`` has passed its deadline at ``now``, a reading of the running
    loop's ``time()`` (a spore without ``expires_at`` never does).

    The deadline is the one the expire stage gave it; a spore that never passed that
    stage (a lane used on its own) gets it here, at its first check, from ``wall``.
    """
    try:
        return spore._deadline <= now
    except AttributeError:  # no deadline yet
        expires_at = spore.expires_at
        if expires_at is None:
            return False
        deadline = now + (expires_at - wall()).total_seconds()
        set_deadline(spore, deadline)
        return deadline <= now


@pipable_operator
async def expire_filter(
    source: AsyncIterable[Batch],
    *,
    on_reject: Reject,
    now: Callable[[], datetime] = utc_now,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Batch]:
    """Pass on the spores still alive; reject the expired ones with reason ``expired``.

    Each spore with an ``expires_at`` gets its monotonic deadline here: ``clock()``
    (the running loop's ``time``, by default) plus what is left of it by ``now()``, the
    wall clock. Both are read at most once per batch, and only for a batch that holds
    such a spore.
    """
    async with streamcontext(source) as batches:
        if clock is None:
            clock = asyncio.get_running_loop().time
        async for batch in batches:
            wall: datetime | None = None
            mono = 0.0
            alive = []
            for spore in batch:
                expires_at = spore.expires_at
                if expires_at is None:
                    alive.append(spore)
                    continue
                if wall is None:
                    wall, mono = now(), clock()
                if expires_at <= wall:
                    on_reject(spore, Reason.EXPIRED, DeliveryError(
                        f"spore {spore.id} expired at {expires_at.isoformat()}",
                        reason=Reason.EXPIRED))
                else:
                    set_deadline(spore, mono + (expires_at - wall).total_seconds())
                    alive.append(spore)
            if alive:
                yield alive
