"""The targets sporeflow must reach, as data: a bound on its median, absolute or relative."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Target:
    workload: str
    label: str
    field: Literal["value", "peak_rss_mib"]
    bound: Literal["min", "max"]  # sporeflow's median must be >= or <= the threshold
    factor: float
    peer: str | None = None  # threshold = factor * peer's median; None: factor is absolute

    def threshold(self, peer_median: float | None) -> float | None:
        if self.peer is None:
            return self.factor
        return None if peer_median is None else self.factor * peer_median

    def verdict(self, subject: float | None, peer_median: float | None) -> str:
        limit = self.threshold(peer_median)
        if subject is None or limit is None:
            return "pending"
        met = subject >= limit if self.bound == "min" else subject <= limit
        return "PASS" if met else "FAIL"


TARGETS: tuple[Target, ...] = (
    Target("W1", ">= 20x autogen-core", "value", "min", 20, "autogen-core"),
    Target("W1", ">= 20% of asyncio", "value", "min", 0.2, "asyncio"),
    Target("W2", ">= 1M deliveries/s", "value", "min", 1_000_000),
    Target("W3", "p50 <= 1/3 of autogen-core", "value", "max", 1 / 3, "autogen-core"),
    Target("W4", ">= 20x autogen-core", "value", "min", 20, "autogen-core"),
    Target("W4", ">= 20% of asyncio", "value", "min", 0.2, "asyncio"),
    Target("W4", "peak RSS <= autogen-core", "peak_rss_mib", "max", 1, "autogen-core"),
    Target("W5", ">= 10x autogen-core", "value", "min", 10, "autogen-core"),
)
