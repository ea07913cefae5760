"""expire-filter: drop spores whose ``expires_at`` has passed."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from aiostream import pipable_operator, streamcontext

from sporeflow.config.errors import DeliveryError, SporeError
from sporeflow.config.reasons import Reason
from sporeflow.steps.types import Batch, Reject

__all__ = ["expire_filter", "expiry_after", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def expiry_after(now: datetime, expires_in: object) -> datetime | None:
    """``expires_at`` for a spore that expires ``expires_in`` seconds after ``now``
    (None: never); refuse what is not a number of seconds."""
    if expires_in is None:
        return None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise SporeError(f"expires_in must be a number of seconds, got {expires_in!r:.40}; "
                         f"write expires_in=30 for 30 seconds")
    return now + timedelta(seconds=expires_in)


@pipable_operator
async def expire_filter(
    source: AsyncIterable[Batch],
    *,
    on_reject: Reject,
    now: Callable[[], datetime] = utc_now,
) -> AsyncIterator[Batch]:
    """Pass on the spores still alive; reject the expired ones with reason ``expired``."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            moment = now()  # one clock read per batch, not per spore
            alive = []
            for spore in batch:
                expires_at = spore.expires_at
                if expires_at is not None and expires_at <= moment:
                    on_reject(spore, Reason.EXPIRED, DeliveryError(
                        f"spore {spore.id} expired at {expires_at.isoformat()}",
                        reason=Reason.EXPIRED))
                else:
                    alive.append(spore)
            if alive:
                yield alive
