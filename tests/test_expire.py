from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sporeflow.steps import Spore, expire_filter

from .conftest import aiter_of, collect

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_expired_spores_are_rejected_and_the_rest_pass() -> None:
    alive = Spore(knowledge={}, expires_at=NOW + timedelta(seconds=1))
    forever = Spore(knowledge={})
    expired = Spore(knowledge={}, expires_at=NOW)
    seen: list[tuple[Spore, str]] = []
    out = await collect(expire_filter.raw(
        aiter_of([alive, expired, forever], [expired]),
        on_reject=lambda spore, reason, error: seen.append((spore, reason)),
        now=lambda: NOW))
    assert out == [[alive, forever]]  # an all-expired batch yields nothing
    assert seen == [(expired, "expired"), (expired, "expired")]


async def test_clocks_are_read_once_per_batch_and_only_for_spores_that_expire() -> None:
    reads: list[str] = []

    def now() -> datetime:
        reads.append("wall")
        return NOW

    def clock() -> float:
        reads.append("monotonic")
        return 0.0

    later = NOW + timedelta(seconds=1)
    await collect(expire_filter.raw(
        aiter_of([Spore(knowledge={})] * 50, [Spore(knowledge={}, expires_at=later)] * 50),
        on_reject=lambda *a: None, now=now, clock=clock))
    assert reads == ["wall", "monotonic"]  # none for the batch where nothing expires
