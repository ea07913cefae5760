"""Latency histograms: fixed log-scale buckets, cheap to record, good for p50/p99."""

from __future__ import annotations

__all__ = ["LatencyHistogram"]

# 1 us to ~100 s, four buckets per doubling: a quantile is off by at most ~19%.
BOUNDS: tuple[float, ...] = tuple(1e-6 * 2 ** (i / 4) for i in range(108))


class LatencyHistogram:
    """Counts per bucket and the sum of seconds observed.

    ``observe`` is the whole of recording; the organism's hot path does the same two
    updates inline (see ``pipeline.agents.builder``).
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q``, in seconds."""
        total = self.count
        if not total:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return BOUNDS[min(index, len(BOUNDS) - 1)]
        return BOUNDS[-1]

    def summary(self) -> dict[str, float | int | None]:
        count = self.count
        return {
            "count": count,
            "mean_ms": (self.total / count * 1000) if count else None,
            "p50_ms": _ms(self.quantile(0.5)),
            "p99_ms": _ms(self.quantile(0.99)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 4)
