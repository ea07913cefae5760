"""The five benchmark workloads, defined once and shared by every runner.

Each workload has a `count` that scales (spores, broadcasts, round trips, rounds, seeds)
and a `width` that does not (subscribers, agents, chain length), so a scaled-down run
keeps the shape of the full one. `deliveries` is the number of handler calls a run
must observe; runners fail if they see any other number.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Metric = Literal["rate", "latency"]


@dataclass(frozen=True, slots=True)
class Workload:
    key: str
    name: str
    count: int
    width: int
    unit: str
    metric: Metric
    description: str

    @property
    def deliveries(self) -> int:
        return self.count * self.width

    def scaled(self, factor: float) -> Workload:
        """Return this workload with `count` scaled (never below 1); `width` is kept."""
        return replace(self, count=max(1, round(self.count * factor)))


LOAD_PER_MS = 20  # W6's steady load: 20,000 spores/s, well within every system's rate

WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        Workload(
            key="W1",
            name="point-to-point",
            count=100_000,
            width=1,
            unit="spores/s",
            metric="rate",
            description="count spores sent from outside to one handler that counts them.",
        ),
        Workload(
            key="W2",
            name="broadcast",
            count=1_000,
            width=100,
            unit="deliveries/s",
            metric="rate",
            description="count broadcasts on one channel, each delivered to width subscribers.",
        ),
        Workload(
            key="W3",
            name="request/reply",
            count=10_000,
            width=1,
            unit="us p50",
            metric="latency",
            description=(
                "count sequential round trips from outside to one responder that echoes; "
                "each round trip is timed on its own (p50 and p99)."
            ),
        ),
        Workload(
            key="W4",
            name="many agents",
            count=100,
            width=1_000,
            unit="spores/s",
            metric="rate",
            description=(
                "width agents, count direct spores each, sent round-robin "
                "(one spore to every agent per round); peak RSS is reported."
            ),
        ),
        Workload(
            key="W5",
            name="reply chain",
            count=10_000,
            width=5,
            unit="hops/s",
            metric="rate",
            description=(
                "count seeds through a chain of width handlers a1 -> ... -> a5; each "
                "handler returns {'n': n + 1}, which becomes the next handler's input."
            ),
        ),
        *(Workload(
            key=f"W6{suffix}",
            name=f"latency under load, {what}",
            count=2_000,
            width=1,
            unit="us p50",
            metric="latency",
            description=(
                f"a steady load of {LOAD_PER_MS} spores a millisecond on channel 'load' to "
                f"one agent, and one probe a millisecond: {what}; each probe's end-to-end "
                "latency, from the send to its handler (or the response), p50/p99/p99.9."
            ),
        ) for suffix, what in (("s", "a spore on the load's channel"),
                               ("o", "a spore on another channel"),
                               ("r", "a request to a third agent"))),
        Workload(
            key="W7",
            name="awaiting handler",
            count=50_000,
            width=1,
            unit="spores/s",
            metric="rate",
            description=(
                "W1 as I/O handlers run: the handler awaits once (asyncio.sleep(0)) and "
                "runs under a 5 s timeout; every spore expires in 60 s."
            ),
        ),
        Workload(
            key="W8a",
            name="10 KiB records",
            count=10_000,
            width=1,
            unit="spores/s",
            metric="rate",
            description="W1 with knowledge of 10 KiB: a list of 104 records of 5 fields.",
        ),
        Workload(
            key="W8b",
            name="200 KB text",
            count=2_000,
            width=1,
            unit="spores/s",
            metric="rate",
            description="W1 with knowledge holding one 200 KB string of plain text.",
        ),
    )
}


ROWS_10K = [{"id": n, "name": f"item-{n}", "price": n * 1.25, "tags": ["a", "b"],
             "note": "a short note of text"} for n in range(104)]


def records_10k(i: int) -> dict[str, object]:
    """W8a's knowledge: about 10 KiB as JSON (the records built once: a sender's cost
    of building them is not the pipeline's)."""
    return {"i": i, "rows": ROWS_10K}


TEXT_200K = "plain words of a document, " * 7_400  # 199,800 characters


def text_200k(i: int) -> dict[str, object]:
    """W8b's knowledge: one 200 KB string."""
    return {"i": i, "text": TEXT_200K}

